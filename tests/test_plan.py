import json

from kdray.spec.load import parse_job
from kdray.spec.plan import Plan, make_plan
from tests.conftest import tiny_job_dict


def thesis_like(tmp_path, seeds=(0,)):
    raw = tiny_job_dict(tmp_path)
    raw["seeds"] = list(seeds)
    raw["studies"] = {
        "normal": {
            "teachers": ["seresnet50", "seresnet101"],
            "students": ["vgg11", "resnet18", "resnet34", "resnet50"],
        },
        "reverse": {
            "teachers": ["resnet18", "resnet34", "resnet50", "vgg11"],
            "students": ["seresnet50", "seresnet101"],
        },
        "defective": {
            "teachers": ["seresnet50", "seresnet101"],
            "students": ["resnet18", "resnet34", "resnet50"],
            "teacher_val_band": [0.5, 0.65],
        },
    }
    return parse_job(raw)


def test_each_teacher_is_trained_once_per_seed_however_many_students(tmp_path):
    plan = make_plan(thesis_like(tmp_path, seeds=(0, 1)))
    teachers = plan.stage("teacher")
    keys = [(r.model, r.band, r.seed) for r in teachers]
    assert len(keys) == len(set(keys))
    # 6 converged models (2 SE-ResNets + 4 reverse teachers) + 2 defective, per seed
    assert len(teachers) == 2 * 8
    students = plan.stage("student")
    kd = [r for r in students if r.method != "none"]
    assert len(kd) == 2 * (2 * 4 + 4 * 2 + 2 * 3)
    for run in kd:
        assert run.method == "kd" and len(run.teacher_runs) == 1
        teacher = plan.runs[run.teacher_runs[0]]
        assert teacher.stage == "teacher" and teacher.seed == run.seed
        assert teacher.soft_labels  # its students read the cache (the default)


def test_baselines_that_are_teacher_runs_are_not_trained_again(tmp_path):
    plan = make_plan(thesis_like(tmp_path))
    # every student of the thesis grid is also a converged teacher of another study
    assert [r for r in plan.stage("student") if r.method == "none"] == []
    resnet18 = [r for r in plan.stage("teacher") if r.model == "resnet18"]
    assert len(resnet18) == 1
    assert set(resnet18[0].roles) == {"teacher:reverse", "baseline"}


def test_defective_teacher_is_its_own_run(tmp_path):
    plan = make_plan(thesis_like(tmp_path))
    se50 = [r for r in plan.stage("teacher") if r.model == "seresnet50"]
    assert sorted(str(r.band) for r in se50) == ["(0.5, 0.65)", "None"]
    assert len({r.run_id for r in se50}) == 2


def test_run_ids_are_stable_and_follow_what_determines_a_run(tmp_path):
    a = make_plan(thesis_like(tmp_path))
    b = make_plan(thesis_like(tmp_path))
    assert list(a.runs) == list(b.runs)
    raw = tiny_job_dict(tmp_path)
    base = make_plan(parse_job(raw))
    other_lr = make_plan(parse_job(tiny_job_dict(tmp_path), ["train.lr=0.01"]))
    other_alpha = make_plan(parse_job(tiny_job_dict(tmp_path), ["distill.alpha=0.5"]))
    teacher_ids = {r.run_id for r in base.stage("teacher")}
    assert teacher_ids.isdisjoint(r.run_id for r in other_lr.stage("teacher"))
    # the distillation settings do not change a teacher, only its KD students
    assert teacher_ids == {r.run_id for r in other_alpha.stage("teacher")}
    kd = lambda p: {r.run_id for r in p.runs.values() if "kd:normal" in r.roles}  # noqa: E731
    assert kd(base).isdisjoint(kd(other_alpha))


def test_baseline_off_and_plan_round_trip(tmp_path):
    raw = tiny_job_dict(tmp_path)
    raw["baseline"] = False
    plan = make_plan(parse_job(raw))
    assert [r.roles for r in plan.stage("student")] == [["kd:normal"]]
    assert Plan.from_json(plan.to_json()).runs == plan.runs


