"""The pieces of a training run a reader can name: the session (student, method, teachers,
optimizer, batches), one training epoch, and the defective-band stop.

`kdray.train.run_loop.train_run` strings them together inside Ray Train; the benchmarks call the
same pieces in a bare loop.
"""

from __future__ import annotations

import contextlib
import gc
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from kdray.data.budgets import class_counts, training_arrays
from kdray.data.cache import DataInfo, load_split
from kdray.data.volume_cache import load_volumes
from kdray.methods import Shapes, get_method
from kdray.methods.features import aligned_pairs
from kdray.spec.job import Job
from kdray.spec.plan import PLAIN, RunSpec
from kdray.tasks import Task, get_task
from kdray.tasks.models import count_params
from kdray.tasks.weights import LocalWeights, require
from kdray.train.batches import TrainBatches, train_batches
from kdray.train.distiller import Distiller, stage_channels, stage_count
from kdray.train.evaluate import predict
from kdray.train.patches import VolumeBatches, volume_batches
from kdray.train.teachers import (
    CachedTeachers,
    NoTeacher,
    OnlineTeachers,
    load_cached,
    load_teachers,
)
from kdray.train.volume_eval import volume_score


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_optimizer(job: Job, params) -> torch.optim.Optimizer:
    """The job's optimizer over `params` (already on the training device), fused where the
    device has fused kernels: one kernel over all tensors instead of a loop of small ops per
    tensor, which on a CPU core is most of an Adam step (seresnet18: 47 ms -> 9 ms a step, a
    third of the step's time at the quickstart's 24 px)."""
    t = job.train
    params = list(params)
    fused = fused_kernels_for(params)
    if t.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay, fused=fused
        )
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=t.lr, weight_decay=t.weight_decay, fused=fused)


def fused_kernels_for(params: list[torch.Tensor]) -> bool | None:
    """True where every parameter is a floating-point tensor on a device with torch's fused
    optimizer kernels (CPU, CUDA, ...); None (torch's own choice) otherwise."""
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices

        devices = set(_get_fused_kernels_supported_devices())
    except ImportError:  # a private helper of torch's: the two devices it has always listed
        devices = {"cpu", "cuda"}
    ok = params and all(p.is_floating_point() and p.device.type in devices for p in params)
    return True if ok else None


def autocast_for(job: Job, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(job.train.precision)

    def autocast():
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=dtype)

    return autocast


@dataclass
class Session:
    """Everything one worker trains with. `model` is what trains (DDP-wrapped when there are
    several workers); `core` the unwrapped `Distiller` (student + method), what checkpoints
    hold; `core.student` the deployable network."""

    job: Job
    spec: RunSpec
    info: DataInfo
    task: Task
    device: torch.device
    rank: int
    world_size: int
    model: torch.nn.Module
    core: Distiller
    teachers: NoTeacher | CachedTeachers | OnlineTeachers
    batches: TrainBatches | VolumeBatches
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    autocast: Callable[[], contextlib.AbstractContextManager]
    scaler: torch.amp.GradScaler
    params: int
    valid: tuple[np.ndarray, np.ndarray] = field(repr=False, default=None)

    def close(self) -> None:
        """Release what outlives a run in a worker that trains the next run of its pack: loader
        worker processes (a persistent DataLoader keeps them while its iterator lives)."""
        loader = getattr(self.batches, "loader", None)  # volume batches have none
        if loader is not None:
            loader._iterator = None  # torch shuts the pool down with its iterator
        self.teachers = self.model = self.core = self.optimizer = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @property
    def val_key(self) -> str:
        """The history's validation column: `val_<primary metric>` (`val_acc`, `val_auroc`)."""
        return f"val_{self.task.primary}"

    def val_score(self) -> float:
        """The task's primary metric on the validation split (the model in eval mode)."""
        if self.info.rank == 3:
            return volume_score(self.model, self.valid, self.info, self.device)
        images, labels = self.valid
        probs = predict(
            self.model,
            images,
            self.info.mean,
            self.info.std,
            self.device,
            self.job.train.eval_batch_size,
            self.task,
        )
        return self.task.primary_score(probs, labels, self.info.num_classes)


