"""A grid's progress as plain lines, for a stdout that is no terminal (nohup, Slurm, `ray job
submit`, a redirect), where live bars would leave nothing: one line per run that starts,
finishes (with its primary metric) or fails (with its one-line error), and a one-line summary
of every stage every few minutes. Read from the experiment folder, as `GridProgress` is."""

from __future__ import annotations

import contextlib
import os
import threading
import time

from rich.console import Console

from kdray.spec.plan import PLAIN, RunSpec
from kdray.store.experiment import Experiment, ExperimentError
from kdray.store.status import stage_counts, status_rows

EVERY_S_ENV = "KDRAY_PROGRESS_EVERY_S"  # seconds between stage summaries (tests set a few)
DEFAULT_EVERY_S = 180.0


def summary_every_s() -> float:
    """Seconds between two stage summaries: `KDRAY_PROGRESS_EVERY_S`, else (or where it is no
    positive number: `every_s_warning`) 3 minutes."""
    if EVERY_S_ENV not in os.environ or every_s_warning():
        return DEFAULT_EVERY_S
    return float(os.environ[EVERY_S_ENV])


def every_s_warning() -> str | None:
    """What is wrong with `KDRAY_PROGRESS_EVERY_S` (set, but no positive number), or None."""
    value = os.environ.get(EVERY_S_ENV)
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if seconds > 0:  # nan too fails this
        return None
    return (
        f"{EVERY_S_ENV}={value!r} is no positive number of seconds; stage summaries every "
        f"{DEFAULT_EVERY_S:g} s (unset it, or set e.g. 60)"
    )


def elapsed(seconds: float) -> str:
    """`h:mm:ss` past an hour, else `m:ss`."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def describe(run: RunSpec) -> str:
    """`student resnet10t <- seresnet18, normal (kd), seed 0` (its study and method, as the
    tables name them), `teacher seresnet18 [0.50, 0.65], seed 0` (a defective teacher's band),
    `student resnet10t <- seresnet18, tuned (kd temperature 4.58, alpha 0.708), seed 0, a
    search's sample` (a swept or searched setting), `student resnet10t, self (tfkd_virtual),
    seed 0` (a teacher-free method): what a reader needs to know the run."""
    band = f" [{run.band[0]:.2f}, {run.band[1]:.2f}]" if run.band else ""
    teachers = f" <- {'+'.join(run.teacher_models)}" if run.teacher_models else ""
    distilled = run.method != PLAIN  # with a teacher, or teacher-free (tfkd, mean teacher)
    studies = [r.split(":", 1)[1] for r in run.roles if r.startswith(("kd:", "sample:"))]
    study = f", {'+'.join(dict.fromkeys(studies))}" if studies and distilled else ""
    values = ", ".join(
        f"{key} {_value(value)}" for key, value in {**run.setting, **run.train}.items()
    )
    named = [run.method] if distilled else []
    method = f" ({' '.join([*named, values]).strip()})" if named or values else ""
    sample = ", a search's sample" if any(r.startswith("sample:") for r in run.roles) else ""
    return f"{run.stage} {run.model}{band}{teachers}{study}{method}, seed {run.seed}{sample}"


def _value(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def outcome(exp: Experiment, run_id: str, state: str) -> str:
    """A finished (or stopped) run's primary validation score (`val acc 0.812`), a failed run's
    error."""
    folder = exp.run(run_id)
    try:
        summary = folder.summary() or {}
        if state == "failed":
            return summary.get("error") or folder.failure() or "failed"
    except ExperimentError as exc:  # a damaged file: what to do about it
        return str(exc)
    metric = summary.get("primary_metric", "acc")
    score = summary.get(f"val_{metric}")
    scored = f"val {metric} {score:.3f}" if isinstance(score, int | float) else f"no val {metric}"
    wall = summary.get("wall_s")
    return scored + (f" in {elapsed(wall)}" if isinstance(wall, int | float) else "")


def stage_line(rows: list[dict]) -> str:
    """`teacher 2/3 finished, 1 running, 0 failed, 0 waiting; student 0/4 finished, ...`"""
    parts = []
    for stage, c in stage_counts(rows).items():
        total = sum(c.values())
        stopped = f", {c['stopped']} stopped" if c["stopped"] else ""  # searched samples
        interrupted = f", {c['interrupted']} interrupted" if c["interrupted"] else ""
        parts.append(
            f"{stage} {c['finished']}/{total} finished{stopped}, {c['running']} running, "
            f"{c['failed'] + c['unreadable']} failed{interrupted}, {c['pending']} waiting"
        )
    return "; ".join(parts)


class GridLog:
    """The non-terminal counterpart of `GridProgress` (same `refresh` / `follow`): prints what
    changed since the last poll. Runs already finished or failed when it starts (a resumed
    grid) are not announced again; a run counts as started when its attempts count grows."""

    def __init__(self, console: Console, every_s: float | None = None):
        self.console = console
        self.every_s = summary_every_s() if every_s is None else every_s
        problem = every_s_warning() if every_s is None else None
        if problem:
            console.print(f"[yellow]warning[/yellow]: {problem}", highlight=False)
        self._started = time.monotonic()
        self._last_summary = self._started
        self._seen: dict[str, tuple[str, int]] | None = None  # run id -> (state, attempts)
        self._lock = threading.Lock()  # `follow`'s thread and the driver's final refresh

    def __enter__(self) -> GridLog:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def _print(self, text: str) -> None:
        now = elapsed(time.monotonic() - self._started)
        self.console.print(f"[{now}] {text}", highlight=False, markup=False, soft_wrap=True)

    def refresh(self, exp: Experiment, final: bool = False) -> None:
        """Print the runs that started, finished or failed since the last call, and the stage
        summary when it is due (always on the `final` call, when the grid has stopped)."""
        with self._lock:
            rows = status_rows(exp, alive=not final)
            runs = exp.plan().runs
            seen, current = self._seen, {}
            for row in rows:
                run_id, state = row["trial_id"], row["state"]
                now = current[run_id] = (state, row["attempts"])
                if seen is None:
                    continue  # the first poll: what was there before this grid started
                before_state, before_attempts = seen.get(run_id, ("pending", 0))
                again = now[1] > before_attempts  # a new attempt since the last poll
                if again and state in ("running", "finished", "stopped", "failed"):
                    self._print(f"started  {describe(runs[run_id])}")
                if state in ("finished", "stopped", "failed") and (again or state != before_state):
                    self._print(
                        f"{state:<8} {describe(runs[run_id])}: {outcome(exp, run_id, state)}"
                    )
            self._seen = current  # only once every row was read: a poll that raised is redone
            due = time.monotonic() - self._last_summary >= self.every_s
            if final or (due and seen is not None):
                self._last_summary = time.monotonic()
                self._print(stage_line(rows))

    def follow(self, exp: Experiment, stop: threading.Event, every_s: float = 1.0) -> None:
        """Refresh from the experiment folder until `stop` is set (run it in a thread)."""
        while not stop.is_set():
            with contextlib.suppress(Exception):  # a half-written file: the next poll reads it
                self.refresh(exp)
            stop.wait(every_s)
