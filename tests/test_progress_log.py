"""A grid's progress in a log (stdout no terminal): a line per run that starts, finishes or
fails, and stage summaries, read from the experiment folder. No Ray: the run folders are
written here as a worker writes them."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from kdray.grid.progress import GridProgress
from kdray.grid.progress_log import GridLog, describe, elapsed, summary_every_s
from kdray.grid.run import grid_view
from kdray.spec.load import parse_job
from kdray.spec.plan import make_plan
from kdray.store.experiment import Experiment
from tests.conftest import tiny_job_dict


def piped() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=200, force_terminal=False), out


def experiment(tmp_path) -> tuple[Experiment, str, str]:
    """The tiny job's experiment: (exp, its teacher run, its KD student run)."""
    exp = Experiment.create(parse_job(tiny_job_dict(tmp_path)))
    runs = exp.plan().runs.values()
    teacher = next(r.run_id for r in runs if r.stage == "teacher")
    student = next(r.run_id for r in runs if r.teacher_runs)
    return exp, teacher, student


def finish(exp: Experiment, run_id: str, val_acc: float) -> None:
    exp.run(run_id).write_summary(
        {"status": "finished", "error": None, "primary_metric": "acc", "val_acc": val_acc,
         "wall_s": 75.0}
    )  # fmt: skip


def lines(out: io.StringIO) -> list[str]:
    return out.getvalue().splitlines()


def test_a_line_when_a_run_starts_finishes_or_fails_and_a_closing_stage_summary(tmp_path):
    exp, teacher, student = experiment(tmp_path)
    console, out = piped()
    log = GridLog(console, every_s=3600)
    log.refresh(exp)
    assert lines(out) == []  # nothing happened yet
    exp.run(teacher).start_attempt()
    log.refresh(exp)
    assert lines(out) == ["[0:00] started  teacher resnet10t, seed 0"]
    finish(exp, teacher, 0.8125)
    exp.run(student).start_attempt()
    log.refresh(exp)
    log.refresh(exp)  # nothing new: nothing printed twice
    assert lines(out)[1:] == [
        "[0:00] finished teacher resnet10t, seed 0: val acc 0.812 in 1:15",
        "[0:00] started  student test_resnet <- resnet10t, normal (kd), seed 0",
    ]
    exp.run(student).record_failure("RuntimeError: the loss is nan")
    log.refresh(exp, final=True)
    failed, summary = lines(out)[3:]
    assert failed == (
        "[0:00] failed   student test_resnet <- resnet10t, normal (kd), seed 0: "
        "RuntimeError: the loss is nan"
    )
    assert summary.startswith("[0:00] teacher 1/1 finished, 0 running, 0 failed, 0 waiting; ")
    assert "student 0/2 finished, 0 running, 1 failed, 1 waiting" in summary


def test_runs_ended_before_the_grid_started_are_not_announced_again(tmp_path):
    """A resumed grid: the teacher finished in an earlier `kdray run`; a student that was
    interrupted there is announced when its new attempt starts."""
    exp, teacher, student = experiment(tmp_path)
    exp.run(teacher).start_attempt()
    finish(exp, teacher, 0.9)
    exp.run(student).start_attempt()
    console, out = piped()
    log = GridLog(console, every_s=3600)
    log.refresh(exp)
    log.refresh(exp)
    assert lines(out) == []
    exp.run(student).start_attempt()
    finish(exp, student, 0.7)
    log.refresh(exp)
    assert [ln.split(" ", 2)[1] for ln in lines(out)] == ["started", "finished"]


def test_a_stage_summary_every_interval_while_runs_train(tmp_path, monkeypatch):
    exp, teacher, _ = experiment(tmp_path)
    console, out = piped()
    log = GridLog(console, every_s=0)
    log.refresh(exp)  # the first poll only takes stock
    exp.run(teacher).start_attempt()
    log.refresh(exp)
    assert lines(out)[-1] == (
        "[0:00] teacher 0/1 finished, 1 running, 0 failed, 0 waiting; "
        "student 0/2 finished, 0 running, 0 failed, 2 waiting"
    )


def test_a_defective_teacher_is_named_with_its_band(tmp_path):
    raw = tiny_job_dict(tmp_path)
    raw["studies"]["normal"]["teacher_val_band"] = [0.5, 0.65]
    (run,) = [r for r in make_plan(parse_job(raw)).runs.values() if r.band]
    assert describe(run) == "teacher resnet10t [0.50, 0.65], seed 0"


def test_interval_from_the_environment(monkeypatch):
    monkeypatch.setenv("KDRAY_PROGRESS_EVERY_S", "2.5")
    assert summary_every_s() == 2.5
    monkeypatch.setenv("KDRAY_PROGRESS_EVERY_S", "soon")
    assert summary_every_s() == 180.0
    assert (elapsed(75), elapsed(3725)) == ("1:15", "1:02:05")


def test_bars_on_a_terminal_lines_elsewhere():
    assert isinstance(grid_view(Console(file=io.StringIO(), force_terminal=True)), GridProgress)
    assert isinstance(grid_view(Console(file=io.StringIO(), force_terminal=False)), GridLog)


def test_a_swept_or_searched_run_is_named_with_its_setting(tmp_path):
    from dataclasses import replace

    from kdray.grid.progress_log import stage_line

    runs = make_plan(parse_job(tiny_job_dict(tmp_path))).runs.values()
    kd = next(r for r in runs if r.teacher_runs)
    sample = replace(kd, setting={"temperature": 4.58123, "alpha": 0.708}, roles=["sample:s"])
    assert describe(sample) == (
        "student test_resnet <- resnet10t, s (kd temperature 4.58, alpha 0.708), seed 0, "
        "a search's sample"
    )
    baseline = next(r for r in runs if r.stage == "student" and not r.teacher_runs)
    tuned = replace(baseline, train={"lr": 0.001}, seed=2, roles=["baseline"])
    assert describe(tuned) == "student test_resnet (lr 0.001), seed 2"
    rows = [{"stage": "student", "state": s} for s in ("finished", "interrupted", "pending")]
    assert stage_line(rows).endswith(
        "student 1/3 finished, 0 running, 0 failed, 1 interrupted, 1 waiting"
    )


def test_a_teacher_free_run_is_named_with_its_study_and_method_unlike_its_baseline(tmp_path):
    raw = tiny_job_dict(tmp_path, baseline=True)
    raw["studies"] = {"self": {"students": ["test_resnet"], "method": {"name": "tfkd_virtual"}}}
    runs = make_plan(parse_job(raw)).runs.values()
    (free,) = [r for r in runs if r.method == "tfkd_virtual"]
    (baseline,) = [r for r in runs if r.stage == "student" and r.method != "tfkd_virtual"]
    assert describe(free) == "student test_resnet, self (tfkd_virtual), seed 0"
    assert describe(baseline) == "student test_resnet, seed 0"


@pytest.mark.parametrize("value", ["0", "-5", "abc", "nan"])
def test_an_interval_that_is_no_positive_number_is_one_warning_and_the_default(monkeypatch, value):
    monkeypatch.setenv("KDRAY_PROGRESS_EVERY_S", value)
    console, out = piped()
    log = GridLog(console)
    assert log.every_s == 180.0
    warned = [ln for ln in out.getvalue().splitlines() if ln.startswith("warning")]
    assert len(warned) == 1 and "KDRAY_PROGRESS_EVERY_S" in warned[0] and value in warned[0]
