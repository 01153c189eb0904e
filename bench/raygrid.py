"""The Ray side: grids run through the product's own path (`kdray.grid.run.run_experiment` on a
local Ray started by `kdray.grid.local_ray.init_ray`), then read back from the experiment
folder, Ray Train's controller logs and Ray's actor table."""

from __future__ import annotations

import heapq
import json
import os
import shutil
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
import ray
from rich.console import Console

from bench.common import log, proc_children, proc_name_and_hwm
from kdray.grid.local_ray import init_ray
from kdray.grid.run import run_experiment
from kdray.spec.job import Job
from kdray.store.experiment import Experiment

# messages of Ray Train's controller (logs/train/ray-train-sys-controller-*.log), in order
CONTROLLER_EVENTS = {
    "workergroup_start": "Attempting to start training worker group",
    "pg_ready": "[Worker Group Initialization] Placement group ready",
    "workers_created": "worker actors created in",
    "context_ready": "Train context initialized on workers",
    "callbacks_done": "after_worker_group_start callbacks completed",
    "fn_launched": "Train function launched on workers",
    "shutdown_begin": "Shutting down",
    "shutdown_done": "Worker group shutdown successful",
}


@dataclass
class GridRun:
    """One experiment run end to end, as the bench saw it."""

    exp: Experiment
    job: Job
    started: float  # wall clock just before run_experiment
    makespan_s: float  # wall clock around run_experiment
    ok: bool
    trials: list[dict]  # rows of results/trials.parquet
    epochs: list[dict]  # rows of results/epochs.parquet
    driver_start: dict[str, float] = field(default_factory=dict)  # run id -> trial driver start


def run_grid(job: Job) -> GridRun:
    """Create the experiment folder and run it with `run_experiment`, timing it from outside."""
    exp = Experiment.create(job)
    console = Console(stderr=True)
    started = time.time()
    report = run_experiment(exp, job, console=console)
    makespan = time.time() - started
    trials = pq.read_table(exp.results_dir / "trials.parquet").to_pylist()
    epochs = pq.read_table(exp.results_dir / "epochs.parquet").to_pylist()
    driver_start = {}
    for row in trials:
        # `wall_s` ends as summary.json is written and starts at the trial's launch for a
        # fit's first run (its turn for a later one); attempts.json is written at the run's
        # turn inside the worker, after the fit's start-up, so it cannot date the launch
        summary = exp.run_dir(row["trial_id"]) / "summary.json"
        if summary.is_file() and row["wall_s"] is not None:
            driver_start[row["trial_id"]] = summary.stat().st_mtime - row["wall_s"]
    return GridRun(exp, job, started, makespan, report.ok, trials, epochs, driver_start)


def seed_teachers(source: Experiment, target: Experiment, teacher_runs: list[str]) -> None:
    """Copy finished teacher runs (and the decoded data) into another experiment, so that
    experiment's student trains without retraining its teachers."""
    for run in teacher_runs:
        shutil.copytree(source.run_dir(run), target.run_dir(run))
    shutil.copytree(source.data_dir, target.data_dir, dirs_exist_ok=True)


class PeriodicSampler:
    """`sample()` every `every_s` seconds in a thread, while inside `with`."""

    def __init__(self, every_s: float):
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.every_s)

    def sample(self) -> None:
        raise NotImplementedError


