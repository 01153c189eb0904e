"""The Ray Train worker loop: train one model (with or without teachers), evaluate, checkpoint.

`train_loop(config)` reads top to bottom: set-up (`kdray.train.session.build_session`), restore from
the last checkpoint, one `train_epoch` after another (a defective teacher stops inside its band),
then finishing: final metrics and the run's files. The Ray-specific points are
`ray.train.get_context`, `prepare_model`, `get_checkpoint` and `report`. Rank 0 writes the
run's own files into its run folder (`epochs.jsonl`, `model.pt`, `summary.json`), which the
results tables are built from.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import ray.train
import ray.train.torch
import torch

from kdray.data.cache import DataInfo
from kdray.spec.job import Job
from kdray.spec.plan import RunSpec
from kdray.store.atomic import atomic_write, write_json
from kdray.store.model_file import save_model
from kdray.tracking.tracker import Tracker
from kdray.train import cost, soft_labels
from kdray.train.evaluate import final_metrics
from kdray.train.session import Session, band_stop, build_session, train_epoch

STATE_FILE = "state.pt"


def train_loop(config: dict) -> None:
    """Ray Train `train_loop_per_worker`. `config`: job, run (RunSpec), data (DataInfo), paths."""
    started = config.get("entered_at") or time.time()
    job = Job.model_validate(config["job"])
    spec = RunSpec.from_dict(config["run"])
    run_dir = Path(config["run_dir"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = _device(job)
    torch.set_num_threads(job.resources.torch_threads or max(1, int(job.resources.cpus_per_worker)))
    session = build_session(
        job,
        spec,
        DataInfo(**config["data"]),
        [Path(d) for d in config.get("teacher_dirs") or []],
        device,
        rank,
        world_size,
        prepare=lambda m: ray.train.torch.prepare_model(m, move_to_device=device),
    )
    start_epoch, history = restore(session)
    tracker = Tracker.start(job, spec, run_dir, session.info, history) if rank == 0 else Tracker()
    band = band_stop(session)
    first_step_s = None

    def on_step(step: int) -> None:
        nonlocal first_step_s
        if step == 2:
            _crash_once_if_asked(spec.run_id, epoch + 1)
        if first_step_s is None:
            first_step_s = time.time() - started

    for epoch in range(start_epoch, job.train.epochs):
        row = train_epoch(session, epoch, band, on_step)
        row[session.val_key] = session.val_score()
        history.append(row)
        _report(session, row, epoch + 1, history)
        if rank == 0:
            _write_history(run_dir, history)
            tracker.log(row)
        if band.hit is not None or band.error is not None:
            break
    band.missed(session, history)
    summary = {
        "run_id": spec.run_id,
        "task": session.task.name,
        "primary_metric": session.task.primary,  # what `<split>_score` means in the tables
        "status": "finished" if band.error is None else "failed",
        "error": band.error,
        "epochs": band.hit["epoch"] if band.hit else len(history),
        "params": session.params,
        "setup_s": first_step_s,
        "train_s": time.time() - started,
        "band_val_score": band.hit["score"] if band.hit else None,
        "restored_from_epoch": start_epoch or None,
        "teacher_outputs": session.teachers.kind,
        "replicas_in_sync": replicas_in_sync(session),
    }
    summary.update(final_metrics(session.model, job, session.info, device))
    summary.update(method_model_metrics(session))
    if rank == 0:
        finish(session, run_dir, history, summary)
        tracker.finish(summary)


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
        metrics = final_metrics(model, session.job, session.info, session.device)
        out.update({f"{prefix}_{k}": v for k, v in metrics.items() if k in evaluated})
    return out


def replicas_in_sync(session: Session) -> bool | None:
    """Data-parallel runs: whether every rank ends with the same student and method adapters
    (a per-tensor checksum compared across ranks); None for a single worker."""
    if session.world_size == 1:
        return None
    sums = torch.stack([p.detach().double().sum() for p in session.core.parameters()]).cpu()
    parts: list = [None] * session.world_size
    torch.distributed.all_gather_object(parts, sums)
    return all(torch.equal(parts[0], other) for other in parts[1:])


def restore(session: Session) -> tuple[int, list[dict]]:
    """(first epoch to train, history so far) from the run's last checkpoint, if any: student,
    method adapters, optimizer, scheduler and RNG state."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0, []
    with checkpoint.as_directory() as folder:
        state = torch.load(
            Path(folder) / STATE_FILE, map_location=session.device, weights_only=True
        )
    return load_state(session, state)


def checkpoint_state(session: Session, epoch: int, history: list[dict]) -> dict:
    """What an epoch's checkpoint holds: student and method state (adapters, a mean teacher's
    moving average), optimizer, scheduler, history and the RNG state."""
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


def finish(session: Session, run_dir: Path, history: list[dict], summary: dict) -> None:
    """Rank 0: the run's files. The deployable `model.pt` is the student alone (no adapters),
    and what it costs goes into the summary; a teacher whose students read cached soft labels
    writes them before `summary.json`, so a teacher counts as finished only with its soft
    labels."""
    info, spec = session.info, session.spec
    _write_history(run_dir, history)
    save_model(
        run_dir / "model.pt",
        session.core.student,
        model=spec.model,
        task=info.task,
        num_classes=info.num_classes,
        in_chans=info.channels,
        classes=info.classes,
        mean=info.mean,
        std=info.std,
        image_size=info.image_size,
    )
    summary.update(model_cost(session, run_dir))
    for pool, wanted in ((False, spec.soft_labels), (True, spec.soft_labels_pool)):
        if wanted and summary["error"] is None:
            soft_labels.build(
                session.core.student, session.job, spec.seed, info, session.device, run_dir,
                spec.labels, pool,
            )  # fmt: skip
    write_json(run_dir / "summary.json", summary)


def model_cost(session: Session, run_dir: Path) -> dict:
    """What the deployable student costs (`kdray.train.cost`), measured once per model and data
    shape in the experiment's `costs/` folder; a failure to measure is logged and never fails
    the run."""
    info = session.info
    out = {"weights_mb": (run_dir / "model.pt").stat().st_size / 1e6}
    try:
        measured = cost.measure(
            session.core.student, session.spec.model, info.channels, info.image_size,
            info.num_classes, session.job.train.eval_batch_size, run_dir.parent.parent / "costs",
        )  # fmt: skip
        keys = ("macs", "latency_ms_p50", "latency_ms_p90", "throughput")
        return out | {k: measured[k] for k in keys} | {"cost_device": measured["device"]}
    except Exception as exc:  # a cost is a report, not a result: never lose the run over it
        print(f"kdray: cost of {session.spec.run_id} not measured: {exc!r}", file=sys.stderr)
        return out


def _device(job: Job) -> torch.device:
    if job.resources.device == "cpu":
        return torch.device("cpu")
    return ray.train.torch.get_device()


def _write_history(run_dir: Path, history: list[dict]) -> None:
    """The run's per-epoch rows so far (read by `kdray status` while the run trains)."""
    with atomic_write(run_dir / "epochs.jsonl") as fh:
        fh.writelines(json.dumps(h) + "\n" for h in history)


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
    # Ray Train's controller collects reports by polling; a real crash comes minutes into an
    # epoch, long after the last epoch's checkpoint was registered: wait as long as a poll
    time.sleep(3)
    os._exit(1)


def _report(session: Session, metrics: dict, epoch: int, history: list) -> None:
    """Every rank reports (a collective); rank 0 attaches the epoch's checkpoint."""
    if session.rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as folder:
        torch.save(checkpoint_state(session, epoch, history), Path(folder) / STATE_FILE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