def methods_job(tmp_path, **studies):
    raw = tiny_job_dict(tmp_path)
    raw["seeds"] = [0, 1]
    raw["studies"] = studies
    return parse_job(raw)


def test_the_thesis_job_file_plans_the_same_trainings_as_before_methods(tmp_path):
    """The ids of teachers and baselines are unchanged, so are the runs' count and pairing."""
    from pathlib import Path

    from kdray.spec.load import load_job

    repo = Path(__file__).resolve().parents[1]
    thesis = load_job(repo / "jobs/mura_thesis.yaml", ["data.root=/data/mura"])
    sources = thesis.weights_sources()  # ImageNet weights for every model, as in the thesis
    assert set(sources) == thesis.models() and all(s.tag for s in sources.values())
    plan = make_plan(thesis, {model: f"{i:064x}" for i, model in enumerate(sources)})
    assert len(plan.stage("teacher")) == 8 and len(plan.stage("student")) == 22
    # the ids the quickstart's teachers had before methods existed (with its settings of then:
    # 32 px, 800 images, the band [0.50, 0.65] checked every 2 steps): a resumed grid keeps them
    then = ["data.image_size=32", "data.train_size=800"]
    then += ["studies.defective.teacher_val_band=[0.50, 0.65]"]
    then += ["studies.defective.eval_every_steps=2"]
    quick = make_plan(load_job(repo / "jobs/quickstart.yaml", then))
    assert sorted(r.run_id for r in quick.stage("teacher")) == [
        "resnet10t-none-s0-97e1b869",
        "seresnet18-none-band0.50-0.65-s0-8397ae80",
        "seresnet18-none-s0-1d34c482",
    ]
    assert {r.method for r in quick.stage("student")} == {"kd"}
    params = {json.dumps(r.method_params, sort_keys=True) for r in quick.stage("student")}
    assert params == {
        json.dumps(
            {
                "name": "kd",
                "temperature": 4.0,
                "alpha": 0.9,
                "kl_reduction": "batchmean",
                "class_weights": "none",
                "class_beta": 0.999,
            },  # the last two: not in the ids
            sort_keys=True,
        )
    }


def test_adding_a_study_renames_no_other_run(tmp_path):
    one = methods_job(tmp_path, normal={"teachers": ["resnet10t"], "students": ["test_resnet"]})
    two = methods_job(
        tmp_path,
        normal={"teachers": ["resnet10t"], "students": ["test_resnet"]},
        dkd={
            "teachers": ["resnet10t"],
            "students": ["test_resnet"],
            "method": {"name": "dkd", "beta": 2.0},
        },
    )
    a, b = make_plan(one), make_plan(two)
    assert set(a.runs) < set(b.runs)
    new = [b.runs[r] for r in set(b.runs) - set(a.runs)]
    assert {r.method for r in new} == {"dkd"} and len(new) == 2  # one per seed
    assert all(r.method_params["beta"] == 2.0 for r in new)
    # the dkd students reuse the teachers the normal study trains
    assert {t for r in new for t in r.teacher_runs} <= set(a.runs)


def test_the_same_training_asked_by_two_studies_runs_once(tmp_path):
    job = methods_job(
        tmp_path,
        normal={"teachers": ["resnet10t"], "students": ["test_resnet"]},
        again={"teachers": ["resnet10t"], "students": ["test_resnet"], "method": {"name": "kd"}},
    )
    kd = [r for r in make_plan(job).runs.values() if r.method == "kd"]
    assert len(kd) == 2 and all(set(r.roles) == {"kd:normal", "kd:again"} for r in kd)


def test_method_parameters_change_only_their_own_runs(tmp_path):
    base = dict(teachers=["resnet10t"], students=["test_resnet"])
    a = make_plan(methods_job(tmp_path, d={**base, "method": {"name": "dkd", "beta": 8}}))
    b = make_plan(methods_job(tmp_path, d={**base, "method": {"name": "dkd", "beta": 2}}))
    plain = lambda p: {r.run_id for r in p.runs.values() if r.method == "none"}  # noqa: E731
    dkd = lambda p: {r.run_id for r in p.runs.values() if r.method == "dkd"}  # noqa: E731
    assert plain(a) == plain(b) and len(dkd(a)) == 2
    assert dkd(a).isdisjoint(dkd(b))


