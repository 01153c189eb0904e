"""Ray Tune over the grid's runs: each trial is a light driver that fits one Ray Train
TorchTrainer over a pack of runs (`kdray.grid.packing`, `kdray.train.worker`).

Follows Ray 2.60's Train V2 shape: `ray.tune.*` in the trial driver, `ray.train.*` only in the
worker loop. Trial drivers hold one unit of the custom resource `trial_driver` (and no CPU), so
at most `max_concurrent_trials` run however Tune schedules or restores them, and the CPUs stay
free for the Train workers.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import ray
from ray import cloudpickle, tune
from ray.train import FailureConfig, ScalingConfig
from ray.train import RunConfig as TrainRunConfig

from kdray.data.cache import DataInfo
from kdray.grid.packing import Pack, pack_runs, runs_per_fit, runs_per_trial
from kdray.grid.resources import ResourceError, ResourceWait, driver_resources
from kdray.grid.schedule import (
    RunQueue,
    close_ledger_on_interrupt,
    ledger_packs,
    start_ledger,
)
from kdray.grid.search import searches_settled
from kdray.grid.train_fixes import ReleaseFailedWorkerGroups, TorchTrainerWithoutRayData
from kdray.spec.job import Job
from kdray.spec.plan import RunSpec
from kdray.store.experiment import Experiment
from kdray.tasks.weights import caches, force_offline
from kdray.train.trial import TrialConfig


@dataclass
class TrialOutcome:
    run_id: str
    status: str  # finished | failed
    error: str | None = None


NETWORK_FILESYSTEMS = (
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "ceph",
    "lustre",
    "glusterfs",
    "beegfs",
    "gpfs",
    "fuse.",
)


def filesystem_type(path: Path) -> str:
    """The type of the mounted file system holding `path` (longest mount prefix)."""
    best, fstype = "", "unknown"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return fstype
    for line in mounts:
        parts = line.split()
        if len(parts) >= 3 and str(path).startswith(parts[1]) and len(parts[1]) > len(best):
            best, fstype = parts[1], parts[2]
    return fstype


def check_storage(storage: Path) -> None:
    """On a cluster of several machines every node must see the experiment folder."""
    hosts = {n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")}
    if len(hosts) <= 1:
        return
    fstype = filesystem_type(storage.resolve())
    if not fstype.startswith(NETWORK_FILESYSTEMS):
        raise ResourceError(
            f"storage: {storage} is on a local {fstype} file system, but this Ray cluster spans "
            f"{len(hosts)} machines that must all see the experiment folder; set storage to a "
            "shared mount (NFS/EFS, e.g. /mnt/kdray/runs, see docs/cluster.md)"
        )


def worker_loop(config: dict) -> None:
    """What each Ray Train worker runs. `kdray.train.worker` (timm, albumentations, scikit-learn)
    is imported here, in the worker, so that a Tune trial driver process starts without it."""
    force_offline(caches(config["trial"].job.weights_cache))  # no download inside a trial
    from kdray.train.worker import train_pack

    train_pack(config)


# Ray Train 2.60 settings for each trial's TorchTrainer, read from its source
# (ray/train/v2/_internal/constants.py; bench/README.md "Processes per trial" lists every actor a
# trial starts). The trial driver sets them in its own environment: Ray Train reads the metrics
# switch there and passes the others on to the controller and workers it starts.
TRAIN_ENV = {
    # the controller polls its workers every 2 s by default: a finished trial waits for the
    # next poll (~2 s per trial on the quickstart); 0.5 s costs little controller CPU
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    # a PreemptionWatcher actor (one more process) per fit, polling for node drains to serve
    # `ray.train.get_preemption_info`, which kdray never calls; a worker lost to a preempted node
    # is still recognised as preempted (RayActorError.preempted) and restarted from its last
    # checkpoint, as any lost worker is
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    # Ray Train's Prometheus metrics (a controller and a worker callback): kdray records its own
    # times per run and epoch, and a local Ray has no dashboard to show them
    "RAY_TRAIN_METRICS_ENABLED": "0",
}


def apply_train_env() -> None:
    """Set `TRAIN_ENV` in this trial driver's environment; a value already set there wins."""
    for name, value in TRAIN_ENV.items():
        os.environ.setdefault(name, value)


