"""One run, from set-up to its files: what a Ray Train worker does for each run of its pack.

`train_run` reads top to bottom: set-up (`kdray.train.session.build_session`), restore from the
run's last checkpoint (`checkpoint.pt` in its folder), one `train_epoch` after another (a
defective teacher stops inside its band), then finishing: final metrics and the run's files.
It knows nothing of Ray: `kdray.train.worker` hands it the model wrapper (`prepare`) and the
per-epoch `report`. Rank 0 writes the run's files (`kdray.store.run_folder`), which the results
tables are built from.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from kdray.data.cache import DataInfo
from kdray.spec.job import Job
from kdray.spec.plan import RunSpec
from kdray.store.model_file import save_model
from kdray.store.run_folder import RunFolder
from kdray.tracking.tracker import Tracker
from kdray.train import cost, soft_labels
from kdray.train.evaluate import final_metrics
from kdray.train.session import (
    BandStop,
    Session,
    band_stop,
    build_session,
    train_epoch,
    weights_finite,
)
from kdray.train.volume_eval import volume_final_metrics


@dataclass(frozen=True)
class Worker:
    """Where this process trains: its rank among the run's data-parallel workers, its device,
    how the model is wrapped for them (Ray Train's `prepare_model`), how an epoch's metrics
    reach Ray (`report`, a collective: every rank calls it) and, for a searched sample, whether
    it stops after an epoch (`judge(spec, epoch, val score)`, the same answer on every rank)."""

    rank: int
    world_size: int
    device: torch.device
    prepare: Callable[[torch.nn.Module], torch.nn.Module]
    report: Callable[[dict], None]
    judge: Callable[[RunSpec, int, float], bool] = lambda spec, epoch, value: False


def is_sample(spec: RunSpec) -> bool:
    """A searched sample: judged after each epoch, and stopped when its search says so."""
    return any(role.startswith("sample:") for role in spec.roles)


@dataclass
class SampleJudge:
    """Whether a searched sample stops after an epoch (never, for other runs), and how long it
    waited for the answer (its search judges a rung once earlier samples reached it)."""

    worker: Worker
    spec: RunSpec
    wait_s: float = 0.0

    def stops(self, epoch: int, value: float) -> bool:
        if not is_sample(self.spec):
            return False
        asked = time.time()
        stop = self.worker.judge(self.spec, epoch, value)
        self.wait_s += time.time() - asked
        return stop


def train_run(
    job: Job, spec: RunSpec, info: DataInfo, folder: RunFolder, teacher_dirs: list[Path],
    worker: Worker, legacy_checkpoints: Path | None = None, launched_at: float | None = None,
) -> dict:  # fmt: skip
    """Train (or finish training) one run; returns its summary (also in `summary.json`).
    `launched_at`: when the run's turn came (its trial's launch for a pack's first run), what
    its `wall_s` counts from; `setup_s` and `train_s` count from this call."""
    started = time.time()
    launched_at = launched_at or started
    job = job.train_for(spec.train)
    session = build_session(
        job, spec, info, teacher_dirs, worker.device, worker.rank, worker.world_size,
        prepare=worker.prepare,
    )  # fmt: skip
    state = folder.load_checkpoint(worker.device, legacy_checkpoints)
    start_epoch, history = load_state(session, state) if state is not None else (0, [])
    rank0 = worker.rank == 0
    tracker = Tracker.start(job, spec, folder.path, info, history) if rank0 else Tracker()
    band = band_stop(session)
    judge = SampleJudge(worker, spec)
    # a sample resumed from a checkpoint is judged on its last epoch first (idempotent)
    stopped = bool(history) and judge.stops(start_epoch, history[-1][session.val_key])
    first_step_s = None

    def on_step(step: int) -> None:
        nonlocal first_step_s
        if step == 2:
            _crash_once_if_asked(spec.run_id, len(history) + 1)  # the epoch in training
        if first_step_s is None:
            first_step_s = time.time() - started

    failure = None  # why the run cannot go on: its weights stopped being finite
    if not stopped:
        stopped, failure = train_epochs(
            session, worker, folder, tracker, history, start_epoch, band, judge, on_step
        )
    if failure is None:
        band.missed(session, history)
    summary = {
        "run_id": spec.run_id,
        "task": session.task.name,
        "primary_metric": session.task.primary,  # what `<split>_score` means in the tables
        "status": "finished" if band.error is None and failure is None else "failed",
        "error": band.error or failure,
        "epochs": band.hit["epoch"] if band.hit else len(history),
        "params": session.params,
        "setup_s": first_step_s,
        "train_s": time.time() - started,
        "wall_s": time.time() - launched_at,  # with the trial's start-up for a first run
        "band_val_score": band.hit["score"] if band.hit else None,
        "restored_from_epoch": start_epoch or None,
        "teacher_outputs": session.teachers.kind,
        "judge_wait_s": round(judge.wait_s, 3) if is_sample(spec) else None,
        "replicas_in_sync": replicas_in_sync(session),
        "tracking_off": tracker.off or None,  # a backend that failed: the driver says so
    }
    if stopped:
        finish_stopped(session, folder, history, summary, rank0)
    elif failure is not None:
        finish_diverged(folder, history, summary, rank0)
    else:
        summary.update(split_metrics(session.model, job, session.info, worker.device))
        summary.update(method_model_metrics(session))
        if rank0:
            finish(session, folder, history, summary, launched_at)
    if rank0:
        tracker.finish(summary)
    session.close()
    return summary


def train_epochs(
    session: Session, worker: Worker, folder: RunFolder, tracker: Tracker, history: list[dict],
    start_epoch: int, band: BandStop, judge: SampleJudge, on_step: Callable[[int], None],
) -> tuple[bool, str | None]:  # fmt: skip
    """The run's epochs from `start_epoch`, each checkpointed, written and reported. Ends early
    inside (or past) a defective teacher's band, when the weights stop being finite (returns
    `(False, why)`), or when a searched sample's search says so (`(True, None)`)."""
    rank0 = worker.rank == 0
    for epoch in range(start_epoch, session.job.train.epochs):
        row = train_epoch(session, epoch, band, on_step)
        failure = diverged(session, row)
        if failure is None:  # a model of NaN weights has nothing to validate
            row[session.val_key] = session.val_score()
        history.append(row)
        if rank0:  # the checkpoint first: a worker lost after `report` resumes from this epoch
            if failure is None:
                folder.save_checkpoint(checkpoint_state(session, epoch + 1, history))
            folder.write_epochs(history)
            tracker.log(row)
        worker.report(row)
        if failure is not None:
            return False, failure
        if band.hit is not None or band.error is not None:
            break
        if judge.stops(epoch + 1, row[session.val_key]):
            return True, None
    return False, None


