"""A small grid end to end on a local Ray: Tune trials driving Ray Train TorchTrainers."""

import json

import pyarrow.parquet as pq
import pytest
import ray
import yaml
from typer.testing import CliRunner

from kdray.cli import app
from kdray.grid import local_ray
from kdray.grid.local_ray import shutdown_ray
from kdray.spec.load import parse_job
from kdray.spec.plan import make_plan
from kdray.store.experiment import Experiment
from tests.conftest import tiny_job_dict

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("grid")
    raw = tiny_job_dict(tmp_path)
    raw["train"]["epochs"] = 2
    raw["studies"] = {
        "normal": {"teachers": ["resnet10t"], "students": ["test_resnet"]},
        "reverse": {"teachers": ["test_resnet"], "students": ["resnet10t"]},
        "defective": {
            "teachers": ["resnet10t"],
            "students": ["test_resnet"],
            "teacher_val_band": [0.34, 0.9],
            "eval_every_steps": 1,
        },
    }
    job_file = tmp_path / "tiny.yaml"
    job_file.write_text(yaml.safe_dump(raw))
    actors = []  # the grid's Ray actors, read before `kdray run` shuts Ray down

    def read_actors_then_shut_down():
        actors.extend(ray._private.state.actors().values())
        shutdown_ray()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(local_ray, "shutdown_ray", read_actors_then_shut_down)
        result = CliRunner().invoke(app, ["run", str(job_file)])
    yield tmp_path, job_file, result, actors
    ray.shutdown()


def test_run_finishes_every_trial_and_prints_the_tables(grid):
    _, _, result, _ = grid
    assert result.exit_code == 0, result.output
    assert "normal (kd): student x teacher accuracy" in result.output
    assert "kdray export" in result.output


def test_a_trial_starts_no_process_it_does_not_use(grid):
    """Ray Train's Ray Data manager and preemption watcher: kdray turns both off."""
    started = {a["ActorClassName"].rsplit(".", 1)[-1] for a in grid[3]}
    assert {"TrainController", "RayTrainWorker"} <= started
    assert not started & {"DatasetManager", "PreemptionWatcher"}


def test_trials_table_holds_every_run_once(grid):
    tmp_path, _, _, _ = grid
    exp = Experiment.open(tmp_path / "runs" / "tiny")
    trials = pq.read_table(exp.results_dir / "trials.parquet").to_pylist()
    plan = exp.plan()
    assert sorted(r["trial_id"] for r in trials) == sorted(plan.runs)
    assert all(r["status"] == "finished" for r in trials), [r["error"] for r in trials]
    # 3 teacher runs (resnet10t, test_resnet, defective resnet10t); every one trained once
    teachers = [r for r in trials if r["stage"] == "teacher"]
    assert len(teachers) == 3 and all(r["attempts"] == 1 for r in teachers)
    # baselines are the converged teacher runs: no separate no-KD student runs
    assert not [r for r in trials if r["stage"] == "student" and r["method"] == "none"]
    defective = next(r for r in teachers if r["band_low"] is not None)
    assert defective["band_low"] <= defective["val_acc"] <= defective["band_high"]
    for row in trials:
        if row["stage"] == "student":
            assert row["method"] == "kd" and row["teacher_outputs"] == "cached"
            (teacher_id,) = row["teacher_trial_ids"]
            teacher = next(t for t in teachers if t["trial_id"] == teacher_id)
            assert row["teacher_val_acc"] == teacher["val_acc"]
        assert row["checkpoint"] and row["wall_s"] > 0
    epochs = pq.read_table(exp.results_dir / "epochs.parquet")
    assert set(epochs.column("trial_id").to_pylist()) == set(plan.runs)
    assert {"loss_ce", "loss_kd"} <= set(epochs.column_names)  # one column per loss term


def test_every_finished_run_has_its_cost(grid):
    """Measured in the worker, once per model and data shape (`costs/`), for every run."""
    tmp_path, _, _, _ = grid
    exp = Experiment.open(tmp_path / "runs" / "tiny")
    trials = pq.read_table(exp.results_dir / "trials.parquet").to_pylist()
    for row in trials:
        assert row["status"] == "finished"
        assert row["macs"] > 0 and row["weights_mb"] > 0, row["trial_id"]
        assert row["latency_ms_p90"] >= row["latency_ms_p50"] > 0 and row["throughput"] > 0
        assert row["cost_device"] == "cpu"
    models = {r["model"] for r in trials}
    assert len(list((exp.root / "costs").glob("*.json"))) == len(models)


def test_running_again_redoes_no_finished_work(grid):
    tmp_path, job_file, _, _ = grid
    exp = Experiment.open(tmp_path / "runs" / "tiny")
    before = {r: json.loads((exp.run_dir(r) / "summary.json").read_text()) for r in exp.plan().runs}
    again = CliRunner().invoke(app, ["run", str(job_file)])
    assert again.exit_code == 0, again.output
    after = {r: json.loads((exp.run_dir(r) / "summary.json").read_text()) for r in exp.plan().runs}
    assert after == before