def build_session(
    job: Job,
    spec: RunSpec,
    info: DataInfo,
    teacher_dirs: list[Path],
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    prepare: Callable | None = None,
) -> Session:
    """Seeded student, its teachers (cached logits or networks), method, data and optimizer.
    `prepare` wraps the module for the workers (Ray Train's `prepare_model`)."""
    seed_everything(spec.seed)
    task = get_task(info.task)
    weights = run_weights(job, spec)
    student = task.create_model(
        spec.model, info.num_classes, info.channels, weights, info.rank, info.image_size
    )
    params = count_params(student)
    autocast = autocast_for(job, device)
    teachers = open_teachers(job, spec, info, teacher_dirs, device, autocast)
    counts = class_counts(info, spec.labels, spec.seed)
    core = _distiller(job, spec, info, task, student, teachers, counts)
    if job.train.channels_last:
        core = core.to(memory_format=torch.channels_last)
    prepare = prepare or (lambda m: m.to(device))
    model = prepare(core)
    if info.rank == 3:  # volumes: seeded patches, validated whole by sliding window
        batches = volume_batches(load_volumes(info.path, "train"), job, spec.seed, rank, world_size)
        valid = load_volumes(info.path, "valid")
    else:
        batches = image_batches(job, spec, info, device, rank, world_size)
        valid = load_split(info.path, "valid")
    # not a method's own copies of the student (mean teacher's moving average)
    optimizer = build_optimizer(job, [p for p in model.parameters() if p.requires_grad])
    scheduler = None
    if job.train.scheduler == "cosine":
        steps = job.train.epochs * len(batches)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    scaler = torch.amp.GradScaler(device.type, enabled=job.train.precision == "fp16")
    return Session(
        job, spec, info, task, device, rank, world_size, model, core, teachers, batches, optimizer,
        scheduler, autocast, scaler, params, valid=valid,
    )  # fmt: skip


def image_batches(
    job: Job, spec: RunSpec, info: DataInfo, device, rank: int, world_size: int
) -> TrainBatches:
    """A run's training batches of images (its label budget's, augmented)."""
    images, labels = training_arrays(info, spec.labels, spec.seed, pool=spec.unlabelled)
    return train_batches(
        images, labels, job.train.augment, info.mean, info.std, job.train.batch_size, spec.seed,
        rank, world_size,  # our own data-parallel sampler, so a teacher can replay every rank
        prefetch=job.train.prefetch_batches, pin_memory=device.type == "cuda",
        workers=job.train.loader_workers, augment_on=job.train.augment_on, device=device,
    )  # fmt: skip


def run_weights(job: Job, spec: RunSpec) -> LocalWeights | None:
    """The pretrained weights the run's model starts from, found in this machine's caches and
    checked against the checksum the run was planned with; None: random weights."""
    source = job.weights_sources().get(spec.model)
    if source is None:
        return None
    return require(source, job.weights_caches(), (spec.weights or {}).get("sha256"))


def open_teachers(job: Job, spec: RunSpec, info: DataInfo, teacher_dirs, device, autocast):
    """The teacher source: none, the teachers' soft-label caches, or the teachers online."""
    if spec.method == PLAIN or not spec.teacher_runs:
        return NoTeacher()
    if spec.teacher_outputs == "cached":
        caches = load_cached(job, spec, info, teacher_dirs, device)
        if caches is not None:
            return CachedTeachers(caches, device)
    models, metas = load_teachers(teacher_dirs, device)
    if job.train.channels_last:  # the student's batches come in that layout
        models = [m.to(memory_format=torch.channels_last) for m in models]
    return OnlineTeachers(models, metas, [[] for _ in models], info, autocast)


def _distiller(
    job: Job, spec: RunSpec, info: DataInfo, task: Task, student, teachers, counts: tuple[int, ...]
) -> Distiller:
    """The student with its method (none for teachers and baselines). A feature method's
    stages are chosen here among the aligned pairs (`aligned_pairs`), and the online teacher is
    told which of its stages to return."""
    if spec.method == PLAIN:
        return Distiller(student, None, [], task)
    method_cls = get_method(spec.method)
    params = method_cls.Params.model_validate(spec.method_params)
    student_stages, student_channels, teacher_channels = [], (), ()
    if method_cls.needs == "features":
        teacher = teachers.models[0]
        stage_count(student), stage_count(teacher)  # a model without stages: one clear line
        pairs = aligned_pairs(student, teacher)
        parts = tuple(part for _, _, part in pairs)
        chosen = method_cls.feature_stages(params, len(pairs), parts)
        student_stages = [pairs[i][0] for i in chosen]
        teacher_stages = [pairs[i][1] for i in chosen]
        teachers.stages = [teacher_stages]
        student_channels = tuple(stage_channels(student)[i] for i in student_stages)
        teacher_channels = (tuple(stage_channels(teacher)[i] for i in teacher_stages),)
    shapes = Shapes(
        info.num_classes, job.train.epochs, student_channels, teacher_channels, counts, spec.seed,
        task.name, job.data.spatial_rank,
    )  # fmt: skip
    return Distiller(student, method_cls(params, shapes), student_stages, task)