def diverged(session: Session, row: dict) -> str | None:
    """Why the run cannot go on, when an epoch left weights or statistics that are not finite
    (a learning rate too high, fp16 overflow); None while they are. Checked once an epoch."""
    if weights_finite(session):
        return None
    train = session.job.train
    also = [f"train.weight_decay (now {train.weight_decay:g})"] if train.weight_decay else []
    if train.precision != "fp32":
        also.append(f"use train.precision fp32 (now {train.precision})")
    return (
        f"training diverged: {session.spec.model}'s weights are no longer finite after epoch "
        f"{row['epoch']} (train loss {row['train_loss']:.4g}); lower train.lr (now "
        f"{train.lr:g})" + "".join(f" or {part}" for part in also) + ". A diverged run is not "
        "retried"
    )


def finish_diverged(folder: RunFolder, history: list[dict], summary: dict, rank0: bool) -> None:
    """A run whose weights stopped being finite: failed with its error, its epochs kept (they
    show where the loss went), nothing evaluated and no model file; its training state
    dropped, since a resume would diverge the same way."""
    if rank0:
        folder.write_epochs(history)
        folder.write_summary(summary)
        folder.drop_checkpoint()


def finish_stopped(
    session: Session, folder: RunFolder, history: list[dict], summary: dict, rank0: bool
) -> None:
    """A sample its search stopped: its last validation score and the epoch it stopped at in
    its summary, nothing measured on test (the test split chooses nothing, and a stopped
    sample is not reported), no model file; its training state dropped."""
    last = history[-1]
    summary.update(status="stopped", stopped_at_epoch=last["epoch"])
    summary[session.val_key] = last[session.val_key]
    if rank0:
        folder.write_epochs(history)
        folder.write_summary(summary)
        folder.drop_checkpoint()


def method_model_metrics(session: Session) -> dict:
    """The accuracy of the models a method trains besides the student (mean teacher's moving
    average), under the method's prefix: `ema_test_acc`, ..."""
    method = session.core.method
    if method is None:
        return {}
    primary = session.task.primary
    evaluated = {f"{split}_{primary}" for split in ("train", "val", "test")}
    evaluated |= {"test_balanced_acc", "test_f1"}
    out = {}
    for prefix, model in method.evaluated_models().items():
        metrics = split_metrics(model, session.job, session.info, session.device)
        out.update({f"{prefix}_{k}": v for k, v in metrics.items() if k in evaluated})
    return out


def split_metrics(model: torch.nn.Module, job: Job, info: DataInfo, device) -> dict:
    """Every split's metrics from the final weights: images (`kdray.train.evaluate`) or
    volumes by sliding window (`kdray.train.volume_eval`)."""
    if info.rank == 3:
        return volume_final_metrics(model, info, device)
    return final_metrics(model, job, info, device)


