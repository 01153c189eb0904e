"""The state of every run of an experiment, read from its folder alone (works while a grid runs,
after it stopped, and with no Ray running).

A run is `finished`, `stopped` (a searched sample its search ended early) or `failed` once it
wrote `summary.json` (or a Ray-level `failure.json`),
`running` while a live grid has launched it, `interrupted` when it was launched by a grid that is
gone, and `pending` before its first launch. A run whose `summary.json` cannot be read is
`unreadable` (`unreadable_runs` says which file and what to do).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from kdray.spec.plan import STAGES, RunSpec
from kdray.store import lock
from kdray.store.experiment import Experiment, ExperimentError

STATES = ("finished", "stopped", "running", "failed", "interrupted", "pending", "unreadable")


def grid_alive(exp: Experiment) -> bool:
    """Whether a live `kdray run`/`resume` drives the experiment (`kdray.store.lock`)."""
    return lock.grid_alive(exp.root)


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def unreadable_runs(exp: Experiment) -> dict[str, str]:
    """Run id -> why its summary.json cannot be read and what to do, for every such run."""
    out = {}
    for run_id in exp.plan().runs:
        try:
            exp.summary(run_id)
        except ExperimentError as exc:
            out[run_id] = str(exc)
    return out


def run_state(exp: Experiment, run: RunSpec, alive: bool) -> str:
    folder = exp.run(run.run_id)
    try:
        summary = folder.summary()
    except ExperimentError:
        return "unreadable"
    if summary is not None:  # stopped: a searched sample its search ended early
        return summary["status"] if summary["status"] in ("finished", "stopped") else "failed"
    if (folder.path / "failure.json").is_file():
        return "failed"
    if folder.started():
        return "running" if alive else "interrupted"
    return "pending"


def best_val_score(exp: Experiment, run_id: str) -> float | None:
    """The best validation score (the task's primary metric, `val_<metric>`) so far."""
    try:
        rows = exp.run(run_id).epochs()
    except (OSError, UnicodeDecodeError, ExperimentError):  # shown empty here; export names it
        return None
    values = [
        v for r in rows if isinstance(r, dict) for k, v in r.items()
        if k.startswith("val_") and isinstance(v, int | float)
    ]  # fmt: skip
    return max(values) if values else None


def status_rows(exp: Experiment, alive: bool | None = None) -> list[dict]:
    """Every run's state; `alive`: whether a driver runs the grid (default: read the folder)."""
    alive = grid_alive(exp) if alive is None else alive
    rows = []
    runs = sorted(exp.plan().runs.values(), key=lambda r: (STAGES.index(r.stage), r.seed))
    for run in runs:
        rows.append(
            {
                "stage": run.stage,
                "method": run.method,
                "teacher": "+".join(run.teacher_models),
                "model": run.model,
                "seed": run.seed,
                "state": run_state(exp, run, alive),
                "best_val": best_val_score(exp, run.run_id),
                "attempts": _attempts(exp, run.run_id),
                "trial_id": run.run_id,
            }
        )
    return rows


def unfinished_line(exp: Experiment) -> str | None:
    """For tables written of a grid not all finished: how many runs they hold and what goes on
    with the others; None once every run finished. A run that ended failed in its summary (a
    band missed, training diverged) is not retried by a resume: its job must change first."""
    alive = grid_alive(exp)
    rows = status_rows(exp, alive)
    done = sum(1 for r in rows if r["state"] == "finished")
    stopped = sum(1 for r in rows if r["state"] == "stopped")  # ended: a search stopped them
    if done + stopped == len(rows):
        return None
    failed = [r["trial_id"] for r in rows if r["state"] == "failed"]
    final = [run for run in failed if _ended_failed(exp, run)]
    said = f"{done} of {len(rows)} runs finished" + (
        f", {stopped} stopped by their search" if stopped else ""
    ) + (f", {len(failed)} failed" if failed else "")  # fmt: skip
    if alive:
        return f"{said}; the grid is still running: the tables hold the finished runs; export " \
            "again once it ends (`kdray status` follows it)"  # fmt: skip
    said += "; the tables hold the finished ones"
    if failed:
        said += f"; `kdray status {exp.root}` says why each failed (fix the job where it is why)"
    left = len(rows) - done - stopped - len(final)  # what a resume trains (retries included)
    if left == 0:
        return said + "; a resume would train none (a run that ended failed is not retried)"
    return f"{said}; `kdray resume {exp.root}` continues the other {left}"


def _ended_failed(exp: Experiment, run_id: str) -> bool:
    """Whether a resume would not train the run again: its summary says it failed, or its
    teacher's does (it was never started)."""
    try:
        if (exp.summary(run_id) or {}).get("status") == "failed":
            return True
        return (exp.run(run_id).failure() or "").startswith("not started: its teacher run")
    except ExperimentError:
        return False


def _attempts(exp: Experiment, run_id: str) -> int:
    try:
        return exp.run(run_id).attempts()
    except (OSError, ExperimentError):  # `kdray status` shows what it can
        return 0


def stage_counts(rows: list[dict]) -> dict[str, Counter]:
    counts = {stage: Counter() for stage in STAGES}
    for row in rows:
        counts[row["stage"]][row["state"]] += 1
    return counts
