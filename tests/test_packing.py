"""Which runs share a trial (kdray.grid.packing), without Ray."""

from __future__ import annotations

from kdray.data.cache import DataInfo
from kdray.grid.packing import pack_runs, runs_per_fit, runs_per_trial
from kdray.spec.job import Job
from kdray.spec.plan import make_plan
from tests.conftest import tiny_job_dict

STUDIES = {
    "normal": {"teachers": ["resnet10t"], "students": ["test_resnet"],
               "method": {"name": "kd", "temperature": [1, 2, 4]}},
}  # fmt: skip


def plan_runs(tmp_path, seeds=(0, 1, 2), **resources):
    raw = tiny_job_dict(tmp_path, studies=STUDIES, seeds=list(seeds))
    raw["resources"] |= resources
    job = Job.model_validate(raw)
    return job, list(make_plan(job).runs.values())


def test_a_pack_holds_one_stage_runs_without_teachers_first_students_by_teacher(tmp_path):
    _, runs = plan_runs(tmp_path)  # per seed: a teacher, a baseline, 3 KD students
    packs = pack_runs(runs, per_trial=8, slots=2)
    assert [len(p.runs) for p in packs] == [2, 1, 6, 6]  # 3 teachers; 3 baselines, 9 KD
    for pack in packs:
        assert len({r.stage for r in pack.runs}) == 1
    students = [r for p in packs[2:] for r in p.runs]
    assert [bool(r.teacher_runs) for r in students] == [False] * 3 + [True] * 9
    seeds = [r.seed for r in students if r.teacher_runs]
    assert seeds == sorted(seeds)  # a teacher's students side by side
    assert sorted(r.run_id for p in packs for r in p.runs) == sorted(r.run_id for r in runs)


def test_packs_fill_every_slot_and_stay_within_one_run_of_each_other(tmp_path):
    _, runs = plan_runs(tmp_path)
    baselines = [r for r in runs if r.stage == "student" and not r.teacher_runs]  # 3 seeds
    kd = [r for r in runs if r.teacher_runs and r.seed == 0]  # 3 temperatures, one teacher
    assert [len(p.runs) for p in pack_runs(baselines, per_trial=8, slots=2)] == [2, 1]
    assert [len(p.runs) for p in pack_runs(kd, per_trial=8, slots=4)] == [1, 1, 1]
    assert [len(p.runs) for p in pack_runs(kd, per_trial=1, slots=1)] == [1, 1, 1]
    assert [len(p.runs) for p in pack_runs(kd * 3, per_trial=2, slots=2)] == [2, 2, 2, 2, 1]


def info(train: int, size: int) -> DataInfo:
    return DataInfo("", "", ["a", "b"], 1, size, {"train": train}, [0.5], [0.2])


def test_auto_packs_short_runs_and_leaves_long_ones_alone(tmp_path):
    job, _ = plan_runs(tmp_path)
    assert runs_per_trial(job, info(800, 32)) > 1  # the quickstart's scale: seconds a run
    assert runs_per_trial(job.model_copy(update={"train": job.train.model_copy(
        update={"epochs": 20})}), info(15_000, 224)) == 1  # the thesis's scale: hours  # fmt: skip
    fixed, _ = plan_runs(tmp_path, runs_per_trial=3)
    assert runs_per_trial(fixed, info(15_000, 224)) == 3


def test_auto_lets_a_packing_fit_take_any_number_of_runs_and_a_number_caps_it(tmp_path):
    """A slot's fit under `auto` goes on taking ready runs (a new fit would only add its
    start-up); `runs_per_trial: 3` is at most 3 runs a fit; long runs under `auto`: one each."""
    job, _ = plan_runs(tmp_path)
    assert runs_per_fit(job, info(800, 32)) is None
    assert runs_per_fit(job, info(15_000, 224)) == 1
    fixed, _ = plan_runs(tmp_path, runs_per_trial=3)
    assert runs_per_fit(fixed, info(800, 32)) == 3
