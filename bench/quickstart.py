"""The quickstart section: `kdray run jobs/quickstart.yaml` as a new user runs it (a fresh
process, a fresh local Ray, a fresh experiment folder, stdout piped), timed from the command's
start to its exit, `rounds` times; the median is the figure (goal: <= 60 s on 2 idle cores).

Its parts are read from the experiment folder the command leaves, on the same clock as the
command's start (file modification times): when the first run started (`attempts.json`, written
by the worker as a run starts: the CLI's imports, the data, Ray's start and the first Ray Train
start-up come before it), when the last teacher and the last run ended (`summary.json`), and
the tables after it; per run, its training (`train_s`, the worker's set-up and epochs) and what
follows it until its summary (final metrics, model file, cost, soft labels). The machine's load
average is printed with each round: the machine may be shared, and seconds mean little on a
busy one. `driver_cpu_s`: CPU seconds of the `kdray run` process itself (imports, checks,
polling, tables); Ray's processes are not its reaped children, so their CPU is not in it.

`against`: another checkout (e.g. `git archive` of an earlier commit), run alternately with this
one, round by round, so both sides see the same machine.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import QUICKSTART, REPO, log


def run_once(repo: Path, storage: Path) -> dict:
    """One `python -m kdray run jobs/quickstart.yaml` in `repo` (its kdray, its job file):
    wall time, the load average before it, and its parts."""
    env = {**os.environ, "RAY_ADDRESS": "local", "COLUMNS": "120"}
    command = [sys.executable, "-m", "kdray", "run", str(repo / QUICKSTART.relative_to(REPO))]
    command += ["--set", f"storage={storage}"]
    load = os.getloadavg()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)
    wall = time.time() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if done.returncode != 0:
        raise RuntimeError(f"kdray run exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    (exp,) = [p for p in storage.iterdir() if (p / "job.json").is_file()]
    return {
        "wall_s": wall,
        "driver_cpu_s": cpu,
        "load_before": load,
        **parts(exp, started, started + wall),
    }


def parts(exp: Path, started: float, ended: float) -> dict:
    """Where the command's time went, read from the experiment folder (see the docstring)."""
    stages = {r["run_id"]: r["stage"] for r in json.loads((exp / "plan.json").read_text())["runs"]}
    runs = []
    for folder in sorted((exp / "runs").iterdir()):
        summary = json.loads((folder / "summary.json").read_text())
        start = (folder / "attempts.json").stat().st_mtime - started
        end = (folder / "summary.json").stat().st_mtime - started
        runs.append(
            {
                "run": folder.name,
                "stage": stages[folder.name],
                "start_s": start,
                "end_s": end,
                "train_s": summary["train_s"],
                "after_training_s": end - start - summary["train_s"],
            }
        )
    teachers = [r for r in runs if r["stage"] == "teacher"]
    last = max(r["end_s"] for r in runs)
    return {
        "first_run_start_s": min(r["start_s"] for r in runs),
        "teachers_done_s": max(r["end_s"] for r in teachers),
        "runs_done_s": last,
        "tables_and_exit_s": ended - started - last,
        "runs": runs,
    }


def summarise(rounds: list[dict]) -> dict:
    """Medians over rounds: the wall time and each part (per run by its folder name)."""
    keys = ("first_run_start_s", "teachers_done_s", "runs_done_s", "tables_and_exit_s")
    out = {
        "wall_s_median": statistics.median(r["wall_s"] for r in rounds),
        "wall_s": [r["wall_s"] for r in rounds],
        "driver_cpu_s_median": statistics.median(r["driver_cpu_s"] for r in rounds),
        "load_before": [r["load_before"] for r in rounds],
        "parts_median_s": {k: statistics.median(r[k] for r in rounds) for k in keys},
    }
    names = [run["run"] for run in rounds[0]["runs"]]
    out["runs_median_s"] = {
        name: {
            k: statistics.median(run[k] for r in rounds for run in r["runs"] if run["run"] == name)
            for k in ("start_s", "end_s", "train_s", "after_training_s")
        }
        for name in names
    }
    return out


def quickstart(root: Path, rounds: int = 3, against: Path | None = None) -> dict:
    """`rounds` timed quickstarts of this checkout (and of `against`, alternating)."""
    sides = {"this": REPO} | ({"against": against.resolve()} if against else {})
    results: dict[str, list[dict]] = {side: [] for side in sides}
    for i in range(rounds):
        for side, repo in sides.items():
            log(f"quickstart {side} round {i + 1}/{rounds}, load {os.getloadavg()[0]:.2f}")
            result = run_once(repo, root / f"{side}-{i}")
            log(f"quickstart {side}: {result['wall_s']:.1f}s")
            results[side].append(result)
    out = {"quickstart": summarise(results["this"])}
    if against:
        out["against"] = {"repo": str(against)} | summarise(results["against"])
    out["meta"] = {"cpus": os.cpu_count(), "rounds": rounds, "load_avg_at_end": os.getloadavg()}
    return out