class RssSampler(PeriodicSampler):
    """Samples the peak RSS (VmHWM) of every process below this one (Ray's raylet, its
    workers and actors) every `every_s` seconds; keeps each process's last Ray title."""

    def __init__(self, every_s: float = 1.0):
        super().__init__(every_s)
        self.peaks: dict[int, tuple[str, float]] = {}

    def sample(self) -> None:
        for pid in proc_children(os.getpid()):
            got = proc_name_and_hwm(pid)
            if got is None:
                continue
            title, mb = got
            old_title, old_mb = self.peaks.get(pid, (title, 0.0))
            if title.startswith("ray::IDLE"):  # a pooled worker not (yet) running an actor
                title = old_title
            self.peaks[pid] = (title, max(mb, old_mb))

    def by_role(self) -> dict[str, float]:
        """Peak RSS in MB per process kind: the largest process of each Ray actor class."""
        roles: dict[str, float] = {}
        for title, mb in self.peaks.values():
            if title.startswith("ray::IDLE"):
                role = "idle_pool_worker"
            elif title.startswith("ray::"):
                role = title.split(".")[0].removeprefix("ray::")
            else:  # raylet, gcs_server, or python for Ray's helper scripts
                role = Path(title.split()[0]).name if title else "?"
            roles[role] = round(max(roles.get(role, 0.0), mb), 1)
        return dict(sorted(roles.items(), key=lambda kv: -kv[1]))


# the processes Ray Train and Tune start for every trial (one each per single-worker trial)
TRIAL_ROLES = (
    "RayTrainWorker",
    "ImplicitFunc",  # the Tune trial driver
    "TrainController",
    "SynchronizationActor",
    "DatasetManager",
    "PreemptionWatcher",
    "PlacementGroupCleaner",
)


def per_trial_rss_mb(roles: dict[str, float]) -> float:
    """The peak RSS of one trial's own processes added up (shared library pages counted in
    each process, as RSS does)."""
    return round(sum(roles.get(role, 0.0) for role in TRIAL_ROLES), 1)


def session_dir() -> Path:
    """This Ray session's folder (its logs hold Ray Train's controller timings)."""
    return Path(ray._private.worker._global_node.get_session_dir_path())


def controller_events(session: Path) -> dict[str, dict[str, float]]:
    """Per Train run name: the wall-clock time of each controller event (first attempt), plus
    `controller_up` (its first log line) and `backend_setup_s` (the process group set-up)."""
    runs: dict[str, dict[str, float]] = {}
    for path in sorted((session / "logs" / "train").glob("ray-train-sys-controller-*.log")):
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            name, message = entry.get("run_name"), entry.get("message", "")
            if not name:
                continue
            t = entry["timestamp_ns"] / 1e9
            events = runs.setdefault(name, {"controller_up": t})
            events["controller_up"] = min(events["controller_up"], t)
            for key, needle in CONTROLLER_EVENTS.items():
                if needle in message and key not in events:
                    events[key] = t
                    if key == "callbacks_done" and "BackendSetupCallback: " in message:
                        tail = message.split("BackendSetupCallback: ", 1)[1]
                        events["backend_setup_s"] = float(tail.split("s", 1)[0])
    return runs


def actor_table() -> list[dict]:
    """Ray's actor table, read from the GCS (no dashboard needed)."""
    return list(ray._private.state.actors().values())


def actor_counts(actors: list[dict]) -> dict[str, int]:
    """How many actors of each class the grids started: each is a worker process."""
    counts: dict[str, int] = {}
    for actor in actors:
        name = actor["ActorClassName"].rsplit(".", 1)[-1]  # wrap_function.<locals>.ImplicitFunc
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def driver_actor_lead(grid: GridRun, actors: list[dict]) -> list[float]:
    """Per trial: seconds from its Tune driver actor's start (the GCS `StartTime` of the
    `ImplicitFunc` actor whose pid Tune recorded in the trial's result.json) to `run_trial`
    starting its `wall_s` clock — time a trial spends before `wall_s` counts."""
    started = {
        a["Pid"]: a["StartTime"] / 1000
        for a in actors
        if a["ActorClassName"].endswith("ImplicitFunc")
    }
    leads = []
    for result in grid.exp.tune_dir.glob("*/*/result.json"):
        lines = result.read_text().splitlines()
        if not lines:
            continue
        row = json.loads(lines[-1])
        run = row.get("config", {}).get("run", {}).get("run_id")
        if row.get("pid") in started and run in grid.driver_start:
            leads.append(grid.driver_start[run] - started[row["pid"]])
    return leads


