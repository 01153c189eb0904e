"""The training batches of a run: augmented, shuffled, and reproducible epoch by epoch.

Each epoch's shuffle and augmentation draws depend only on (seed, rank, epoch). A run resumed
from a checkpoint therefore sees the batches it would have seen, and a teacher can replay the
exact views its students will train on (the soft-label cache).

Two paths (`train.augment_on`):

- `device` (the default): whole batches travel as uint8 (`BatchSet`: gathered from the split in
  one copy, a memory-mapped split read in place); the augmentations with a batched version, the
  conversion to float and the normalisation run on the training device
  (`kdray.train.device_augment`: on a GPU after the copy, on the CPU inside the loader), each
  sample's draws keyed by (run seed, epoch, index); steps without a batched version stay with
  albumentations in the loader, seeded per sample too. The views depend neither on the number
  of loader processes (0 included) nor on which drew them.
- `loader` (kdray's views before issue 25): every augmentation in the loader with
  albumentations, float32 batches. In process (`workers=0`) one pipeline draws each epoch's views
  in order from its seed; in loader worker processes (`workers > 0`) each sample's augmentation
  is seeded from (run seed, epoch, index) (`SeededTrainSet`), other views than in process.

Either way batches are made in this process a batch or two ahead in a background thread
(`prefetched`), or in a persistent `DataLoader` pool of worker processes (`worker_loader`). The
soft-label cache records which path (and which back end) its views came from.
"""

from __future__ import annotations

import mmap
import multiprocessing
import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler

from kdray.data.augment import augment_with_mask, build_train_augmentation
from kdray.train.augment_steps import split_pipeline
from kdray.train.device_augment import DeviceAugment

START_METHOD = "forkserver"  # how loader worker processes start (see `worker_loader`)
PREFETCH_FACTOR = 2  # batches each loader worker prepares ahead


class TrainSet(Dataset):
    """(image, target, index) with the train-time augmentation; the index keys the soft labels.
    A target that is a mask (`is_mask`) is augmented together with its image."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, augment, mean, std):
        self.images, self.labels, self.augment = images, labels, augment
        self.masks = is_mask(labels, images)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = np.array(self.images[index])  # a writable copy of the memory-mapped row
        if self.masks:
            image, mask = augment_with_mask(self.augment, image, self.labels[index])
            label = torch.from_numpy(np.ascontiguousarray(mask))
        else:
            if self.augment is not None:
                image = self.augment(image=image)["image"]
            label = target(self.labels[index])
        if image.ndim == 2:
            image = image[:, :, None]
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255)
        return (x - self.mean) / self.std, label, index

    def __getstate__(self) -> dict:
        """Pickled for a worker process: a memory-mapped split travels as its file's path."""
        return self.__dict__ | {"images": MappedFile.of(self.images) or self.images}

    def __setstate__(self, state: dict) -> None:
        images = state["images"]
        if isinstance(images, MappedFile):
            images = images.open()
        self.__dict__.update(state, images=images)


def is_mask(labels: np.ndarray, images: np.ndarray) -> bool:
    """Whether each target is a mask over its image (segmentation): (N, H, W) beside
    (N, H, W, C) images."""
    return np.ndim(labels) == 3 and tuple(labels.shape[1:]) == tuple(images.shape[1:3])


def target(label: np.ndarray):
    """One image's target as the loader collates it: a class index, or a row of labels."""
    return int(label) if np.ndim(label) == 0 else torch.from_numpy(np.array(label))


@dataclass(frozen=True)
class MappedFile:
    """Where a memory-mapped array lies, so another process maps the file instead of receiving
    a copy of the whole array (what pickling an `np.memmap` would send)."""

    filename: str
    dtype: str
    shape: tuple[int, ...]
    offset: int

    @classmethod
    def of(cls, array) -> MappedFile | None:
        """The file behind `array` if it maps a whole file region (not a view of one)."""
        if not (isinstance(array, np.memmap) and isinstance(array.base, mmap.mmap)):
            return None
        if not (array.filename and array.flags.c_contiguous):
            return None
        return cls(str(array.filename), array.dtype.str, array.shape, array.offset)

    def open(self) -> np.memmap:
        return np.memmap(self.filename, self.dtype, "r", self.offset, self.shape)


