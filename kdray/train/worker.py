"""The Ray Train worker: train a trial's pack of runs, one after another, in one process.

A trial is a *pack*: one or more runs of the grid that share a stage and their teachers
(`kdray.grid.packing`), then whatever ready runs the grid's ledger gives it (`runs_to_train`).
The worker process pays Ray Train's start-up once and trains each run in turn
(`kdray.train.run_loop.train_run`), each in its own run folder with its own checkpoint, summary
and tracking run. A run that finished (or failed with a summary) in an
earlier attempt is skipped, so a pack restarted by Ray Train after a lost worker, or retried by
Tune, or resumed by `kdray resume` in another pack, trains only what is left, each run from its
own last checkpoint. A run that raises fails alone (its summary says why) and the pack goes on;
one that killed its worker more often than `faults.trial_retries` allows is failed the same way.
Such a failure is recorded in the run's `failure.json`, not its summary, so `kdray resume`
retries it.

The Ray-specific points are here: `ray.train.get_context`, `prepare_model`, `report`.
"""

from __future__ import annotations

import gc
import time
import traceback

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from kdray.spec.job import Job
from kdray.spec.plan import RunSpec
from kdray.store.experiment import Experiment
from kdray.train.more_runs import judge_epoch, runs_to_train
from kdray.train.run_loop import Worker, train_run
from kdray.train.trial import TrialConfig


def train_pack(config: dict) -> None:
    """Ray Train `train_loop_per_worker`: `config["trial"]` is a `TrialConfig`."""
    trial: TrialConfig = config["trial"]
    job, exp = trial.job, Experiment(trial.experiment)
    context = ray.train.get_context()
    device = _device(job)
    torch.set_num_threads(job.resources.torch_threads or max(1, int(job.resources.cpus_per_worker)))
    rank, world_size = context.get_world_rank(), context.get_world_size()

    def judge(spec: RunSpec, epoch: int, value: float) -> bool:
        stop = rank == 0 and judge_epoch(trial, spec.run_id, epoch, value)
        return bool(_agreed_on(stop, world_size))

    worker = Worker(
        rank,
        world_size,
        device,
        prepare=lambda m: ray.train.torch.prepare_model(m, move_to_device=device),
        report=lambda metrics: ray.train.report(metrics),
        judge=judge,
    )
    launched = trial.launched_at  # the first run trained carries the fit's start-up
    # What lives before the first run (torch, timm and Ray: ~540k objects) is kept out of the
    # pack's garbage collections: a run's closing `gc.collect` (`Session.close`) and Python's
    # own full collections took ~0.25 s each scanning it, between runs and inside them. Put
    # back after the pack, for a process that goes on (Ray Train's local mode, in tests).
    gc.freeze()
    try:
        for spec, earlier in runs_to_train(trial):
            if exp.summary(spec.run_id) is None:
                train_one(trial, exp, spec, worker, launched or time.time(), earlier)
                launched = 0.0
    finally:
        gc.unfreeze()


def train_one(
    trial: TrialConfig,
    exp: Experiment,
    spec: RunSpec,
    worker: Worker,
    started: float,
    earlier: int = 0,
) -> None:
    """One run of the pack, its failures its own (a single worker: an exception fails the run;
    under DDP it stops the worker group, as ranks must not part ways inside collectives)."""
    folder = exp.run(spec.run_id)
    attempts = _agreed(worker, folder.attempts()) + 1 - earlier
    limit = trial.job.faults.trial_retries + 1
    if worker.rank == 0:
        folder.start_attempt()
        folder.clear_failure()
    if attempts > limit:
        if worker.rank == 0:
            folder.record_failure(f"its worker died while training it {attempts - 1} times")
        return
    teacher_dirs = [exp.run_dir(t) for t in spec.teacher_runs]
    try:
        train_run(trial.job, spec, trial.data, folder, teacher_dirs, worker, exp.train_dir, started)
    except Exception as exc:
        if worker.world_size > 1:
            raise
        traceback.print_exc()
        folder.record_failure(_one_line(exc))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}".rstrip(": ")[:500]


def _agreed(worker: Worker, value: int) -> int:
    """Rank 0's `value` on every rank (they read files that rank 0 is about to change)."""
    return _agreed_on(value, worker.world_size)


def _agreed_on(value, world_size: int):
    if world_size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _device(job: Job) -> torch.device:
    if job.resources.device == "cpu":
        return torch.device("cpu")
    return ray.train.torch.get_device()
