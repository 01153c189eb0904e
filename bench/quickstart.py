"""The quickstart section: `kdray run jobs/quickstart.yaml` as a new user runs it (a fresh
process, a fresh local Ray, a fresh experiment folder, stdout piped), timed from the command's
start to its exit, `rounds` times; the median is the figure (goal: <= 60 s on 2 idle cores).

Its parts are read from the experiment folder the command leaves, on the same clock as the
command's start (file modification times): when the job's checks were done (the experiment's
`job.json`), the data decoded (its `meta.json`), Tune started (its storage marker: after
`ray.init`), the first fit built (its Ray Train storage marker, written by the trial driver),
the first run started (`attempts.json`, written by the worker as a run starts: the rest of the
first Ray Train start-up comes before it), when the last teacher and the last run ended
(`summary.json`), and the tables after it; per run, its training (`train_s`, the worker's
set-up and epochs) and what follows it until its summary (final metrics, model file, cost,
soft labels). The machine's load average is printed with each round: the machine may be
shared, and seconds mean little on a busy one. `driver_cpu_s`: CPU seconds of the `kdray run`
process itself (imports, checks, polling, tables); Ray's processes are not its reaped
children, so their CPU is not in it.
`cpu_s`: CPU seconds of every process of the command (the driver, Ray's processes, each trial's
actors), summed per kind, sampled from /proc while it runs (`CpuSampler`): on a shared machine
the least noisy measure of the work a change saves. `fits`: the Ray Train fits it started.

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

from bench.common import QUICKSTART, REPO, log, proc_children
from bench.raygrid import PeriodicSampler

TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def proc_role(pid: int, root: int) -> str | None:
    """What a process of the command is: `driver` (the `kdray run` process), a Ray actor's
    class (`ray::RayTrainWorker.<method>` -> `RayTrainWorker`), `ray::IDLE` for a pooled
    worker that runs nothing yet, else its program or Python script (`raylet`, `monitor`)."""
    if pid == root:
        return "driver"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        return None
    if not argv:
        return None
    if argv[0].startswith("ray::"):
        return argv[0].split()[0].split(".")[0].removeprefix("ray::")
    script = next((a for a in argv[1:] if a.endswith(".py")), argv[0])
    return Path(script.split()[0]).stem


def proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a live process."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) * TICK_S


class CpuSampler(PeriodicSampler):
    """CPU seconds of a process and all its descendants, per kind (`proc_role`), sampled every
    `every_s`: a process's last sample counts (what it used in its last `every_s` is lost). A
    pooled worker that later runs an actor counts under the actor."""

    def __init__(self, root: int, every_s: float = 0.2):
        super().__init__(every_s)
        self.root = root
        self.seen: dict[int, tuple[str, float]] = {}

    def sample(self) -> None:
        for pid in [self.root, *proc_children(self.root)]:
            role, cpu = proc_role(pid, self.root), proc_cpu_s(pid)
            if role is None or cpu is None:
                continue
            old_role = self.seen.get(pid, (role, 0.0))[0]
            if role == "IDLE" and old_role != "IDLE":
                role = old_role
            self.seen[pid] = (role, cpu)

    def by_role(self) -> dict[str, float]:
        """CPU seconds per kind of process, the largest first, and `total`."""
        roles: dict[str, float] = {}
        for role, cpu in self.seen.values():
            roles[role] = roles.get(role, 0.0) + cpu
        out = dict(sorted(roles.items(), key=lambda kv: -kv[1]))
        return {"total": sum(roles.values()), **out}


def run_once(repo: Path, storage: Path) -> dict:
    """One `python -m kdray run jobs/quickstart.yaml` in `repo` (its kdray, its job file):
    wall time, the load average before it, and its parts."""
    env = {**os.environ, "RAY_ADDRESS": "local", "COLUMNS": "120"}
    command = [sys.executable, "-m", "kdray", "run", str(repo / QUICKSTART.relative_to(REPO))]
    command += ["--set", f"storage={storage}"]
    load = os.getloadavg()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    with (
        subprocess.Popen(
            command, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        ) as done,
        CpuSampler(done.pid) as sampler,
    ):
        stdout, stderr = done.communicate()
    wall = time.time() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if done.returncode != 0:
        raise RuntimeError(f"kdray run exited {done.returncode}:\n{stdout}\n{stderr}")
    (exp,) = [p for p in storage.iterdir() if (p / "job.json").is_file()]
    return {
        "wall_s": wall,
        "driver_cpu_s": cpu,
        "cpu_s": sampler.by_role(),
        "load_before": load,
        "load_after": os.getloadavg(),
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
    fits = sorted(exp.glob("train/*/.validate_storage_marker"))

    def at(path: Path) -> float:
        return path.stat().st_mtime - started

    return {
        "experiment_created_s": at(exp / "job.json"),
        "data_ready_s": max(at(p) for p in exp.glob("data/*/meta.json")),
        "tune_started_s": min(at(p) for p in exp.glob("tune/*/.validate_storage_marker")),
        "first_fit_s": min(at(p) for p in fits),
        "fits": len(fits),
        "first_run_start_s": min(r["start_s"] for r in runs),
        "teachers_done_s": max(r["end_s"] for r in teachers),
        "runs_done_s": last,
        "tables_and_exit_s": ended - started - last,
        "runs": runs,
    }


def summarise(rounds: list[dict]) -> dict:
    """Medians over rounds: the wall time and each part (per run by its folder name)."""
    keys = (
        "experiment_created_s",
        "data_ready_s",
        "tune_started_s",
        "first_fit_s",
        "first_run_start_s",
        "teachers_done_s",
        "runs_done_s",
        "tables_and_exit_s",
    )
    roles = dict.fromkeys(role for r in rounds for role in r["cpu_s"])
    out = {
        "wall_s_median": statistics.median(r["wall_s"] for r in rounds),
        "wall_s": [r["wall_s"] for r in rounds],
        "driver_cpu_s_median": statistics.median(r["driver_cpu_s"] for r in rounds),
        "cpu_s_median": {
            role: statistics.median(r["cpu_s"].get(role, 0.0) for r in rounds) for role in roles
        },
        "fits": [r["fits"] for r in rounds],
        "load_before": [r["load_before"] for r in rounds],
        "load_after": [r["load_after"] for r in rounds],
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