def sample_seed(run_seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of one sample of one epoch (64 bits, well mixed)."""
    return int(np.random.SeedSequence((run_seed, epoch, index)).generate_state(1, np.uint64)[0])


class SeededTrainSet(TrainSet):
    """`TrainSet` for loader workers: items are asked for as (epoch, index), and each sample's
    augmentation is seeded from (run seed, epoch, index) before it is drawn."""

    def __init__(self, images, labels, augment, mean, std, run_seed: int):
        super().__init__(images, labels, augment, mean, std)
        self.run_seed = run_seed

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        if self.augment is not None:
            self.augment.set_random_seed(sample_seed(self.run_seed, epoch, index))
        return super().__getitem__(index)


class BatchSet(TrainSet):
    """The device path's dataset: whole batches, asked for as (epoch, indices). The images are
    gathered from the split in one copy (a memory-mapped split is read in place, no copy per
    sample), the loader's steps (`augment`, albumentations) run per sample seeded by
    (run seed, epoch, index), and `finish` (the device steps and the normalisation, when the
    training device is the CPU) runs on the batch; without it the batch stays uint8 (N, H, W, C)
    for the device. A target with the image's height and width is a mask: it moves with it."""

    def __init__(self, images, labels, augment, mean, std, run_seed: int, finish=None):
        super().__init__(images, labels, augment, mean, std)
        self.run_seed, self.finish = run_seed, finish
        self.masks = is_mask(labels, images)

    def __getitem__(self, key: tuple[int, np.ndarray]):
        epoch, indices = key
        images = np.asarray(self.images[indices])  # one gather: the batch's only copy
        labels = np.asarray(self.labels[indices])
        if self.augment is not None:
            images, labels = self.loader_steps(images, labels, epoch, indices)
        x = torch.from_numpy(images if images.ndim == 4 else images[..., None])
        y = torch.from_numpy(np.asarray(labels)).long()  # classes, label rows or masks
        index = torch.from_numpy(np.asarray(indices, dtype=np.int64))
        if self.finish is not None:
            x, masks = self.finish(x, index, epoch, y if self.masks else None)
            y = masks if self.masks else y
        return x, y, index

    def loader_steps(self, images, labels, epoch: int, indices):
        """The steps without a batched version, per sample (albumentations)."""
        out, moved = [], []
        for image, label, index in zip(images, labels, indices, strict=True):
            self.augment.set_random_seed(sample_seed(self.run_seed, epoch, int(index)))
            if self.masks:  # filled-in pixels come back unknown (-1), as on the device
                image, mask = augment_with_mask(self.augment, image, label)
                moved.append(mask)
            else:
                image = self.augment(image=image)["image"]
            out.append(image if image.ndim == 3 else image[:, :, None])
        return np.stack(out), (np.stack(moved) if self.masks else labels)


class DeviceStage:
    """The device path's last stage on a GPU: each uint8 batch copied to `device` (from pinned
    memory, without blocking), then augmented and normalised there."""

    def __init__(self, augment: DeviceAugment, device: torch.device, masks: bool):
        self.augment, self.device, self.masks = augment, device, masks

    def __call__(self, batches: Iterable, epoch: int) -> Iterator:
        stream = iter(batches)
        try:
            for x, y, index in stream:
                x = x.to(self.device, non_blocking=True)
                y = y.to(self.device, non_blocking=True)
                x, masks = self.augment(x, index, epoch, y if self.masks else None)
                yield x, (masks if self.masks else y), index
        finally:  # stops a prefetch thread when the epoch is cut short
            close = getattr(stream, "close", None)
            if close is not None:
                close()


class EpochSampler(Sampler):
    """The indices of `order` as (epoch, index) pairs: the epoch reaches the worker processes
    with each index, so persistent workers need no other message."""

    def __init__(self, order: Sampler):
        self.order, self.epoch = order, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.order, "set_epoch"):  # DistributedSampler (DDP)
            self.order.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return ((epoch, int(index)) for index in self.order)

    def __len__(self) -> int:
        return len(self.order)


class EpochBatches(Sampler):
    """The device path's sampler: `order`'s permutation in batches, each as (epoch, indices),
    so one request fetches a whole batch and persistent workers need no other message."""

    def __init__(self, order: Sampler, batch_size: int, drop_last: bool):
        self.order, self.batch_size, self.drop_last = order, batch_size, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.order, "set_epoch"):  # DistributedSampler (DDP)
            self.order.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        epoch, batch = self.epoch, []
        for index in self.order:
            batch.append(int(index))
            if len(batch) == self.batch_size:
                yield epoch, np.array(batch, dtype=np.int64)
                batch = []
        if batch and not self.drop_last:
            yield epoch, np.array(batch, dtype=np.int64)

    def __len__(self) -> int:
        full, rest = divmod(len(self.order), self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)


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
    augment: object  # the in-process loader-path pipeline (reseeded per epoch), else None
    seed: int
    prefetch: int = 0
    samples: int = 0  # images drawn per epoch by this rank (its positions in the soft labels)
    on_device: DeviceStage | None = None  # the device path on a GPU: its last stage

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int) -> Iterable:
        """The batches of `epoch` (0-based), the same whenever they are drawn."""
        batches = self.loaded(epoch)
        return batches if self.on_device is None else self.on_device(batches, epoch)

    def loaded(self, epoch: int) -> Iterable:
        """`epoch`'s batches as the loader makes them (on a GPU's device path: uint8, before
        the copy and the device stage)."""
        epoch_seed = self.seed * 1000 + epoch
        self.shuffle_rng.manual_seed(epoch_seed)
        if self.augment is not None:
            self.augment.set_random_seed(epoch_seed)
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):  # DistributedSampler (DDP), EpochSampler (workers)
            sampler.set_epoch(epoch)
        return prefetched(self.loader, self.prefetch)


