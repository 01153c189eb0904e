"""The training batches of a run: augmented, shuffled, and reproducible epoch by epoch.

Each epoch's shuffle and augmentation draws depend only on (seed, rank, epoch). A run resumed
from a checkpoint therefore sees the batches it would have seen, and a teacher can replay the
exact views its students will train on (the soft-label cache).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from kdray.augment import build_train_augmentation


class TrainSet(Dataset):
    """(image, label, index) with the train-time augmentation; the index keys the soft labels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, augment, mean, std):
        self.images, self.labels, self.augment = images, labels, augment
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = np.array(self.images[index])  # a writable copy of the memory-mapped row
        if self.augment is not None:
            image = self.augment(image=image)["image"]
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

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int) -> Iterable:
        """The batches of `epoch` (0-based), the same whenever they are drawn."""
        epoch_seed = self.seed * 1000 + epoch
        self.shuffle_rng.manual_seed(epoch_seed)
        if self.augment is not None:
            self.augment.set_random_seed(epoch_seed)
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):  # DistributedSampler (DDP)
            sampler.set_epoch(epoch)
        return prefetched(self.loader, self.prefetch)


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
) -> TrainBatches:
    """Rank `rank`'s batches of a run with `world_size` data-parallel workers: each rank its
    shard of the epoch's seeded permutation (`DistributedSampler`) and its own augmentation
    stream, so any process can replay any rank's batches (the teacher does, for the cache)."""
    run_seed = seed * 1000 + rank
    augment = build_train_augmentation(augment_spec, seed=run_seed)
    shuffle_rng = torch.Generator()
    dataset = TrainSet(images, labels, augment, mean, std)
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
    return TrainBatches(loader, shuffle_rng, augment, run_seed, prefetch)