def replicas_in_sync(session: Session) -> bool | None:
    """Data-parallel runs: whether every rank ends with the same student and method adapters
    (a per-tensor checksum compared across ranks); None for a single worker."""
    if session.world_size == 1:
        return None
    sums = torch.stack([p.detach().double().sum() for p in session.core.parameters()]).cpu()
    parts: list = [None] * session.world_size
    torch.distributed.all_gather_object(parts, sums)
    return all(torch.equal(parts[0], other) for other in parts[1:])


def checkpoint_state(session: Session, epoch: int, history: list[dict]) -> dict:
    """What an epoch's checkpoint holds: student and method state (adapters, a mean teacher's
    moving average), optimizer, scheduler, history, the RNG state, and the next epoch."""
    return {
        "model": session.core.state_dict(),
        "optimizer": session.optimizer.state_dict(),
        "scheduler": session.scheduler.state_dict() if session.scheduler else None,
        "epoch": epoch,
        "history": history,
        "torch_rng": torch.get_rng_state(),
    }


def load_state(session: Session, state: dict) -> tuple[int, list[dict]]:
    """Put a checkpoint's state back into `session`: (first epoch to train, history)."""
    weights = state["model"]
    if not any(k.startswith("student.") for k in weights):  # a checkpoint from before methods
        weights = {f"student.{k}": v for k, v in weights.items()}
    session.core.load_state_dict(weights)
    session.optimizer.load_state_dict(state["optimizer"])
    if session.scheduler is not None and state.get("scheduler"):
        session.scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return state["epoch"], state["history"]


def finish(
    session: Session,
    folder: RunFolder,
    history: list[dict],
    summary: dict,
    launched_at: float | None = None,
) -> None:
    """Rank 0: the run's files. The deployable `model.pt` is the student alone (no adapters),
    and what it costs goes into the summary; a teacher whose students read cached soft labels
    writes them before `summary.json`, so a teacher counts as finished only with its soft
    labels. The training state is dropped once the summary is written. `wall_s` ends with the
    summary: the final evaluation, model file, cost and soft labels are the run's time too."""
    info, spec = session.info, session.spec
    folder.write_epochs(history)
    save_model(
        folder.model_file,
        session.core.student,
        model=spec.model,
        task=info.task,
        num_classes=info.num_classes,
        in_chans=info.channels,
        classes=info.classes,
        mean=info.mean,
        std=info.std,
        image_size=info.image_size,
        rank=info.rank,
        patch=info.patch,
    )
    summary.update(model_cost(session, folder.path))
    for pool, wanted in ((False, spec.soft_labels), (True, spec.soft_labels_pool)):
        if wanted and summary["error"] is None:
            soft_labels.build(
                session.core.student, session.job, spec.seed, info, session.device, folder.path,
                spec.labels, pool,
            )  # fmt: skip
    if launched_at is not None:
        summary["wall_s"] = time.time() - launched_at
    folder.write_summary(summary)
    folder.drop_checkpoint()


def model_cost(session: Session, run_dir: Path) -> dict:
    """What the deployable student costs (`kdray.train.cost`), measured once per model and data
    shape in the experiment's `costs/` folder; a failure to measure is logged and never fails
    the run."""
    info = session.info
    out = {"weights_mb": (run_dir / "model.pt").stat().st_size / 1e6}
    try:
        volumes = info.rank == 3  # a patch per call; a few at once, not an image batch's count
        size = info.spatial if volumes else info.image_size
        batch = (
            min(session.job.train.eval_batch_size, 2)
            if volumes
            else session.job.train.eval_batch_size
        )
        measured = cost.measure(
            session.core.student, session.spec.model, info.channels, size, info.num_classes,
            batch, run_dir.parent.parent / "costs",
        )  # fmt: skip
        keys = ("macs", "latency_ms_p50", "latency_ms_p90", "throughput")
        return out | {k: measured[k] for k in keys} | {"cost_device": measured["device"]}
    except Exception as exc:  # a cost is a report, not a result: never lose the run over it
        print(f"kdray: cost of {session.spec.run_id} not measured: {exc!r}", file=sys.stderr)
        return out


def _crash_once_if_asked(run_id: str, epoch: int) -> None:
    """Fault injection for the fault-tolerance tests: with KDRAY_TEST_CRASH_EPOCH=N and
    KDRAY_TEST_CRASH_DIR=<dir>, the worker process dies in epoch N, once per run."""
    crash_epoch = os.environ.get("KDRAY_TEST_CRASH_EPOCH")
    crash_dir = os.environ.get("KDRAY_TEST_CRASH_DIR")
    if not crash_epoch or not crash_dir or int(crash_epoch) != epoch:
        return
    marker = Path(crash_dir) / run_id
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(str(epoch))
    os._exit(1)