def trial_timeline(grid: GridRun, events: dict[str, dict[str, float]]) -> dict[str, dict]:
    """Split each trial's `wall_s` into consecutive phases (seconds) on one clock.

    Driver start: the trial's launch, `summary.json`'s mtime less `wall_s` (`run_grid`).
    Worker loop start: the controller's "Train function launched" (the loop starts its own
    clock as the launch returns). First step: loop start + `setup_s`. End of the worker's work:
    its last write into the run folder (`model.pt`, after the final metrics, and whatever else
    it leaves there). `wall_s` ends as the worker writes the run's summary, so the last phases
    (the controller noticing, the worker group's shutdown) come after it; the trial driver's
    own return from `fit()` is not dated.
    """
    out = {}
    for row in grid.trials:
        run, ev = row["trial_id"], events.get(row["trial_id"])
        start = grid.driver_start.get(run)
        model_pt = grid.exp.run_dir(run) / "model.pt"
        needed = ("fn_launched", "shutdown_begin", "shutdown_done", "workers_created")
        if not ev or start is None or row["status"] != "finished" or not model_pt.is_file():
            continue
        if not all(k in ev for k in needed) or (row["attempts"] or 1) > 1:
            continue
        loop_start, saved = ev["fn_launched"], worker_done(grid.exp.run_dir(run))
        end = start + row["wall_s"]
        phases = {
            "driver_to_controller_up": ev["controller_up"] - start,
            "controller_init": ev["workergroup_start"] - ev["controller_up"],
            "placement_group": ev["pg_ready"] - ev["workergroup_start"],
            "worker_actors_start": ev["workers_created"] - ev["pg_ready"],
            "train_context_init": ev["context_ready"] - ev["workers_created"],
            "process_group_and_callbacks": ev["callbacks_done"] - ev["context_ready"],
            "train_fn_launch": loop_start - ev["callbacks_done"],
            "worker_setup_to_first_step": row["setup_s"],
            "training": row["train_s"] - row["setup_s"],
            "final_metrics_and_writes": saved - (loop_start + row["train_s"]),
            "finish_detected": ev["shutdown_begin"] - saved,
            "worker_group_shutdown": ev["shutdown_done"] - ev["shutdown_begin"],
        }
        out[run] = {
            "start": start,
            "end": end,
            "stage": row["stage"],
            "wall_s": row["wall_s"],
            "launch_to_first_step_s": loop_start + row["setup_s"] - start,
            "phases": phases,
        }
    return out


def worker_done(run_dir: Path) -> float:
    """When the worker wrote its last file into the run folder (summary.json and
    attempts.json excluded: the trial driver rewrites those)."""
    return max(
        p.stat().st_mtime
        for p in run_dir.iterdir()
        if p.is_file() and p.name not in ("summary.json", "attempts.json")
    )


def median_phases(timeline: dict[str, dict]) -> dict[str, float]:
    """The median of each phase over the trials (seconds, rounded)."""
    if not timeline:
        return {}
    keys = next(iter(timeline.values()))["phases"]
    return {k: round(statistics.median(t["phases"][k] for t in timeline.values()), 3) for k in keys}