@dataclass
class BandStop:
    """Defective teachers: evaluate every `every` steps; stop once validation accuracy is inside
    the band (the run's weights are the defective teacher), fail if it jumped past it."""

    band: tuple[float, float] | None
    every: int
    hit: dict | None = None
    error: str | None = None
    below: bool = False  # checked below the band once: above it later is a jump past it

    def check(self, session: Session, epoch: float) -> bool:
        """True when training must stop now (inside the band, or past it)."""
        if self.band is None:
            return False
        if not weights_finite(session):  # diverged: not a defective teacher (`run_loop.diverged`)
            return True
        acc = session.val_score()
        low, high = self.band
        if acc > high and self.hit is None:
            score = f"{session.val_key.replace('_', ' ')} {acc:.3f} at epoch {epoch:.2f}"
            self.error = (
                f"defective teacher {session.spec.model} jumped past its band {list(self.band)}: "
                f"{score}; set a smaller studies.<name>.eval_every_steps, a lower lr, or a "
                "wider band"
                if self.below
                else f"defective teacher {session.spec.model} was above its band "
                f"{list(self.band)} at its first check ({score}): a network that has learned "
                "next to nothing scores that, so nothing can stop inside it; raise the band"
            )
            return True
        self.below = self.below or acc < low
        if low <= acc <= high:
            self.hit = {"score": acc, "epoch": epoch}
            return True
        return False

    def missed(self, session: Session, history: list[dict]) -> None:
        """After the last epoch: a band never reached is the run's error."""
        if self.band is None or self.hit is not None or self.error is not None:
            return
        best = max(h[session.val_key] for h in history)
        self.error = (
            f"defective teacher {session.spec.model} never reached its band {list(self.band)} in "
            f"{session.job.train.epochs} epochs (best {session.val_key.replace('_', ' ')} "
            f"{best:.3f}); "
            "raise train.epochs or lower the band"
        )


def weights_finite(session: Session) -> bool:
    """Whether the student's and the method's weights and statistics are all finite: one sync,
    agreed by every rank (BatchNorm statistics are each rank's own)."""
    core = session.core
    tensors = [t.detach() for t in (*core.parameters(), *core.buffers()) if t.is_floating_point()]
    finite = torch.stack([torch.isfinite(t).all() for t in tensors]).all().to(torch.int32)
    if session.world_size > 1:
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite.item())


def band_stop(session: Session) -> BandStop:
    steps = len(session.batches)
    every = session.spec.eval_every_steps or max(1, math.ceil(steps / 10))
    return BandStop(session.spec.band, every)


def train_epoch(
    session: Session, epoch: int, band: BandStop, on_step: Callable[[int], None] | None = None
) -> dict:
    """One epoch (0-based) over the run's reproducible batches; returns its history row without
    validation: mean loss, every loss term the method returned (`loss_<term>`), accuracy."""
    s = session
    s.model.train()
    started = time.time()
    steps = len(s.batches)
    sums, names = None, []  # on the device: no host sync per step
    position = 0  # in this rank's draw of the epoch: where its cached soft labels are
    for step, (x, y, _) in enumerate(s.batches.epoch(epoch), start=1):
        x, y = x.to(s.device, non_blocking=True), y.to(s.device, non_blocking=True)
        if s.job.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if on_step is not None:
            on_step(step)
        teachers = s.teachers.outputs(x, epoch, s.rank, position)
        position += len(y)
        with s.autocast():
            logits, losses = s.model(x, y, teachers, epoch + step / steps)
        s.optimizer.zero_grad(set_to_none=True)
        s.scaler.scale(losses["loss"]).backward()
        s.scaler.step(s.optimizer)
        s.scaler.update()
        if s.scheduler is not None:
            s.scheduler.step()
        if s.core.method is not None:
            s.core.method.after_step(s.core.student, epoch + step / steps)
        with torch.no_grad():
            if sums is None:
                names = [k for k in losses if k != "loss"]
                sums = torch.zeros(4 + len(names), dtype=torch.float64, device=s.device)
            values = [losses["loss"], *(losses[k] for k in names)]
            sums[: len(values)] += torch.stack([v.detach().double() for v in values]) * len(y)
            right, counted = s.task.correct(logits, y)  # labelled images (labels) only
            sums[-3] += right
            sums[-2] += counted
            sums[-1] += len(y)
        if step % band.every == 0 and band.check(s, epoch + step / steps):
            break
    if s.world_size > 1:
        dist.all_reduce(sums)
    seen = max(sums[-1].item(), 1)
    row = {"epoch": epoch + 1, "train_loss": sums[0].item() / seen}
    row.update({f"loss_{k}": sums[1 + i].item() / seen for i, k in enumerate(names)})
    row["train_acc"] = sums[-3].item() / max(sums[-2].item(), 1)  # over labelled targets
    row["lr"] = s.optimizer.param_groups[0]["lr"]
    row["epoch_s"] = time.time() - started
    return row