def test_export_of_the_grid(grid):
    tmp_path, _, _, _ = grid
    out = tmp_path / "results"
    result = CliRunner().invoke(app, ["export", str(tmp_path / "runs" / "tiny"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "| test_resnet | test |" in (out / "normal.md").read_text()
    assert (out / "trials.csv").read_text().count("\n") == 1 + 6


def test_each_student_starts_after_its_own_teacher_finished(grid):
    tmp_path, _, _, _ = grid
    exp = Experiment.open(tmp_path / "runs" / "tiny")
    for run in exp.plan().runs.values():
        for teacher_run in run.teacher_runs:
            teacher_done = (exp.run_dir(teacher_run) / "model.pt").stat().st_mtime
            student_start = (exp.run_dir(run.run_id) / "attempts.json").stat().st_mtime
            assert student_start >= teacher_done, run.run_id


def test_no_run_finishes_exits_1_and_a_failed_teacher_s_students_are_not_started(
    tmp_path, monkeypatch
):
    """A defective teacher that cannot reach its band fails; its KD student is reported as not
    started (no trial, no retries) and the grid ends instead of waiting for it. The student's
    no-KD baseline's worker dies in epoch 1 with no retries left: failed too. No run finished:
    `kdray run` exits 1 listing each failed run, and the experiment still exports."""
    raw = tiny_job_dict(tmp_path, resources={"max_concurrent_trials": 2, "runs_per_trial": 1})
    raw["train"]["epochs"] = 1
    raw["faults"] = {"trial_retries": 0}
    raw["studies"] = {
        "defective": {
            "teachers": ["resnet10t"],
            "students": ["test_resnet"],
            "teacher_val_band": [0.99, 1.0],
            "eval_every_steps": 100,
        },
    }
    runs = make_plan(parse_job(raw)).runs.values()
    teacher = next(r for r in runs if r.band)
    student = next(r for r in runs if r.teacher_runs)
    baseline = next(r for r in runs if not r.band and not r.teacher_runs)
    crash_dir = tmp_path / "crashes"
    crash_dir.mkdir()
    (crash_dir / teacher.run_id).write_text("1")  # a marker: this run is not to crash
    monkeypatch.setenv("KDRAY_TEST_CRASH_EPOCH", "1")  # the baseline's worker dies at step 2
    monkeypatch.setenv("KDRAY_TEST_CRASH_DIR", str(crash_dir))
    job_file = tmp_path / "tiny.yaml"
    job_file.write_text(yaml.safe_dump(raw))
    try:
        result = CliRunner().invoke(app, ["run", str(job_file)])
    finally:  # the local Ray's workers carry the crash variables: no later test may reuse it
        ray.shutdown()
    assert result.exit_code == 1, result.output
    assert "3 run(s) failed" in result.output, result.output
    exp = Experiment.open(tmp_path / "runs" / "tiny")
    teacher_summary = exp.summary(teacher.run_id)
    assert teacher_summary["status"] == "failed" and teacher_summary["error"]
    assert (crash_dir / baseline.run_id).is_file()  # its worker died
    baseline_failure = json.loads((exp.run_dir(baseline.run_id) / "failure.json").read_text())
    assert baseline_failure["error"], baseline_failure
    assert not (exp.run_dir(student.run_id) / "attempts.json").exists()
    failure = json.loads((exp.run_dir(student.run_id) / "failure.json").read_text())
    assert failure["error"] == (
        f"not started: its teacher run {teacher.run_id} failed ({teacher_summary['error']})"
    )
    assert f"not started: its teacher run {teacher.run_id}" in result.output
    exported = CliRunner().invoke(app, ["export", str(exp.root), "--out", str(tmp_path / "out")])
    assert exported.exit_code == 0, exported.output
    rows = pq.read_table(tmp_path / "out" / "trials.parquet").to_pylist()
    assert sorted(r["status"] for r in rows) == ["failed"] * 3


def test_ray_s_line_about_its_default_token_is_dropped_and_no_other():
    """A new local Ray logs that it turned token authentication on, on every run; `init_ray`
    drops that line alone (Ray's own logger and message, emitted by Ray's own function). The
    records are read by a handler on that logger: Ray's logging set-up in an earlier test of
    the session may stop them from reaching the root logger."""
    import logging

    from ray._private.authentication import authentication_token_setup as token_setup

    class Kept(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.messages: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.messages.append(record.getMessage())

    assert token_setup.__name__ == local_ray.RAY_TOKEN_LOGGER
    logger, kept = logging.getLogger(local_ray.RAY_TOKEN_LOGGER), Kept()
    level, disabled = logger.level, logger.disabled
    logger.addFilter(local_ray._default_token_line_dropped)
    logger.addHandler(kept)
    logger.setLevel(logging.WARNING)
    logger.disabled = False
    try:
        token_setup._warn_token_auth_enabled()
        token_setup._warn_token_auth_disabled()  # a cluster open to anyone: kept
    finally:
        logger.removeFilter(local_ray._default_token_line_dropped)
        logger.removeHandler(kept)
        logger.setLevel(level)
        logger.disabled = disabled
    (message,) = kept.messages
    assert message.startswith("Token authentication is disabled")
