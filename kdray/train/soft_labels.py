"""The teacher soft-label cache (after FKD, Shen & Xing): a teacher scores, once, every view its
students will train on, and every KD student of that teacher reads the scores instead of running
the teacher on each batch.

Exact because the training batches are reproducible (`kdray.train.batches`): for a given seed,
epoch and sample, the student draws the same augmentation the teacher replayed. Logits are kept in
float16 (`soft_labels.npy`, shape epochs x ranks x positions x classes: what rank r's student sees
at position p of epoch e; a task's output per image, `Task.output_shape`) beside the teacher's
weights; `soft_labels.json` records what they were computed for, and a student whose settings
differ runs the teacher online. Data-parallel students read their own rank's slice: the teacher
replays every rank's shard and augmentation.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from kdray.data.augment import pipeline_spec
from kdray.data.budgets import training_arrays
from kdray.data.cache import DataInfo
from kdray.data.volume_cache import load_volumes
from kdray.spec.job import Job
from kdray.store.atomic import atomic_write, write_json
from kdray.tasks import get_task
from kdray.train.batches import train_batches
from kdray.train.device_augment import backend_for
from kdray.train.patches import volume_batches

LOGITS_FILE = "soft_labels.npy"
META_FILE = "soft_labels.json"
POOL_SUFFIX = "_pool"  # the views of students that also train on a label budget's pool


def files(run_dir: Path, pool: bool) -> tuple[Path, Path]:
    """(logits, meta) of the cache for students without (`soft_labels.*`) or with the pool."""
    suffix = POOL_SUFFIX if pool else ""
    logits, meta = Path(LOGITS_FILE), Path(META_FILE)
    return (
        run_dir / f"{logits.stem}{suffix}{logits.suffix}",
        run_dir / f"{meta.stem}{suffix}{meta.suffix}",
    )


def cache_key(
    job: Job, seed: int, info: DataInfo, labels=None, pool: bool = False, device="cpu"
) -> dict:
    """Everything that decides which views a student sees on `device`: the device path's
    views (and its back end: OpenCV on the CPU, torch on a GPU, which round differently); on
    the loader path, loader workers draw other views than the in-process loader (seeded per
    sample, shuffled by another generator)."""
    key = {
        "seed": seed,
        "epochs": job.train.epochs,
        "batch_size": job.train.batch_size,
        "augment": pipeline_spec(job.train.augment),
        "data": info.fingerprint,
        "image_size": info.image_size,
        "world_size": job.resources.workers_per_trial,  # each rank has its own views
    }
    if job.train.augment_on == "device":  # any worker count, 0 included, draws the same views
        key["views"] = f"per-sample seeds, batched on the device ({backend_for(device)})"
    elif job.train.loader_workers:  # any count draws the same views; 0 (absent) others
        key["views"] = "per-sample seeds"
    if labels:  # the students' label budget, and whether they train on its pool too
        key.update(labels=labels, pool=pool)
    if info.rank == 3:  # volumes: seeded patches (`kdray.train.patches`), no image pipeline
        key.update(patch=info.patch, foreground=job.data.foreground, views="volume patches")
    return key


@torch.no_grad()
def build(
    teacher, job: Job, seed: int, info: DataInfo, device, run_dir: Path, budget=None, pool=False
) -> Path:
    """Replay every epoch's training views of every student rank through `teacher`; write the
    logits atomically, in the order each rank draws them (epoch, rank, position, class).
    `budget`, `pool`: the students' label budget, and whether they train on its pool too."""
    world_size = job.resources.workers_per_trial
    ranks = _replayed_batches(job, seed, info, device, budget, pool)
    per_rank = max(b.samples for b in ranks)
    size = tuple(info.patch) if info.rank == 3 else info.image_size
    shape = get_task(info.task).output_shape(info.num_classes, size)
    full = (job.train.epochs, world_size, per_rank, *shape)
    was_training = teacher.training
    teacher.eval()
    logits_file, meta_file = files(run_dir, pool)
    # written slice by slice (a segmenter's per-pixel logits need not fit in memory at once)
    with atomic_write(logits_file, "wb") as fh:
        header = {"descr": np.dtype(np.float16).str, "fortran_order": False, "shape": full}
        np.lib.format.write_array_header_2_0(fh, header)
        group = job.train.eval_batch_size if info.rank == 2 else 1  # images per teacher call
        for epoch in range(job.train.epochs):
            for batches in ranks:
                block = np.zeros((per_rank, *shape), dtype=np.float16)
                position = 0
                for x in _grouped((x for x, _, _ in batches.epoch(epoch)), group):
                    scores = teacher(x.to(device)).float().cpu().numpy()
                    block[position : position + len(x)] = scores
                    position += len(x)
                fh.write(block.tobytes())
    teacher.train(was_training)
    write_json(meta_file, cache_key(job, seed, info, budget, pool, device))
    return logits_file


def _grouped(batches: Iterator[torch.Tensor], size: int) -> Iterator[torch.Tensor]:
    """Consecutive batches joined up to `size` images a call (at least one batch): the teacher
    is in eval mode, so each image's logits do not depend on its neighbours, and on a CPU core
    a call of 128 images costs ~0.7 of four calls of 32."""
    held: list[torch.Tensor] = []
    for x in batches:
        if held and sum(map(len, held)) + len(x) > size:
            yield _joined(held)
            held = []
        held.append(x)
    if held:
        yield _joined(held)


def _joined(batches: list[torch.Tensor]) -> torch.Tensor:
    return batches[0] if len(batches) == 1 else torch.cat(batches)


def _replayed_batches(job: Job, seed: int, info: DataInfo, device, budget, pool) -> list:
    """Every student rank's training batches, as each rank draws them."""
    world_size = job.resources.workers_per_trial
    if info.rank == 3:
        volumes = load_volumes(info.path, "train")
        return [volume_batches(volumes, job, seed, rank, world_size) for rank in range(world_size)]
    images, labels = training_arrays(info, budget, seed, pool)
    return [
        train_batches(
            images,
            labels,
            job.train.augment,
            info.mean,
            info.std,
            job.train.batch_size,
            seed,
            rank=rank,
            world_size=world_size,
            prefetch=job.train.prefetch_batches,
            workers=job.train.loader_workers,
            augment_on=job.train.augment_on,
            device=device,
        )
        for rank in range(world_size)
    ]


def load(run_dir: Path, key: dict) -> np.ndarray | None:
    """The cached logits (memory-mapped) if they were computed for exactly `key`, else None."""
    logits, meta = files(run_dir, bool(key.get("pool")))
    if not (meta.is_file() and logits.is_file()):
        return None
    if json.loads(meta.read_text()) != json.loads(json.dumps(key)):
        return None
    return np.load(logits, mmap_mode="r")
