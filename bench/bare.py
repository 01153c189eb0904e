"""Bare PyTorch loops: the worker's per-epoch work, without Ray.

Each loop does what `kdray.worker.train_loop` does in an epoch — the same `TrainSet` (with the
job's albumentations pipeline), the same `DataLoader` settings, the same models (`timm` via
`kdray.models.create_model`), optimizer, loss (`kdray.strategies`), per-batch bookkeeping and the
closing validation `predict` — on data held in memory, with `torch.set_num_threads` set to the
job's CPUs per worker. The functions here are meant to run in a fresh process
(`bench.common.in_fresh_process`), so their peak RSS is their own.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from bench.common import peak_rss_mb
from kdray.augment import build_train_augmentation
from kdray.data.cache import DataInfo, load_split
from kdray.job import Job
from kdray.models import create_model, load_model, save_model
from kdray.strategies import get_strategy
from kdray.worker import _build_optimizer, _seed_everything, predict

try:  # the worker's Dataset; it moved to kdray.train_data with the soft-label cache
    from kdray.train_data import TrainSet
except ImportError:
    from kdray.worker import TrainSet


@dataclass
class EpochTiming:
    """One epoch (or its first `max_steps` batches) of the bare loop, in seconds."""

    kd: bool
    images: int
    steps: int
    data_s: float  # inside the DataLoader's next(): indexing, augmentation, collation
    teacher_s: float  # the teacher's forward pass (no grad)
    student_s: float  # student forward, loss, backward, optimizer step, bookkeeping
    train_s: float  # the epoch's batches, first next() to the last step's end
    eval_s: float  # the closing validation predict (0 when skipped)

    @property
    def epoch_s(self) -> float:
        """What the worker records as `epoch_s`: the batches plus the validation pass."""
        return self.train_s + self.eval_s


@dataclass
class Loop:
    """The pieces of one worker loop, built as `train_loop` builds them."""

    job: Job
    info: DataInfo
    model: torch.nn.Module
    teacher: torch.nn.Module | None
    optimizer: torch.optim.Optimizer
    loader: DataLoader
    shuffle_rng: torch.Generator
    augment: object | None
    valid_images: np.ndarray


def build_loop(job: Job, info: DataInfo, student: str, teacher: str | None) -> Loop:
    """Models, optimizer, in-memory data and DataLoader exactly as the worker sets them up."""
    _seed_everything(0)
    model = create_model(student, info.num_classes, info.channels)
    teacher_model = None
    if teacher is not None:
        teacher_model = create_model(teacher, info.num_classes, info.channels).eval()
        for p in teacher_model.parameters():
            p.requires_grad_(False)
    train_images, train_labels = load_split(info.path, "train", mmap=False)
    valid_images, _ = load_split(info.path, "valid", mmap=False)
    augment = build_train_augmentation(job.train.augment, seed=0)
    shuffle_rng = torch.Generator()
    loader = DataLoader(
        TrainSet(train_images, train_labels, augment, info.mean, info.std),
        batch_size=job.train.batch_size,
        shuffle=True,
        generator=shuffle_rng,
        drop_last=len(train_labels) > job.train.batch_size,
    )
    optimizer = _build_optimizer(job, model.parameters())
    return Loop(
        job, info, model, teacher_model, optimizer, loader, shuffle_rng, augment, valid_images
    )


def run_epoch(
    loop: Loop, epoch: int, kd: bool, max_steps: int | None = None, validate: bool = True
) -> EpochTiming:
    """One epoch of the worker's loop body; `kd` runs the teacher on every batch (Hinton loss),
    otherwise the student trains alone (cross-entropy), as its no-KD baseline does."""
    job, model = loop.job, loop.model
    d = job.distill
    strategy = get_strategy("normal" if kd else "none")(d.temperature, d.alpha, d.kl_reduction)
    epoch_seed = epoch  # the worker's (seed * 1000 + rank) * 1000 + epoch with seed 0, rank 0
    loop.shuffle_rng.manual_seed(epoch_seed)
    if loop.augment is not None:
        loop.augment.set_random_seed(epoch_seed)
    model.train()
    totals = torch.zeros(3, dtype=torch.float64)
    data_s = teacher_s = student_s = 0.0
    steps = images = 0
    start = time.perf_counter()
    batches = iter(loop.loader)
    while max_steps is None or steps < max_steps:
        t0 = time.perf_counter()
        try:
            x, y = next(batches)[:2]  # (image, label) or (image, label, index)
        except StopIteration:
            break
        t1 = time.perf_counter()
        teacher_logits = None
        if kd:
            with torch.no_grad():
                teacher_logits = loop.teacher(x)
        t2 = time.perf_counter()
        logits = model(x)
        losses = strategy.loss(logits, y, teacher_logits)
        loop.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        loop.optimizer.step()
        with torch.no_grad():  # the worker's running totals, kept on the device
            totals[0] += losses["loss"].detach().double() * len(y)
            totals[1] += (logits.argmax(1) == y).sum()
            totals[2] += len(y)
        t3 = time.perf_counter()
        data_s, teacher_s, student_s = data_s + t1 - t0, teacher_s + t2 - t1, student_s + t3 - t2
        steps, images = steps + 1, images + len(y)
    totals.tolist()  # the worker reads them once per epoch
    train_s = time.perf_counter() - start
    eval_s = 0.0
    if validate:
        t0 = time.perf_counter()
        info = loop.info
        predict(model, loop.valid_images, info.mean, info.std, "cpu", job.train.eval_batch_size)
        eval_s = time.perf_counter() - t0
    return EpochTiming(kd, images, steps, data_s, teacher_s, student_s, train_s, eval_s)


def interleaved_epochs(
    job_json: dict,
    info_json: dict,
    student: str,
    teacher: str,
    rounds: int,
    modes: tuple[bool, ...] = (True, False),
    max_steps: int | None = None,
    warmup_steps: int | None = None,
    validate: bool = True,
    threads: int | None = None,
) -> dict:
    """KD and no-KD epochs of one student, interleaved (KD, plain, plain, KD, ...) after one
    warm-up epoch of each, so drift on a noisy machine hits both sides alike.

    Returns every epoch's timing plus this process's peak RSS and the checkpoint write cost.
    """
    job = Job.model_validate(job_json)
    info = DataInfo(**info_json)
    threads = threads or max(1, int(job.resources.cpus_per_worker))
    torch.set_num_threads(threads)
    loop = build_loop(job, info, student, teacher)
    epoch = 0
    warmup = []
    for kd in modes:
        warmup.append(run_epoch(loop, epoch, kd, warmup_steps or max_steps, validate))
        epoch += 1
    timed: list[EpochTiming] = []
    for r in range(rounds):
        for kd in modes if r % 2 == 0 else tuple(reversed(modes)):
            timed.append(run_epoch(loop, epoch, kd, max_steps, validate))
            epoch += 1
    return {
        "threads": threads,
        "train_images": len(loop.loader.dataset),
        "warmup": [asdict(e) | {"epoch_s": e.epoch_s} for e in warmup],
        "epochs": [asdict(e) | {"epoch_s": e.epoch_s} for e in timed],
        "checkpoint": checkpoint_write(loop),
        "peak_rss_mb": peak_rss_mb(),
    }


def checkpoint_write(loop: Loop) -> dict:
    """What one per-epoch checkpoint costs the worker: `torch.save` of model + optimizer state
    into a temporary folder (as `_report` does), then Ray's persist, which copies that folder
    into the run's storage (imitated with a copy on the same file system)."""
    state = {
        "model": loop.model.state_dict(),
        "optimizer": loop.optimizer.state_dict(),
        "scheduler": None,
        "epoch": 1,
        "history": [],
        "torch_rng": torch.get_rng_state(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder, storage = Path(tmp) / "ckpt", Path(tmp) / "storage"
        folder.mkdir()
        t0 = time.perf_counter()
        torch.save(state, folder / "state.pt")
        t1 = time.perf_counter()
        shutil.copytree(folder, storage / "checkpoint_0")
        t2 = time.perf_counter()
        size_mb = (folder / "state.pt").stat().st_size / 2**20
    return {"save_s": t1 - t0, "persist_copy_s": t2 - t1, "size_mb": size_mb}


def setup_parts(job_json: dict, info_json: dict, student: str, teacher: str) -> dict:
    """The worker's set-up steps before its first batch, timed one by one in a fresh process
    (torch, timm and kdray already imported): student creation, teacher checkpoint load, data
    load (memory-mapped, as the worker does), and the first batch through the DataLoader."""
    job = Job.model_validate(job_json)
    info = DataInfo(**info_json)
    torch.set_num_threads(max(1, int(job.resources.cpus_per_worker)))
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "model.pt"
        source = create_model(teacher, info.num_classes, info.channels)
        save_model(
            weights,
            source,
            model=teacher,
            num_classes=info.num_classes,
            in_chans=info.channels,
            mean=info.mean,
            std=info.std,
        )
        t0 = time.perf_counter()
        create_model(student, info.num_classes, info.channels)
        t1 = time.perf_counter()
        load_model(weights, "cpu")
        t2 = time.perf_counter()
        train_images, train_labels = load_split(info.path, "train")
        load_split(info.path, "valid")
        t3 = time.perf_counter()
        augment = build_train_augmentation(job.train.augment, seed=0)
        loader = DataLoader(
            TrainSet(train_images, train_labels, augment, info.mean, info.std),
            batch_size=job.train.batch_size,
            shuffle=True,
        )
        next(iter(loader))
        t4 = time.perf_counter()
        out.update(
            create_student_s=t1 - t0,
            load_teacher_s=t2 - t1,
            load_data_s=t3 - t2,
            first_batch_s=t4 - t3,
        )
    return out


def eval_rate(job_json: dict, info_json: dict, model_name: str, threads: int) -> float:
    """Seconds per image of `predict` (the validation / final-metrics pass) for one model."""
    job = Job.model_validate(job_json)
    info = DataInfo(**info_json)
    torch.set_num_threads(threads)
    model = create_model(model_name, info.num_classes, info.channels)
    images, _ = load_split(info.path, "valid", mmap=False)
    predict(model, images[:4], info.mean, info.std, "cpu", job.train.eval_batch_size)  # warm-up
    t0 = time.perf_counter()
    predict(model, images, info.mean, info.std, "cpu", job.train.eval_batch_size)
    return (time.perf_counter() - t0) / len(images)


def thesis_shape(
    job_json: dict,
    info_json: dict,
    student: str,
    teacher: str,
    steps: int,
    threads: int,
    warmup_steps: int = 1,
) -> dict:
    """A few KD and no-KD steps at the thesis job's shape (after one warm-up step each), and
    the student's evaluation rate: the basis of P3's thesis estimate and of P6 at 224 px."""
    result = interleaved_epochs(
        job_json,
        info_json,
        student,
        teacher,
        rounds=1,
        max_steps=steps,
        warmup_steps=warmup_steps,
        validate=False,
        threads=threads,
    )
    result["eval_s_per_image"] = eval_rate(job_json, info_json, student, threads)
    result["peak_rss_mb"] = peak_rss_mb()
    return result
