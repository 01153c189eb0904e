"""Bare loops: the Ray worker's own training pieces, without Ray.

Each loop builds its runs with `kdray.train.session.build_session` (rank 0 of 1, on the CPU, the
module moved to the device as `prepare`'s default does) and trains them with
`kdray.train.session.train_epoch`, the code `kdray.train.run_loop.train_run` runs inside Ray Train:
the same reproducible batches, models, method (`kdray.methods`), optimizer, autocast / GradScaler /
scheduler steps and teacher sources (`kdray.train.teachers`), then the worker's closing validation
(`Session.val_score`). Each mode the benchmark measures is one run of the job's plan
(`kdray.spec.plan.make_plan` on the pair as a study): `plain` the student's no-KD baseline (method
`none`), `cached` and `online` its Hinton KD run (method `kd`) reading the teacher's soft-label
cache or running the teacher on every batch (`teacher_outputs`). The teacher is a fresh model
saved as a teacher run leaves it (`model.pt`, plus `kdray.train.soft_labels.build`'s cache, built
before the timed epochs).

Nothing is copied from the loop: the timings are taken around its pieces. The session's batches
are wrapped so the time inside their iterator's `next()` is counted (data wait), and so is the
time inside the teacher source's `outputs()` (the teacher's forward, or the cache read). The
functions here are meant to run in a fresh process (`bench.common.in_fresh_process`), so their
peak RSS is their own.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from bench.common import peak_rss_mb
from kdray.data.cache import DataInfo, load_split
from kdray.spec.job import Job
from kdray.spec.plan import RunSpec, make_plan
from kdray.store.model_file import load_model, save_model
from kdray.tasks import get_task
from kdray.tasks.models import create_model
from kdray.train import soft_labels
from kdray.train.batches import TrainBatches, train_batches
from kdray.train.evaluate import predict
from kdray.train.session import Session, band_stop, build_session, seed_everything, train_epoch

PLAIN, ONLINE, CACHED = "plain", "online", "cached"
# the order of one round of timed epochs; the next round runs it backwards
MODES = (CACHED, PLAIN, ONLINE)
SEED = 0  # the run's seed (spec.seed); rank 0
STUDY = "normal"  # the quickstart's Hinton-KD study: the pair is planned as this study


@dataclass
class EpochTiming:
    """One epoch (or its first `max_steps` batches) of the bare loop, in seconds."""

    mode: str  # "plain" (no KD), "online" (teacher on every batch) or "cached" (soft labels)
    images: int
    steps: int
    data_s: float  # inside the batches iterator's next() (the device transfer: none on CPU)
    teacher_s: float  # inside the teacher source's outputs(): the forward, or the cache read
    student_s: float  # the rest of the batches: student forward, loss, backward, step, totals
    train_s: float  # the epoch's batches: `train_epoch`'s own `epoch_s`
    eval_s: float  # the closing validation (`Session.val_score`; 0 when skipped)

    @property
    def kd(self) -> bool:
        return self.mode != PLAIN

    @property
    def epoch_s(self) -> float:
        """The batches plus the validation pass."""
        return self.train_s + self.eval_s

    def to_json(self) -> dict:
        return asdict(self) | {"kd": self.kd, "epoch_s": self.epoch_s}


class TimedBatches:
    """A session's batches, counting the time spent inside their iterator's `next()` and
    stopping an epoch after `max_steps` batches (what `train_epoch` sees of `TrainBatches`)."""

    def __init__(self, batches: TrainBatches):
        self.inner = batches
        self.max_steps: int | None = None
        self.data_s, self.steps, self.images = 0.0, 0, 0

    def __len__(self) -> int:
        return len(self.inner)

    def reset(self, max_steps: int | None) -> None:
        self.max_steps = max_steps
        self.data_s, self.steps, self.images = 0.0, 0, 0

    def epoch(self, epoch: int) -> Iterator:
        batches = iter(self.inner.epoch(epoch))  # a generator (the prefetch thread's queue)
        try:
            while self.max_steps is None or self.steps < self.max_steps:
                t0 = time.perf_counter()
                try:
                    batch = next(batches)
                except StopIteration:
                    return
                self.data_s += time.perf_counter() - t0
                self.steps += 1
                self.images += len(batch[1])
                yield batch
        finally:
            close = getattr(batches, "close", None)
            if close is not None:  # stops the prefetch thread of an epoch cut short
                close()


class TimedTeachers:
    """A session's teacher source, counting the time spent inside `outputs()`."""

    def __init__(self, teachers):
        self.inner = teachers
        self.kind = teachers.kind
        self.seconds = 0.0

    def outputs(self, x: torch.Tensor, epoch: int, rank: int, start: int):
        t0 = time.perf_counter()
        out = self.inner.outputs(x, epoch, rank, start)
        self.seconds += time.perf_counter() - t0
        return out


