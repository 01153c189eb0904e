"""The Ray Train worker loop: train one model (with or without a teacher), evaluate, checkpoint.

`train_loop(config)` is an ordinary function of a config dict; the Ray-specific points are
`ray.train.get_context`, `prepare_model`/`prepare_data_loader`, `get_checkpoint` and `report`.
Rank 0 also writes the run's own files into its run folder (`epochs.jsonl`, `model.pt`,
`summary.json`), which the results tables are built from.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from kdray import soft_labels
from kdray.atomic import atomic_write, write_json
from kdray.data import DATA_KINDS
from kdray.data.cache import DataInfo, load_groups, load_split
from kdray.job import Job
from kdray.metrics import classification_metrics, classification_report, study_metrics
from kdray.models import count_params, create_model, load_model, save_model
from kdray.plan import RunSpec
from kdray.strategies import get_strategy
from kdray.tracking import Tracker
from kdray.train_data import train_batches

STATE_FILE = "state.pt"


def to_tensor(images: np.ndarray, mean, std, device) -> torch.Tensor:
    """A batch of uint8 (N, H, W, C) images as a normalised float (N, C, H, W) tensor."""
    x = torch.from_numpy(np.array(images)).to(device).permute(0, 3, 1, 2).float()
    m = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=device).view(1, -1, 1, 1)
    return (x / 255 - m) / s


def world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def predict(model, images: np.ndarray, mean, std, device, batch_size: int) -> np.ndarray:
    """Softmax probabilities over the whole split; ranks share the work and gather the result."""
    rank, size = world()
    shard = np.array_split(np.arange(len(images)), size)[rank]
    was_training = model.training
    model.eval()
    probs = []
    for start in range(0, len(shard), batch_size):
        idx = shard[start : start + batch_size]
        logits = model(to_tensor(images[idx[0] : idx[-1] + 1], mean, std, device))
        probs.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    model.train(was_training)
    local = np.concatenate(probs) if probs else np.zeros((0, 0), np.float32)
    if size == 1:
        return local
    parts: list = [None] * size
    dist.all_gather_object(parts, local)
    return np.concatenate([p for p in parts if len(p)])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _build_optimizer(job: Job, params):
    t = job.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=t.lr, weight_decay=t.weight_decay)


def _device(job: Job) -> torch.device:
    if job.resources.device == "cpu":
        return torch.device("cpu")
    return ray.train.torch.get_device()


def train_loop(config: dict) -> None:
    """Ray Train `train_loop_per_worker`. `config`: job, run (RunSpec), data (DataInfo), paths."""
    started = config.get("entered_at") or time.time()
    job = Job.model_validate(config["job"])
    spec = RunSpec.from_dict(config["run"])
    info = DataInfo(**config["data"])
    run_dir = Path(config["run_dir"])
    rank, world_size = (
        ray.train.get_context().get_world_rank(),
        ray.train.get_context().get_world_size(),
    )
    device = _device(job)
    torch.set_num_threads(job.resources.torch_threads or max(1, int(job.resources.cpus_per_worker)))

    _seed_everything(spec.seed)
    model = create_model(
        spec.model, info.num_classes, info.channels, job.pretrained.get(spec.model)
    )
    params = count_params(model)
    if job.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model, move_to_device=device)
    core = model.module if hasattr(model, "module") else model

    d = job.distill
    strategy = get_strategy(spec.strategy)(d.temperature, d.alpha, d.kl_reduction)
    use_cache = job.distill.teacher_outputs == "cached"
    teacher, cached_logits = None, None
    if spec.teacher_run:
        teacher_dir = Path(config["teacher_dir"])
        if use_cache:
            cached_logits = soft_labels.load(
                teacher_dir, soft_labels.cache_key(job, spec.seed, info)
            )
        if cached_logits is None:  # online: the teacher runs on every batch
            teacher, teacher_meta = load_model(teacher_dir / "model.pt", device)
            for p in teacher.parameters():
                p.requires_grad_(False)
    teacher_mean = teacher_meta["mean"] if teacher is not None else info.mean
    teacher_std = teacher_meta["std"] if teacher is not None else info.std

    train_images, train_labels = load_split(info.path, "train")
    valid_images, valid_labels = load_split(info.path, "valid")
    batches = train_batches(
        train_images,
        train_labels,
        job.train.augment,
        info.mean,
        info.std,
        job.train.batch_size,
        spec.seed,
        rank,
        world_size,  # our own data-parallel sampler, so the teacher can replay every rank
        prefetch=job.train.prefetch_batches,
        pin_memory=device.type == "cuda",
    )
    steps_per_epoch = len(batches)

    optimizer = _build_optimizer(job, model.parameters())
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=job.train.epochs * steps_per_epoch
        )
        if job.train.scheduler == "cosine"
        else None
    )
    eval_every = spec.eval_every_steps or max(1, math.ceil(steps_per_epoch / 10))
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(job.train.precision)

    def autocast():
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=amp_dtype)

    scaler = torch.amp.GradScaler(device.type, enabled=job.train.precision == "fp16")

    start_epoch, history, band_hit, restored_from = 0, [], None, None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / STATE_FILE, map_location=device, weights_only=True)
        core.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch, history = state["epoch"], state["history"]
        restored_from = start_epoch

    def val_accuracy() -> float:
        probs = predict(model, valid_images, info.mean, info.std, device, job.train.eval_batch_size)
        return float((probs.argmax(1) == valid_labels).mean())

    tracker = Tracker.start(job, spec, run_dir) if rank == 0 else Tracker()
    first_step_s = None
    error = None
    for epoch in range(start_epoch, job.train.epochs):
        model.train()
        epoch_start = time.time()
        totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, seen
        position = 0  # in this rank's draw of the epoch: where its cached soft labels are
        for step, (x, y, _) in enumerate(batches.epoch(epoch), start=1):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if job.train.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if step == 2:
                _crash_once_if_asked(spec.run_id, epoch + 1)
            if first_step_s is None:
                first_step_s = time.time() - started
            teacher_logits = None
            position += len(y)
            if cached_logits is not None:
                rows = cached_logits[epoch, rank, position - len(y) : position]
                teacher_logits = torch.from_numpy(rows.astype(np.float32)).to(device)
            elif teacher is not None:
                with torch.no_grad():
                    xt = (
                        x
                        if teacher_mean == info.mean
                        else _renormalise(x, info, teacher_mean, teacher_std)
                    )
                    with autocast():
                        teacher_logits = teacher(xt)
            with autocast():
                logits = model(x)
                losses = strategy.loss(logits, y, teacher_logits)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(losses["loss"]).backward()
            scaler.step(optimizer)
            scaler.update()
            if scheduler is not None:
                scheduler.step()
            with torch.no_grad():  # accumulate on the device: no host sync per step
                totals[0] += losses["loss"].detach().double() * len(y)
                totals[1] += (logits.argmax(1) == y).sum()
                totals[2] += len(y)
            if spec.band is not None and step % eval_every == 0:
                acc = val_accuracy()
                if acc > spec.band[1] and band_hit is None:
                    error = (
                        f"defective teacher {spec.model} jumped past its band {list(spec.band)}: "
                        f"val acc {acc:.3f} at epoch {epoch + step / steps_per_epoch:.2f}; "
                        "set a smaller studies.<name>.eval_every_steps, a lower lr, or a wider band"
                    )
                    break
                if spec.band[0] <= acc <= spec.band[1]:
                    band_hit = {"val_acc": acc, "epoch": epoch + step / steps_per_epoch}
                    break
        if world_size > 1:
            dist.all_reduce(totals)
        val = val_accuracy()
        row = {
            "epoch": epoch + 1,
            "train_loss": totals[0].item() / max(totals[2].item(), 1),
            "train_acc": totals[1].item() / max(totals[2].item(), 1),
            "val_acc": val,
            "lr": optimizer.param_groups[0]["lr"],
            "epoch_s": time.time() - epoch_start,
        }
        history.append(row)
        stop = band_hit is not None or error is not None
        _report(row, core, optimizer, scheduler, epoch + 1, history, rank)
        if rank == 0:
            _write_history(run_dir, history)
            tracker.log(row)
        if stop:
            break
    if spec.band is not None and band_hit is None and error is None:
        best = max(h["val_acc"] for h in history)
        error = (
            f"defective teacher {spec.model} never reached its band {list(spec.band)} in "
            f"{job.train.epochs} epochs (best val acc {best:.3f}); "
            "raise train.epochs or lower the band"
        )

    summary = {
        "run_id": spec.run_id,
        "status": "finished" if error is None else "failed",
        "error": error,
        "epochs": band_hit["epoch"] if band_hit else len(history),
        "params": params,
        "setup_s": first_step_s,
        "train_s": time.time() - started,
        "band_val_acc": band_hit["val_acc"] if band_hit else None,
        "restored_from_epoch": restored_from,
        "teacher_outputs": None
        if not spec.teacher_run
        else ("cached" if cached_logits is not None else "online"),
    }
    summary.update(final_metrics(model, job, info, device))
    if rank == 0:
        _write_history(run_dir, history)
        save_model(
            run_dir / "model.pt",
            core,
            model=spec.model,
            num_classes=info.num_classes,
            in_chans=info.channels,
            classes=info.classes,
            mean=info.mean,
            std=info.std,
            image_size=info.image_size,
        )
        if spec.stage == "teacher" and use_cache and error is None:
            # before summary.json: a teacher counts as finished only with its soft labels
            soft_labels.build(core, job, spec.seed, info, device, run_dir)
        write_json(run_dir / "summary.json", summary)
        tracker.finish(summary)


def final_metrics(model, job: Job, info: DataInfo, device) -> dict:
    """Every split's metrics from the final weights (train without augmentation); for valid
    and test also the per-class report, and study-level metrics when the data has studies."""
    category = getattr(DATA_KINDS[job.data.kind], "group_category", None)
    out: dict = {}
    for split in ("train", "valid", "test"):
        prefix = "val" if split == "valid" else split
        images, labels = load_split(info.path, split)
        probs = predict(model, images, info.mean, info.std, device, job.train.eval_batch_size)
        for key, value in classification_metrics(probs, labels).items():
            out[f"{prefix}_{key}"] = value
        if split == "train":
            continue
        out[f"{prefix}_report"] = classification_report(probs, labels, info.classes)
        groups = load_groups(info.path, split)
        if groups is not None:
            for key, value in study_metrics(probs, labels, groups, category).items():
                out[f"{prefix}_{key}"] = value
    return out


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


def _renormalise(x: torch.Tensor, info: DataInfo, mean, std) -> torch.Tensor:
    """Re-express a batch normalised with the data's mean/std in the teacher's normalisation."""
    dm = torch.tensor(info.mean, device=x.device).view(1, -1, 1, 1)
    ds = torch.tensor(info.std, device=x.device).view(1, -1, 1, 1)
    tm = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    ts = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return (x * ds + dm - tm) / ts


def _report(
    metrics: dict, core, optimizer, scheduler, epoch: int, history: list, rank: int
) -> None:
    """Every rank reports (a collective); rank 0 attaches the epoch's checkpoint."""
    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as folder:
        torch.save(
            {
                "model": core.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "epoch": epoch,
                "history": history,
                "torch_rng": torch.get_rng_state(),
            },
            Path(folder) / STATE_FILE,
        )
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