AUGMENT_ON = ("device", "loader")


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
    workers: int = 0,
    start_method: str = START_METHOD,
    augment_on: str = "device",
    device: torch.device | str = "cpu",
) -> TrainBatches:
    """Rank `rank`'s batches of a run with `world_size` data-parallel workers: each rank its
    shard of the epoch's seeded permutation (`DistributedSampler`) and its own augmentation
    stream, so any process can replay any rank's batches (the teacher does, for the cache).
    `workers > 0` draws them in that many loader processes (`worker_loader`; `prefetch` is then
    the pool's own), else in this process, `prefetch` batches ahead in a thread.
    `augment_on`: "device" (batched augmentation on `device`) or "loader" (see the module)."""
    if augment_on not in AUGMENT_ON:
        raise ValueError(f"augment_on: {augment_on!r}; choose one of {AUGMENT_ON}")
    run_seed = seed * 1000 + rank
    shuffle_rng = torch.Generator()
    sampler, per_rank = None, len(labels)
    if world_size > 1:
        sampler = DistributedSampler(range(len(labels)), world_size, rank, shuffle=True, seed=seed)
        per_rank = len(sampler)
    drop_last = per_rank > batch_size
    shape = (batch_size, drop_last, pin_memory, workers, start_method)
    if augment_on == "device":
        device = torch.device(device)
        loader_spec, steps = split_pipeline(augment_spec, *images.shape[1:3])
        augment = build_train_augmentation(loader_spec, seed=run_seed)
        finish = DeviceAugment(steps, run_seed, mean, std)
        on_cpu = device.type == "cpu"
        dataset = BatchSet(images, labels, augment, mean, std, run_seed, finish if on_cpu else None)
        order = EpochBatches(sampler or RandomSampler(dataset, generator=shuffle_rng), *shape[:2])
        loader = worker_loader(dataset, order, None, False, *shape[2:])
        stage = None if on_cpu else DeviceStage(finish, device, dataset.masks)
        return TrainBatches(
            loader, shuffle_rng, None, run_seed, 0 if workers else prefetch, per_rank, stage
        )
    augment = build_train_augmentation(augment_spec, seed=run_seed)
    if workers:
        dataset = SeededTrainSet(images, labels, augment, mean, std, run_seed)
        order = EpochSampler(sampler or RandomSampler(dataset, generator=shuffle_rng))
        loader = worker_loader(dataset, order, *shape)
        return TrainBatches(loader, shuffle_rng, None, run_seed, 0, per_rank)
    dataset = TrainSet(images, labels, augment, mean, std)
    order = {"sampler": sampler} if sampler else {"shuffle": True, "generator": shuffle_rng}
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        drop_last=drop_last,
        pin_memory=pin_memory,
        **order,
    )
    return TrainBatches(loader, shuffle_rng, augment, run_seed, prefetch, per_rank)


def worker_loader(
    dataset: Dataset,
    order: Sampler,
    batch_size: int | None,
    drop_last: bool,
    pin_memory: bool,
    workers: int,
    start_method: str = START_METHOD,
) -> DataLoader:
    """A loader over `workers` persistent processes, each `PREFETCH_FACTOR` batches ahead,
    batches returned in the sampler's order (`workers=0`: in this process). They start from a
    fork server by default: forking a Ray worker (gRPC and other threads running) is unsafe, and
    the server, preloaded with this module, forks each worker with torch and albumentations
    already imported. `batch_size=None`: the dataset returns whole batches (`BatchSet`)."""
    if not workers:
        return DataLoader(
            dataset, batch_size=batch_size, sampler=order, drop_last=drop_last,
            pin_memory=pin_memory, generator=torch.Generator(),
        )  # fmt: skip
    context = multiprocessing.get_context(start_method)
    if start_method == "forkserver":
        context.set_forkserver_preload([__name__])
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=order,
        drop_last=drop_last,
        num_workers=workers,
        persistent_workers=True,
        pin_memory=pin_memory,
        prefetch_factor=PREFETCH_FACTOR,
        multiprocessing_context=context,
        worker_init_fn=one_opencv_thread,
        generator=torch.Generator(),  # its base seed, drawn once, leaves the global RNG alone
    )


def one_opencv_thread(worker_id: int) -> None:
    """Each loader process augments on one thread (torch sets its own threads to 1 there)."""
    import cv2

    cv2.setNumThreads(1)