@dataclass
class Loop:
    """One session per mode, built as the worker builds its run, with timing wrappers."""

    job: Job
    sessions: dict[str, Session]
    cache: dict = dataclasses.field(default_factory=dict)  # how the cache was built
    val_acc: float | None = None  # the last validation's accuracy


def pair_job(job: Job, student: str, teacher: str, epochs: int, method: dict | None = None) -> Job:
    """The job with the pair as its only study (Hinton KD with the job's `distill` settings,
    or `method`) plus the student's baseline, trained for `epochs` epochs: the number of epochs
    the bare loop runs, so the soft-label cache covers every one of them."""
    raw = job.model_dump(mode="json")
    study = {"teachers": [teacher], "students": [student]}
    raw["studies"] = {STUDY: study | ({"method": method} if method else {})}
    raw["baseline"] = True
    raw["seeds"] = [SEED]
    raw["train"]["epochs"] = epochs
    return Job.model_validate(raw)


def mode_specs(job: Job) -> tuple[RunSpec, dict[str, RunSpec]]:
    """The pair's teacher run, and the run each mode trains: the student's baseline (`plain`)
    and its KD run reading the cache (`cached`) or running the teacher (`online`)."""
    runs = make_plan(job).runs.values()
    teacher = next(r for r in runs if f"teacher:{STUDY}" in r.roles)
    kd = next(r for r in runs if f"kd:{STUDY}" in r.roles)
    plain = next(r for r in runs if "baseline" in r.roles and r.model == kd.model)
    return teacher, {
        PLAIN: plain,
        CACHED: dataclasses.replace(kd, teacher_outputs="cached"),
        ONLINE: dataclasses.replace(kd, teacher_outputs="online"),
    }


def make_teacher(
    job: Job, spec: RunSpec, info: DataInfo, folder: Path, cache: bool,
    device: torch.device | str = "cpu", model: torch.nn.Module | None = None,
) -> dict:  # fmt: skip
    """A teacher run's folder as a finished teacher leaves it: a fresh model (or `model`, a
    trained one) in `model.pt` (its weights do not change the cost) and, with `cache`, its soft
    labels, built by `soft_labels.build` on `device` (timed: a teacher-side cost, outside every
    timed epoch)."""
    folder.mkdir(parents=True, exist_ok=True)
    task = get_task(info.task)
    if model is None:
        seed_everything(spec.seed)
        teacher = task.create_model(spec.model, info.num_classes, info.channels, rank=info.rank)
    else:
        teacher = model
    save_model(
        folder / "model.pt",
        teacher,
        model=spec.model,
        task=task.name,
        num_classes=info.num_classes,
        in_chans=info.channels,
        classes=info.classes,
        mean=info.mean,
        std=info.std,
        image_size=info.image_size,
        rank=info.rank,
    )
    if not cache:
        return {}
    device = torch.device(device)
    teacher = teacher.to(device)
    t0 = time.perf_counter()
    path = soft_labels.build(teacher, job, spec.seed, info, device, folder)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    build_s = time.perf_counter() - t0
    return {"build_s": build_s, "mb": path.stat().st_size / 2**20}


