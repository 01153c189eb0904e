from kdray.job import parse_job
from kdray.plan import Plan, make_plan
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
    kd = [r for r in students if r.strategy != "none"]
    assert len(kd) == 2 * (2 * 4 + 4 * 2 + 2 * 3)
    for run in kd:
        teacher = plan.runs[run.teacher_run]
        assert teacher.stage == "teacher" and teacher.seed == run.seed


def test_baselines_that_are_teacher_runs_are_not_trained_again(tmp_path):
    plan = make_plan(thesis_like(tmp_path))
    # every student of the thesis grid is also a converged teacher of another study
    assert [r for r in plan.stage("student") if r.strategy == "none"] == []
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
    kd = lambda p: {r.run_id for r in p.runs.values() if r.strategy == "normal"}  # noqa: E731
    assert kd(base).isdisjoint(kd(other_alpha))


def test_baseline_off_and_plan_round_trip(tmp_path):
    raw = tiny_job_dict(tmp_path)
    raw["baseline"] = False
    plan = make_plan(parse_job(raw))
    assert [r.strategy for r in plan.stage("student")] == ["normal"]
    assert Plan.from_json(plan.to_json()).runs == plan.runs