def slots(job: Job) -> int:
    """Trials that can run at once: the concurrency cap, or what the CPUs hold if fewer."""
    r = job.resources
    cpus = ray.cluster_resources().get("CPU", 1) if ray.is_initialized() else os.cpu_count()
    return max(
        1, min(r.max_concurrent_trials, int(cpus // (r.cpus_per_worker * r.workers_per_trial)))
    )


def list_schedule_s(grid: GridRun, n_slots: int) -> float:
    """The makespan the trials' own durations allow with zero launch gaps, in the order
    `kdray.grid.schedule.RunQueue` hands runs to Tune: teachers first, each student on the first
    free slot once all its teachers have finished."""
    plan = grid.exp.plan()
    walls = {r["trial_id"]: r["wall_s"] or 0.0 for r in grid.trials}
    teachers = {t for r in plan.runs.values() for t in r.teacher_runs}
    waiting = sorted(plan.runs.values(), key=lambda r: r.run_id not in teachers)
    free = [0.0] * n_slots
    end: dict[str, float] = {}
    while waiting:
        t = heapq.heappop(free)
        ready = [r for r in waiting if all(end.get(x, 1e18) <= t for x in r.teacher_runs)]
        if not ready:  # this slot idles until the next teacher finishes
            later = [end[x] for r in waiting for x in r.teacher_runs if end.get(x, -1.0) > t]
            heapq.heappush(free, min(later))
            continue
        run = ready[0]
        waiting.remove(run)
        end[run.run_id] = t + walls.get(run.run_id, 0.0)
        heapq.heappush(free, end[run.run_id])
    return max(end.values(), default=0.0)


def packing(grid: GridRun, n_slots: int, ray_init_s: float) -> dict:
    """P2: the makespan against the trials' busy time spread over the slots, and where the
    difference goes: outside the trials (data, Tune start and stop, results), slots idle in
    the zero-gap schedule (students waiting for their teacher, the last trials' tail), and
    launch gaps (a freed slot waiting for its next trial to start)."""
    walls = [r["wall_s"] for r in grid.trials if r["wall_s"] is not None]
    busy = sum(walls)
    ideal = busy / n_slots
    out = {
        "p2_packing": grid.makespan_s / ideal,
        "makespan_s": grid.makespan_s,
        "busy_s": busy,
        "slots": n_slots,
        "trials": len(walls),
        "ideal_s": ideal,
        "zero_gap_schedule_s": list_schedule_s(grid, n_slots),
        "packing_incl_ray_init": (grid.makespan_s + ray_init_s) / ideal,
    }
    rows = [r for r in grid.trials if r["trial_id"] in grid.driver_start]
    if rows:
        starts = [grid.driver_start[r["trial_id"]] for r in rows]
        ends = [grid.driver_start[r["trial_id"]] + (r["wall_s"] or 0) for r in rows]
        out["before_first_trial_s"] = min(starts) - grid.started
        out["after_last_trial_s"] = grid.started + grid.makespan_s - max(ends)
        out["launch_gaps_s"] = (
            max(ends) - min(starts) - out["zero_gap_schedule_s"]
        )  # the trials' span beyond the zero-gap schedule
    return out


def epoch_rate(grid: GridRun, run_id: str, images_per_epoch: int) -> dict:
    """Images/s of one run's epochs after the first (the worker's `epoch_s`: its batches plus
    the validation pass), from results/epochs.parquet."""
    rows = sorted((e for e in grid.epochs if e["trial_id"] == run_id), key=lambda e: e["epoch"])
    later = [e["epoch_s"] for e in rows[1:]]
    if not later:
        return {}
    summary = grid.exp.summary(run_id) or {}
    return {
        "run_id": run_id,
        "teacher_outputs": summary.get("teacher_outputs", "online"),
        "epochs_timed": len(later),
        "epoch_s": [round(s, 3) for s in later],
        "images_per_s": images_per_epoch * len(later) / sum(later),
    }


def kd_student_run(grid: GridRun, model: str = "resnet10t", study: str = "normal") -> str:
    """The run id of the grid's KD student of the quickstart shape: `model`'s run with the
    role `kd:<study>` (the quickstart's normal study: Hinton KD from seresnet18)."""
    for row in grid.trials:
        if row["model"] == model and f"kd:{study}" in (row["roles"] or []):
            return row["trial_id"]
    raise LookupError(f"no kd:{study} run of {model} in {grid.exp.root}")


def timed_ray_init(job: Job) -> float:
    """Seconds to start the local Ray the product starts (`kdray.grid.local_ray.init_ray`)."""
    t0 = time.perf_counter()
    init_ray(job)
    seconds = time.perf_counter() - t0
    log(f"ray.init: {seconds:.1f}s, resources {ray.cluster_resources()}")
    return seconds