def build_loop(
    job: Job, info: DataInfo, student: str, teacher: str, modes: tuple[str, ...], epochs: int,
    folder: Path, device: torch.device | str = "cpu", method: dict | None = None,
) -> Loop:  # fmt: skip
    """The teacher run's folder, then one session per mode, each built by `build_session` on
    `device` (the CPU unless told: the GPU benchmarks pass `cuda`); `method`: the KD runs'
    method (default: Hinton KD)."""
    device = torch.device(device)
    bench_job = pair_job(job, student, teacher, epochs, method)
    teacher_spec, specs = mode_specs(bench_job)
    teacher_dir = folder / teacher_spec.run_id
    cache = make_teacher(bench_job, teacher_spec, info, teacher_dir, CACHED in modes, device)
    if cache:
        job_epochs = job.train.epochs
        cache |= {
            "epochs": epochs,
            # scaled to the job's own epochs: what a teacher trial of this job builds and writes
            "job_epochs": job_epochs,
            "job_build_s": cache["build_s"] / epochs * job_epochs,
            "job_mb": cache["mb"] / epochs * job_epochs,
        }
    sessions = {}
    for mode in modes:
        spec = specs[mode]
        dirs = [folder / t for t in spec.teacher_runs]
        session = build_session(bench_job, spec, info, dirs, device)
        if session.teachers.kind != (None if mode == PLAIN else mode):
            raise RuntimeError(
                f"{mode} run got teacher outputs {session.teachers.kind!r}: the soft labels in "
                f"{teacher_dir} do not match the run's cache key"
            )
        session.batches = TimedBatches(session.batches)
        session.teachers = TimedTeachers(session.teachers)
        sessions[mode] = session
    return Loop(bench_job, sessions, cache)


def run_epoch(
    loop: Loop, epoch: int, mode: str, max_steps: int | None = None, validate: bool = True
) -> EpochTiming:
    """One epoch of `mode`'s run: `train_epoch` (its first `max_steps` batches), then the
    worker's validation."""
    session = loop.sessions[mode]
    batches, teachers = session.batches, session.teachers
    batches.reset(max_steps)
    teachers.seconds = 0.0
    row = train_epoch(session, epoch, band_stop(session))
    train_s = row["epoch_s"]
    eval_s = 0.0
    if validate:
        t0 = time.perf_counter()
        loop.val_acc = session.val_score()
        eval_s = time.perf_counter() - t0
    student_s = train_s - batches.data_s - teachers.seconds
    return EpochTiming(
        mode, batches.images, batches.steps, batches.data_s, teachers.seconds, student_s,
        train_s, eval_s,
    )  # fmt: skip


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
    """Epochs of the student in each of `modes`, interleaved (cached, plain, online, online,
    plain, cached, ...) after one warm-up epoch of each, so drift on a noisy machine hits every
    side alike. With `cached` among the modes, the teacher's soft-label cache for every epoch
    the loop runs is built first (timed, in a temporary folder).

    Returns every epoch's timing plus the cache's build, this process's peak RSS and the
    checkpoint write cost.
    """
    job = Job.model_validate(job_json)
    info = DataInfo(**info_json)
    threads = threads or job.resources.torch_threads or max(1, int(job.resources.cpus_per_worker))
    torch.set_num_threads(threads)
    epochs = len(modes) * (1 + rounds)
    with tempfile.TemporaryDirectory(prefix="bench-teacher-") as tmp:
        loop = build_loop(job, info, student, teacher, modes, epochs, Path(tmp))
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
        last = loop.sessions[modes[-1]]
        result = {
            "threads": threads,
            "train_images": len(last.batches.inner.loader.dataset),
            "warmup": [e.to_json() for e in warmup],
            "epochs": [e.to_json() for e in timed],
            "cache": loop.cache,
            "checkpoint": checkpoint_write(last),
        }
        del last
        loop.sessions.clear()  # release the soft labels' memory map before the folder goes
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def checkpoint_write(session: Session) -> dict:
    """What one per-epoch checkpoint costs the worker: `torch.save` of the run's state into a
    temporary folder (as the worker's per-epoch report does), then Ray's persist, which copies
    that folder into the run's storage (imitated with a copy on the same file system)."""
    state = {
        "model": session.core.state_dict(),
        "optimizer": session.optimizer.state_dict(),
        "scheduler": session.scheduler.state_dict() if session.scheduler else None,
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
    load (memory-mapped, as the worker does), and the first batch (`kdray.train.batches`)."""
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
    task = get_task(info.task)
    model = task.create_model(model_name, info.num_classes, info.channels)
    images, _ = load_split(info.path, "valid", mmap=False)
    warm_up = images[:4]
    predict(model, warm_up, info.mean, info.std, "cpu", job.train.eval_batch_size, task)
    t0 = time.perf_counter()
    predict(model, images, info.mean, info.std, "cpu", job.train.eval_batch_size, task)
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
