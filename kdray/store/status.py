"""The state of every run of an experiment, read from its folder alone (works while a grid runs,
after it stopped, and with no Ray running).

A run is `finished` or `failed` once it wrote `summary.json` (or a Ray-level `failure.json`),
`running` while a live grid has launched it, `interrupted` when it was launched by a grid that is
gone, and `pending` before its first launch. A run whose `summary.json` cannot be read is
`unreadable` (`unreadable_runs` says which file and what to do).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections import Counter
from pathlib import Path

from kdray.spec.plan import STAGES, RunSpec
from kdray.store.atomic import write_json
from kdray.store.experiment import Experiment, ExperimentError, read_json

STATES = ("finished", "running", "failed", "interrupted", "pending", "unreadable")
DRIVER_FILE = "driver.json"


class GridBusy(Exception):
    """Another `kdray run`/`resume` is driving this experiment."""


def check_no_other_driver(exp: Experiment) -> None:
    """Two drivers would train the same runs at once, into the same folders: refuse."""
    if not grid_alive(exp):
        return
    driver = _read_driver(exp)
    if driver["host"] == socket.gethostname() and driver["pid"] == os.getpid():
        return  # a marker this process left behind
    since = time.strftime("%Y-%m-%d %H:%M", time.localtime(driver["started"]))
    raise GridBusy(
        f"{exp.root} is already being run by process {driver['pid']} on {driver['host']} "
        f"(since {since}); wait for it, or stop it (Ctrl-C, or `kdray stop` for a Ray job). "
        f"If that process is gone, delete {exp.root / DRIVER_FILE}"
    )


def mark_driver(exp: Experiment) -> None:
    """Record the live `kdray run`/`resume` process, so `status` can tell running from stopped."""
    payload = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    write_json(exp.root / DRIVER_FILE, payload)


def clear_driver(exp: Experiment) -> None:
    (exp.root / DRIVER_FILE).unlink(missing_ok=True)


def grid_alive(exp: Experiment) -> bool:
    path = exp.root / DRIVER_FILE
    if not path.is_file():
        return False
    driver = _read_driver(exp)
    if driver["host"] != socket.gethostname():
        return True  # another machine's driver: trust the marker
    try:
        os.kill(driver["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_driver(exp: Experiment) -> dict:
    path = exp.root / DRIVER_FILE
    driver = read_json(
        path,
        "if no `kdray run`/`resume` is driving this experiment now, delete it (it only marks "
        "a live driver)",
    )
    if not isinstance(driver, dict) or not {"host", "pid", "started"} <= set(driver):
        raise ExperimentError(f"{path} is damaged (no host, pid, started): delete it")
    return driver


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
    if summary is not None:
        return "finished" if summary["status"] == "finished" else "failed"
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


def status_rows(exp: Experiment) -> list[dict]:
    alive = grid_alive(exp)
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