def build_trainer(exp: Experiment, trial: TrialConfig) -> TorchTrainerWithoutRayData:
    """One pack's TorchTrainer. Each run keeps its own checkpoint in its folder, so whichever
    trial trains a run next continues it; the name only labels Ray Train's storage."""
    job = trial.job
    r = job.resources
    per_worker = {"CPU": r.cpus_per_worker}
    if r.gpus_per_worker:
        per_worker["GPU"] = r.gpus_per_worker
    return TorchTrainerWithoutRayData(
        worker_loop,
        train_loop_config={"trial": trial},
        scaling_config=ScalingConfig(
            num_workers=r.workers_per_trial,
            use_gpu=r.gpus_per_worker > 0,
            resources_per_worker=per_worker,
        ),
        run_config=TrainRunConfig(
            name=trial.name,
            storage_path=str(exp.train_dir),
            failure_config=FailureConfig(max_failures=job.faults.trial_retries),
            callbacks=[ReleaseFailedWorkerGroups()],  # a Ray 2.60 leak (kdray.grid.train_fixes)
        ),
    )


def run_trial(config: dict) -> None:
    """The Tune trainable: fit one pack's TorchTrainer over its runs not yet done. A run that
    fails fails alone (its folder says why); the trial errs only when the fit itself does."""
    trial: TrialConfig = config["trial"]
    exp = Experiment(trial.experiment)
    todo = [r for r in trial.runs if exp.summary(r.run_id) is None]
    for teacher_run in sorted({t for r in todo for t in r.teacher_runs}):
        teacher = exp.summary(teacher_run)
        if teacher is None or teacher["status"] != "finished":
            reason = (teacher or {}).get("error") or "it has not finished"
            raise RuntimeError(f"teacher run {teacher_run} is not usable: {reason}")
    apply_train_env()
    if trial.ledger is not None:  # so that a grid stopping stops this trial at once
        # pickled here: a handle unpickled in the ledger imports this trial's module there
        # (torch and all, ~3 s of a core while every trial starts); it is unpickled only to kill
        handle = cloudpickle.dumps(ray.get_runtime_context().current_actor)
        trial.ledger.trial_started.remote(trial.pack_id, handle)
    if todo:
        build_trainer(exp, replace(trial, launched_at=time.time())).fit()
    finished = [r for r in trial.runs if (exp.summary(r.run_id) or {}).get("status") == "finished"]
    tune.report({"runs": len(trial.runs), "finished": len(finished)})


class GridInterrupted(Exception):
    """The grid stopped (Ctrl-C, or Ray gave up) with runs neither finished nor failed."""


class _HideTuneRestoreHint(logging.Filter):
    """Tune tells an interrupted user to call `Tuner.restore`; kdray resumes differently and
    prints its own `kdray resume` command."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore" not in record.getMessage()


class _NoTrialTraceback(logging.Filter):
    """Tune logs a failed trial with its whole traceback; kdray lists each failed run and its
    error at the end, and the traceback stays in the trial's error.txt under tune/."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("Trial task failed"):
            record.exc_info, record.exc_text = None, None
        return True


logging.getLogger("ray.tune.tune").addFilter(_HideTuneRestoreHint())
logging.getLogger("ray.tune.execution.tune_controller").addFilter(_NoTrialTraceback())


