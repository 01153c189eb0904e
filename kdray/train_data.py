"""The training batches of a run: augmented, shuffled, and reproducible epoch by epoch.

Each epoch's shuffle and augmentation draws depend only on (seed, rank, epoch). A run resumed
from a checkpoint therefore sees the batches it would have seen, and a teacher can replay the
exact views its students will train on (the soft-label cache).
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate

from kdray.augment import build_train_augmentation


class TrainSet(Dataset):
    """(image, label, index) with the train-time augmentation; the index keys the soft labels.

    Sequential seeding (one loader thread): one augmentation stream per epoch, drawn in batch
    order. Per-sample seeding (several threads): each image's draw is seeded by (epoch seed,
    index), so threads may prepare images in any order and the views stay the same."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, augment, mean, std, build=None):
        self.images, self.labels, self.augment = images, labels, augment
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.build = build  # per-sample seeding: makes one pipeline per thread
        self.local = threading.local()
        self.epoch_seed = 0

    def __len__(self) -> int:
        return len(self.labels)

    def _pipeline(self, index: int):
        if self.build is None:
            return self.augment
        pipeline = getattr(self.local, "pipeline", None)
        if pipeline is None:
            pipeline = self.local.pipeline = self.build()
        if pipeline is not None:
            pipeline.set_random_seed((self.epoch_seed * 1_000_003 + index) % 2**32)
        return pipeline

    def __getitem__(self, index: int):
        image = np.array(self.images[index])  # a writable copy of the memory-mapped row
        augment = self._pipeline(index)
        if augment is not None:
            image = augment(image=image)["image"]
            if image.ndim == 2:
                image = image[:, :, None]
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255)
        return (x - self.mean) / self.std, int(self.labels[index]), index


def prefetched(batches: Iterable, depth: int) -> Iterator:
    """`batches` in the same order, produced up to `depth` ahead by a background thread, so
    decoding and augmentation overlap the training step (PyTorch and OpenCV release the GIL).
    One thread draws every batch in order, so the batches are exactly those of `batches`."""
    if depth <= 0:
        yield from batches
        return
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def offer(item) -> bool:
        """Put `item` unless the consumer stopped (it may stop with the queue full)."""
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if not offer(batch):
                    return
            offer(done)
        except BaseException as exc:  # re-raised in the training thread
            offer(exc)

    producer = threading.Thread(target=produce, name="kdray-prefetch", daemon=True)
    producer.start()
    try:
        while (item := ready.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:  # also when the loop breaks early (a defective teacher inside its band)
        stop.set()
        producer.join()


@dataclass
class TrainBatches:
    loader: DataLoader
    shuffle_rng: torch.Generator
    augment: object
    seed: int
    prefetch: int = 0
    pool: ThreadPoolExecutor | None = None  # several loader threads (per-sample seeding)

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int) -> Iterable:
        """The batches of `epoch` (0-based), the same whenever they are drawn."""
        epoch_seed = self.seed * 1000 + epoch
        self.shuffle_rng.manual_seed(epoch_seed)
        if self.augment is not None:
            self.augment.set_random_seed(epoch_seed)
        self.loader.dataset.epoch_seed = epoch_seed
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):  # DistributedSampler (DDP)
            sampler.set_epoch(epoch)
        if self.pool is None:
            return prefetched(self.loader, self.prefetch)
        return prefetched(self._threaded(), self.prefetch)

    def _threaded(self) -> Iterator:
        """The loader's batches, each image prepared by the thread pool (OpenCV and PyTorch
        release the GIL), collated and, for a GPU, pinned as the DataLoader would."""
        dataset = self.loader.dataset
        for indices in self.loader.batch_sampler:
            batch = default_collate(list(self.pool.map(dataset.__getitem__, indices)))
            if self.loader.pin_memory:
                batch = [t.pin_memory() if torch.is_tensor(t) else t for t in batch]
            yield batch


def train_batches(
    images: np.ndarray,
    labels: np.ndarray,
    augment_spec,
    mean,
    std,
    batch_size: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    prefetch: int = 0,
    pin_memory: bool = False,
    threads: int = 1,
) -> TrainBatches:
    """Rank `rank`'s batches of a run with `world_size` data-parallel workers: each rank its
    shard of the epoch's seeded permutation (`DistributedSampler`) and its own augmentation
    stream, so any process can replay any rank's batches (the teacher does, for the cache).
    `threads` > 1 prepares each batch's images in a thread pool, with per-sample seeding."""
    run_seed = seed * 1000 + rank
    augment = build_train_augmentation(augment_spec, seed=run_seed)
    shuffle_rng = torch.Generator()
    build = None
    if threads > 1:
        build = functools.partial(build_train_augmentation, augment_spec, seed=run_seed)
    dataset = TrainSet(images, labels, augment, mean, std, build)
    if world_size > 1:
        sampler = DistributedSampler(dataset, world_size, rank, shuffle=True, seed=seed)
        order = {"sampler": sampler}
        per_rank = len(sampler)
    else:
        order = {"shuffle": True, "generator": shuffle_rng}
        per_rank = len(labels)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        drop_last=per_rank > batch_size,
        pin_memory=pin_memory,
        **order,
    )
    pool = ThreadPoolExecutor(threads, thread_name_prefix="kdray-load") if threads > 1 else None
    return TrainBatches(loader, shuffle_rng, augment, run_seed, prefetch, pool)