def test_global_distill_block_is_the_default_of_hinton_parameters_only(tmp_path):
    raw = tiny_job_dict(tmp_path)
    raw["distill"] = {"temperature": 2.0, "alpha": 0.5}
    raw["studies"] = {
        "legacy": {"teachers": ["resnet10t"], "students": ["test_resnet"]},
        "own_t": {
            "teachers": ["resnet10t"],
            "students": ["test_resnet"],
            "method": {"name": "kd", "temperature": 8.0},
        },
        "dkd": {"teachers": ["resnet10t"], "students": ["test_resnet"], "method": {"name": "dkd"}},
    }
    job = parse_job(raw)
    assert job.method_params("legacy").temperature == 2.0
    assert job.method_params("legacy").alpha == 0.5
    assert job.method_params("own_t").temperature == 8.0 and job.method_params("own_t").alpha == 0.5
    assert job.method_params("dkd").temperature == 4.0 and job.method_params("dkd").alpha == 1.0


def test_ensembles_self_and_teacher_free_studies(tmp_path):
    job = methods_job(
        tmp_path,
        ens={"teachers": [["resnet10t", "test_resnet"]], "students": ["test_resnet"]},
        self_kd={"teachers": ["self"], "students": ["resnet10t"]},
        tf={"students": ["resnet10t"], "method": {"name": "tfkd_virtual"}},
        hint={
            "teachers": ["resnet10t"],
            "students": ["test_resnet"],
            "method": {"name": "fitnets"},
        },
    )
    plan = make_plan(job)
    by_role = lambda role: [r for r in plan.runs.values() if role in r.roles]  # noqa: E731
    for run in by_role("kd:ens"):
        assert run.teacher_models == ["resnet10t", "test_resnet"]
        teachers = [plan.runs[t] for t in run.teacher_runs]
        assert all(t.stage == "teacher" and t.seed == run.seed and t.soft_labels for t in teachers)
    for run in by_role("kd:self_kd"):
        teacher = plan.runs[run.teacher_runs[0]]
        # the student's own no-KD baseline run, trained once, serving both roles
        assert teacher.model == run.model == "resnet10t" and teacher.method == "none"
        assert {"teacher:self_kd", "baseline"} <= set(teacher.roles)
    for run in by_role("kd:tf"):
        assert run.teacher_runs == [] and run.teacher_outputs is None
    for run in by_role("kd:hint"):
        assert run.teacher_outputs == "online"
    # every teacher model trained once per seed, however many studies use it
    keys = [(r.model, r.band, r.seed) for r in plan.runs.values() if r.method == "none"]
    assert len(keys) == len(set(keys)) == 2 * 2


def test_an_experiment_folder_from_before_methods_opens_and_keeps_its_teacher_ids(tmp_path):
    from kdray.store.experiment import Experiment

    job = parse_job(tiny_job_dict(tmp_path))
    exp = Experiment.create(job)
    old_job = json.loads((exp.root / "job.json").read_text())
    for study in old_job["studies"].values():  # what kdray wrote before studies had methods
        del study["method"]
    (exp.root / "job.json").write_text(json.dumps(old_job))
    teacher = next(r for r in exp.plan().runs.values() if r.method == "none")
    old_run = {"run_id": teacher.run_id, "stage": "teacher", "model": teacher.model,
               "strategy": "none", "seed": 0, "teacher_run": None, "teacher_model": None,
               "band": None, "eval_every_steps": None, "roles": ["teacher:normal"]}  # fmt: skip
    (exp.root / "plan.json").write_text(json.dumps({"runs": [old_run]}))
    assert Experiment.create(job).root == exp.root  # the same job: no "different job" refusal
    plan = Experiment.open(exp.root).plan()
    assert teacher.run_id in plan.runs and {r.method for r in plan.runs.values()} == {"none", "kd"}
