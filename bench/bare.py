"""Bare PyTorch loops: the worker's per-epoch work, without Ray.

Each loop does what `kdray.worker.train_loop` does in an epoch — the same reproducible batches
(`kdray.train_data.train_batches`: the job's albumentations pipeline, per-epoch reseeded shuffle
and augmentation, `(x, y, index)` batches), the same models (`timm` via
`kdray.models.create_model`), optimizer, loss (`kdray.strategies`), autocast/GradScaler/scheduler
steps, per-batch bookkeeping and the closing validation `predict` — on data held in memory, with
`torch.set_num_threads` set to the job's torch threads. A KD epoch gets its teacher's logits in
one of the worker's two ways (`distill.teacher_outputs`): `online`, the teacher's forward pass on
every batch, or `cached`, rows of the soft-label cache (`kdray.soft_labels`, built once for the
bare teacher before the timed epochs) looked up by the batch's sample indices. The functions here
are meant to run in a fresh process (`bench.common.in_fresh_process`), so their peak RSS is their
own.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from bench.common import peak_rss_mb
from kdray import soft_labels
from kdray.data.cache import DataInfo, load_split
from kdray.job import Job
from kdray.models import create_model, load_model, save_model
from kdray.strategies import get_strategy
from kdray.train_data import TrainBatches, train_batches
from kdray.worker import _build_optimizer, _seed_everything, predict

PLAIN, ONLINE, CACHED = "plain", "online", "cached"
# the order of one round of timed epochs; the next round runs it backwards
MODES = (CACHED, PLAIN, ONLINE)
SEED = 0  # the run's seed (spec.seed); rank 0


@dataclass
class EpochTiming:
    """One epoch (or its first `max_steps` batches) of the bare loop, in seconds."""

    mode: str  # "plain" (no KD), "online" (teacher on every batch) or "cached" (soft labels)
    images: int
    steps: int
    data_s: float  # inside the loader's next() + the batch's device transfer
    teacher_s: float  # online: the teacher's forward (no grad); cached: reading the logits
    student_s: float  # student forward, loss, backward, optimizer step, bookkeeping
    train_s: float  # the epoch's batches, first next() to the last step's end
    eval_s: float  # the closing validation predict (0 when skipped)

    @property
    def kd(self) -> bool:
        return self.mode != PLAIN

    @property
    def epoch_s(self) -> float:
        """What the worker records as `epoch_s`: the batches plus the validation pass."""
        return self.train_s + self.eval_s

    def to_json(self) -> dict:
        return asdict(self) | {"kd": self.kd, "epoch_s": self.epoch_s}


@dataclass
class Loop:
    """The pieces of one worker loop, built as `train_loop` builds them."""

    job: Job
    info: DataInfo
    device: torch.device
    model: torch.nn.Module
    teacher: torch.nn.Module | None
    optimizer: torch.optim.Optimizer
    scheduler: object | None
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    batches: TrainBatches
    valid_images: np.ndarray
    valid_labels: np.ndarray
    cached_logits: np.ndarray | None = None  # soft_labels.load(): memory-mapped float16
    cache: dict = field(default_factory=dict)  # how the cache was built: seconds, MB, epochs
    val_acc: float | None = None  # the last validation's accuracy

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)


def build_loop(job: Job, info: DataInfo, student: str, teacher: str | None) -> Loop:
    """Models, optimizer, in-memory data and batches exactly as the worker sets them up."""
    device = torch.device("cpu")
    _seed_everything(SEED)
    model = create_model(student, info.num_classes, info.channels)
    if job.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = model.to(device)
    teacher_model = None
    if teacher is not None:  # load_model gives the worker's teacher in eval mode
        teacher_model = create_model(teacher, info.num_classes, info.channels).to(device).eval()
        for p in teacher_model.parameters():
            p.requires_grad_(False)
    train_images, train_labels = load_split(info.path, "train", mmap=False)
    valid_images, valid_labels = load_split(info.path, "valid", mmap=False)
    t = job.train
    batches = train_batches(
        train_images,
        train_labels,
        t.augment,
        info.mean,
        info.std,
        t.batch_size,
        SEED,
        prefetch=t.prefetch_batches,
    )
    optimizer = _build_optimizer(job, model.parameters())
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t.epochs * len(batches))
        if t.scheduler == "cosine"
        else None
    )
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=t.precision == "fp16")
    return Loop(
        job,
        info,
        device,
        model,
        teacher_model,
        optimizer,
        scheduler,
        scaler,
        amp_dtype,
        batches,
        valid_images,
        valid_labels,
    )


def build_cache(loop: Loop, epochs: int, folder: Path) -> None:
    """The bare teacher's soft-label cache for `epochs` epochs of the loop's batches, built as a
    teacher trial builds it (`soft_labels.build` into `folder`) and opened as a KD student opens
    it (`soft_labels.load`: memory-mapped); the build is timed, outside every timed epoch."""
    job = loop.job.model_copy(
        update={"train": loop.job.train.model_copy(update={"epochs": epochs})}
    )
    t0 = time.perf_counter()
    path = soft_labels.build(loop.teacher, job, SEED, loop.info, loop.device, folder)
    build_s = time.perf_counter() - t0
    loop.cached_logits = soft_labels.load(folder, soft_labels.cache_key(job, SEED, loop.info))
    if loop.cached_logits is None:
        raise RuntimeError(f"soft labels in {folder} do not match the key they were built for")
    mb = path.stat().st_size / 2**20
    job_epochs = loop.job.train.epochs
    loop.cache = {
        "epochs": epochs,
        "build_s": build_s,
        "mb": mb,
        # scaled to the job's own epochs: what a teacher trial of this job builds and writes
        "job_epochs": job_epochs,
        "job_build_s": build_s / epochs * job_epochs,
        "job_mb": mb / epochs * job_epochs,
    }


def run_epoch(
    loop: Loop, epoch: int, mode: str, max_steps: int | None = None, validate: bool = True
) -> EpochTiming:
    """One epoch of the worker's loop body. `plain`: the student alone (cross-entropy), as its
    no-KD baseline trains; `online` / `cached`: the Hinton loss with the teacher's logits from
    its forward pass on the batch / from the soft-label cache at (epoch, rank 0, position)."""
    job, model, device = loop.job, loop.model, loop.device
    d = job.distill
    strategy = get_strategy("none" if mode == PLAIN else "normal")(
        d.temperature, d.alpha, d.kl_reduction
    )
    if mode == CACHED and loop.cached_logits is None:
        raise ValueError("cached mode needs build_cache() first")
    model.train()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, seen
    data_s = teacher_s = student_s = 0.0
    steps = images = 0
    start = time.perf_counter()
    batches = loop.batches.epoch(epoch)  # a generator (the worker's prefetch thread)
    while max_steps is None or steps < max_steps:
        t0 = time.perf_counter()
        try:
            x, y, _ = next(batches)
        except StopIteration:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)  # as the worker
        if job.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        t1 = time.perf_counter()
        teacher_logits = None
        if mode == CACHED:
            rows = loop.cached_logits[epoch, 0, images : images + len(y)]  # rank 0, as the worker
            teacher_logits = torch.from_numpy(rows.astype(np.float32)).to(device)
        elif mode == ONLINE:
            with torch.no_grad(), loop.autocast():
                teacher_logits = loop.teacher(x)
        t2 = time.perf_counter()
        with loop.autocast():
            logits = model(x)
            losses = strategy.loss(logits, y, teacher_logits)
        loop.optimizer.zero_grad(set_to_none=True)
        loop.scaler.scale(losses["loss"]).backward()
        loop.scaler.step(loop.optimizer)
        loop.scaler.update()
        if loop.scheduler is not None:
            loop.scheduler.step()
        with torch.no_grad():  # the worker's running totals, kept on the device
            totals[0] += losses["loss"].detach().double() * len(y)
            totals[1] += (logits.argmax(1) == y).sum()
            totals[2] += len(y)
        t3 = time.perf_counter()
        data_s, teacher_s, student_s = data_s + t1 - t0, teacher_s + t2 - t1, student_s + t3 - t2
        steps, images = steps + 1, images + len(y)
    batches.close()  # stops the prefetch thread of an epoch cut short by max_steps
    totals.tolist()  # the worker reads them once per epoch, for the epoch's row
    train_s = time.perf_counter() - start
    eval_s = 0.0
    if validate:  # the worker's val_accuracy()
        t0 = time.perf_counter()
        info = loop.info
        probs = predict(
            model, loop.valid_images, info.mean, info.std, device, job.train.eval_batch_size
        )
        loop.val_acc = float((probs.argmax(1) == loop.valid_labels).mean())
        eval_s = time.perf_counter() - t0
    return EpochTiming(mode, images, steps, data_s, teacher_s, student_s, train_s, eval_s)


def interleaved_epochs(
    job_json: dict,
    info_json: dict,
    student: str,
    teacher: str,
    rounds: int,
    modes: tuple[str, ...] = MODES,
    max_steps: int | None = None,
    warmup_steps: int | None = None,
    validate: bool = True,
    threads: int | None = None,
) -> dict:
    """Epochs of one student in each of `modes`, interleaved (cached, plain, online, online,
    plain, cached, ...) after one warm-up epoch of each, so drift on a noisy machine hits every
    side alike. With `cached` among the modes, the soft-label cache for every epoch the loop
    runs is built first (timed, in a temporary folder).

    Returns every epoch's timing plus the cache's build, this process's peak RSS and the
    checkpoint write cost.
    """
    job = Job.model_validate(job_json)
    info = DataInfo(**info_json)
    threads = threads or job.resources.torch_threads or max(1, int(job.resources.cpus_per_worker))
    torch.set_num_threads(threads)
    loop = build_loop(job, info, student, teacher)
    with tempfile.TemporaryDirectory(prefix="bench-soft-labels-") as tmp:
        if CACHED in modes:
            build_cache(loop, len(modes) * (1 + rounds), Path(tmp))
        epoch = 0
        warmup = []
        for mode in modes:
            warmup.append(run_epoch(loop, epoch, mode, warmup_steps or max_steps, validate))
            epoch += 1
        timed: list[EpochTiming] = []
        for r in range(rounds):
            for mode in modes if r % 2 == 0 else tuple(reversed(modes)):
                timed.append(run_epoch(loop, epoch, mode, max_steps, validate))
                epoch += 1
        loop.cached_logits = None  # release the memory map before the folder goes
    return {
        "threads": threads,
        "train_images": len(loop.batches.loader.dataset),
        "warmup": [e.to_json() for e in warmup],
        "epochs": [e.to_json() for e in timed],
        "cache": loop.cache,
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
    load (memory-mapped, as the worker does), and the first batch (`kdray.train_data`)."""
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
        t = job.train
        batches = train_batches(
            train_images, train_labels, t.augment, info.mean, info.std, t.batch_size, SEED
        )
        next(iter(batches.epoch(0)))
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
    """A few online-KD and no-KD steps at the thesis job's shape (after one warm-up step each),
    and the student's evaluation rate: the basis of P3's thesis estimate and of P6 at 224 px.
    (No cached mode here: its cache would cost a full teacher pass over the images per epoch.)"""
    result = interleaved_epochs(
        job_json,
        info_json,
        student,
        teacher,
        rounds=1,
        modes=(ONLINE, PLAIN),
        max_steps=steps,
        warmup_steps=warmup_steps,
        validate=False,
        threads=threads,
    )
    result["eval_s_per_image"] = eval_rate(job_json, info_json, student, threads)
    result["peak_rss_mb"] = peak_rss_mb()
    return result