def run_grid(exp: Experiment, job: Job, runs: list[RunSpec], data: DataInfo) -> list[TrialOutcome]:
    """Run every run not yet done as one Tune experiment, each student after its teacher.

    A resumed grid is a new Tune experiment (`tune/<time>/`) over the runs without a summary:
    the others are read from their summaries, and the runs left are packed into trials
    (`kdray.grid.packing`); an interrupted run continues from its own last checkpoint,
    whichever pack it is in now.
    """
    # a run that wrote a summary is done, even a failed one (e.g. a defective teacher that
    # missed its band): rerunning it would fail the same way
    todo = [r for r in runs if exp.summary(r.run_id) is None]
    for run in todo:  # a failure recorded from here on is this session's
        exp.run(run.run_id).clear_failure()
    slots = job.resources.max_concurrent_trials
    packs = pack_runs(todo, runs_per_trial(job, data), slots)
    searching = bool(exp.plan().searches)  # a search adds runs as it goes
    if not packs and (not searching or searches_settled(exp)):  # nothing left: no Tune folder
        return [outcome(exp, run, None, {}) for run in runs]
    ledger = start_ledger(
        *ledger_packs(packs), str(exp.root), max_concurrent=slots,
        runs_per_fit=runs_per_fit(job, data),
        searching=searching, full_epochs=job.train.epochs,
    )  # fmt: skip
    queue = RunQueue(
        ledger,
        packs,
        trial_config=lambda pack, trial_id: {
            "trial": trial_config(exp, job, data, pack, trial_id, ledger.actor)
        },
        on_start=lambda: close_ledger_on_interrupt(ledger),
        planned=lambda: exp.plan().runs,
        max_concurrent=slots,
    )
    waiting = ResourceWait(
        job.faults.resource_wait_s, str(exp.root), on_stop=lambda: ledger.actor.close.remote()
    )
    try:
        results = _tuner(exp, job, queue, waiting, -1 if searching else len(packs)).fit()
        if waiting.message is not None:
            raise ResourceError(waiting.message)
        given = ledger.given()
        errors = {
            run_id: r.error
            for r in results
            if r.config
            for run_id in given.get(r.config["trial"].pack_id, ())
        }
        blocked = queue.blocked()
    finally:
        ray.kill(ledger.actor)
    runs = list(exp.plan().runs.values()) if searching else runs  # with the search's runs
    return [outcome(exp, run, errors.get(run.run_id), blocked) for run in runs]


def _tuner(exp: Experiment, job: Job, queue: RunQueue, waiting: ResourceWait, packs: int):
    return tune.Tuner(
        tune.with_resources(run_trial, driver_resources()),
        tune_config=tune.TuneConfig(
            search_alg=queue,
            num_samples=packs,
            max_concurrent_trials=job.resources.max_concurrent_trials,  # see RunQueue
            # a finished trial's driver process (kdray.grid.tune imported) starts the next one
            reuse_actors=True,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name=time.strftime("%Y%m%d-%H%M%S"),
            storage_path=str(exp.tune_dir),
            failure_config=tune.FailureConfig(max_failures=job.faults.trial_retries),
            stop=waiting,
            verbose=0,
        ),
    )


def trial_config(
    exp: Experiment, job: Job, data: DataInfo, pack: Pack, trial_id: str = "", ledger=None
) -> TrialConfig:
    """What a pack's trial trains; each run's earlier starts, so this session retries it anew;
    where it asks for more (`ledger`, an actor handle, None: the pack alone)."""
    earlier = {r.run_id: exp.run(r.run_id).attempts() for r in pack.runs}
    return TrialConfig(exp.root, job, data, pack.runs, earlier, pack_id=trial_id, ledger=ledger)


def outcome(
    exp: Experiment, run: RunSpec, error: BaseException | None, blocked: dict[str, str]
) -> TrialOutcome:
    """How the run ended this session: its summary; the failure its worker recorded; its
    trial's error; or never started because a teacher failed. Neither: the grid was cut short."""
    summary = exp.summary(run.run_id)
    if summary is not None:
        return TrialOutcome(run.run_id, summary["status"], summary.get("error"))
    folder = exp.run(run.run_id)
    if run.run_id in blocked:
        teacher = blocked[run.run_id]
        reason = _teacher_error(exp, teacher)
        message = f"not started: its teacher run {teacher} failed" + (
            f" ({reason})" if reason else ""
        )
    elif error is not None:
        message = _short_error(error)
    elif (recorded := folder.failure()) is not None:
        return TrialOutcome(run.run_id, "failed", recorded)
    else:
        raise GridInterrupted(f"run {run.run_id} neither finished nor failed")
    folder.record_failure(message)
    return TrialOutcome(run.run_id, "failed", message)


def _teacher_error(exp: Experiment, run_id: str) -> str | None:
    summary = exp.summary(run_id)
    if summary is not None:
        return summary.get("error")
    return exp.run(run_id).failure()


def _trial_name(trial) -> str:
    return trial.config["trial"].name


def _short_error(error: BaseException | None) -> str:
    if error is None:
        return "unknown error"
    text = str(error).strip().splitlines()
    return (text[-1] if text else type(error).__name__)[:500]
