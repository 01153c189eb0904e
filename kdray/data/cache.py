"""Decode a data set once into uint8 arrays, one per split and resolution, memory-mappable.

Layout of a cache folder:
    meta.json                 classes, channels, image_size, counts, mean/std (written last:
                              its presence means the cache is complete)
    <split>_images.npy        (N, H, W, C) uint8
    <split>_labels.npy        (N,) int64 class indices, or (N, L) int64 0/1/-1 labels
                              (multi-label; -1: unknown), or (N, H, W) int8 masks of class
                              indices (segmentation), resized with nearest neighbour
    <split>_groups.npy        (N,) str, optional (patient / study ids)
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from kdray.data.base import DataError
from kdray.data.files import MAX_PROBLEM_LINES, folder_in_place

SPLITS = ("train", "valid", "test")
BAD_IMAGE_HINT = (
    "fix, restore or remove the files above, or set data.on_bad_image: skip to leave them out"
)


def more(problems: list[str]) -> list[str]:
    extra = len(problems) - MAX_PROBLEM_LINES
    return [f"... and {extra} more unreadable images"] if extra > 0 else []


class SplitSource(Protocol):
    """What a data kind hands the cache for one split."""

    labels: np.ndarray
    groups: np.ndarray | None

    def __len__(self) -> int: ...

    def image(self, index: int) -> np.ndarray:
        """The image as uint8 (H, W) or (H, W, C), any size; raises on an unreadable file."""
        ...

    def describe(self, index: int) -> str:
        """Where item `index` comes from (its file path), for error messages."""
        ...


class MaskSource(SplitSource, Protocol):
    """A split whose targets are masks (segmentation); `labels` is unused (None)."""

    def mask(self, index: int) -> np.ndarray:
        """The (H, W) mask of class indices at its image's size; raises ValueError saying what
        is wrong with the file (unexpected values, unreadable)."""
        ...

    def describe_mask(self, index: int) -> str:
        """Where item `index`'s mask comes from (its file or files), for error messages."""
        ...


def has_masks(source) -> bool:
    return hasattr(source, "mask")


@dataclass
class ArraySource:
    """A split that is already in memory (synthetic data, MedMNIST)."""

    images: np.ndarray
    labels: np.ndarray
    groups: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int) -> np.ndarray:
        return self.images[index]

    def describe(self, index: int) -> str:
        return f"item {index}"


@dataclass
class MaskArraySource:
    """A segmentation split already in memory (synthetic ultrasound, MedSegBench archives):
    uint8 images and (N, H, W) masks of class indices at the images' size."""

    images: np.ndarray
    masks: np.ndarray
    where: str = "item"
    groups: np.ndarray | None = None
    labels: None = None

    def __len__(self) -> int:
        return len(self.images)

    def image(self, index: int) -> np.ndarray:
        return self.images[index]

    def mask(self, index: int) -> np.ndarray:
        return self.masks[index]

    def describe(self, index: int) -> str:
        return f"{self.where} {index}"

    def describe_mask(self, index: int) -> str:
        return f"{self.where} {index}'s mask"


@dataclass
class DataInfo:
    path: str
    fingerprint: str
    classes: list[str]
    channels: int
    image_size: int
    counts: dict[str, int]
    mean: list[float]
    std: list[float]
    extra: dict = field(default_factory=dict)
    task: str = "single_label"  # kdray.tasks (caches made before tasks: single-label)
    rank: int = 2  # spatial rank: 2 (images), 3 (volumes: `kdray.data.volume_cache`)
    patch: list[int] | None = None  # volumes: the training patch (D, H, W) in voxels

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def spatial(self) -> tuple[int, ...]:
        """What a training input spans: (image_size, image_size), or a volume's patch."""
        return tuple(self.patch) if self.rank == 3 else (self.image_size, self.image_size)

    def to_json(self) -> dict:
        return asdict(self)


def fingerprint(config: dict) -> str:
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def to_shape(image: np.ndarray, size: int, channels: int) -> np.ndarray:
    """Convert an image of any mode and size to uint8 (size, size, channels)."""
    if image.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_RGBA2RGB)
    if image.ndim == 2 and channels == 3:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.ndim == 3 and channels == 1:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    if image.shape[:2] != (size, size):
        shrink = image.shape[0] > size or image.shape[1] > size
        image = cv2.resize(
            image, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        )
    return image.reshape(size, size, channels)


def to_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """A mask of class indices as int8 (size, size), resized with nearest neighbour (the
    pixel-centre rule, so it stays aligned with its image)."""
    mask = np.asarray(mask)
    if mask.shape[:2] != (size, size):
        mask = cv2.resize(
            mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST_EXACT
        )
    return mask.astype(np.int8)


def mask_problem(source, index: int, image: np.ndarray, num_classes: int):
    """(the mask, None) or (None, one line saying what is wrong with it)."""
    where = source.describe_mask(index)
    try:
        mask = np.asarray(source.mask(index))
    except Exception as exc:  # a decoder's error or the kind's own check, named by file
        return None, f"{where}: {exc}"
    if mask.ndim != 2:
        return None, f"{where}: a mask is one channel of class indices, got shape {mask.shape}"
    if mask.shape != image.shape[:2]:
        return None, (
            f"{where}: mask is {mask.shape[1]}x{mask.shape[0]} (WxH), its image "
            f"{source.describe(index)} is {image.shape[1]}x{image.shape[0]}; give masks of "
            "their images' size"
        )
    bad = np.setdiff1d(np.unique(mask), np.arange(num_classes))
    if bad.size:
        return None, (
            f"{where}: mask values {bad[:5].tolist()} are not class indices 0..{num_classes - 1}"
        )
    return mask, None


def _decode_split(
    tmp: Path,
    split: str,
    source: SplitSource,
    image_size: int,
    channels: int,
    skip_bad: bool,
    num_classes: int,
) -> tuple[int, list[str]]:
    """Decode one split into `<split>_images.npy` (and a mask source's masks into
    `<split>_labels.npy`); returns (images kept, problems)."""  # fmt: skip
    n = len(source)
    path = tmp / f"{split}_images.npy"
    shape = (image_size, image_size, channels)
    images = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, *shape))
    masks = None
    if has_masks(source):
        masks = np.lib.format.open_memmap(
            tmp / f"{split}_labels.npy", mode="w+", dtype=np.int8, shape=(n, image_size, image_size)
        )
    keep, problems = [], []
    for i in range(n):
        try:
            image = source.image(i)
            row = to_shape(image, image_size, channels)
        except Exception as exc:  # any decoder error: report the file, never hide it
            problems.append(f"{source.describe(i)}: unreadable image ({exc})")
            continue
        if masks is not None:
            mask, problem = mask_problem(source, i, np.asarray(image), num_classes)
            if problem:
                problems.append(problem)
                continue
            masks[len(keep)] = to_mask(mask, image_size)
        images[len(keep)] = row
        keep.append(i)
    for array, name in ((images, "images"), (masks, "labels")):
        if array is not None:
            array.flush()
            _truncate(tmp / f"{split}_{name}.npy", len(keep))
    del images, masks
    if problems and not skip_bad:
        return len(keep), problems
    idx = np.asarray(keep, dtype=np.int64)
    if not has_masks(source):
        np.save(tmp / f"{split}_labels.npy", np.asarray(source.labels, dtype=np.int64)[idx])
    if source.groups is not None:
        np.save(tmp / f"{split}_groups.npy", np.asarray(source.groups, dtype=str)[idx])
    return len(keep), problems


def _truncate(path: Path, count: int) -> None:
    """Keep the first `count` rows of a memory-mapped `.npy` file (bad items were skipped)."""
    full = np.load(path, mmap_mode="r")
    if len(full) == count:
        return
    kept_path = path.with_name(path.stem + "_kept.npy")
    kept = np.lib.format.open_memmap(
        kept_path, mode="w+", dtype=full.dtype, shape=(count, *full.shape[1:])
    )
    kept[:] = full[:count]
    kept.flush()
    del kept, full
    os.replace(kept_path, path)


def write_cache(
    dest: Path,
    sources: dict[str, SplitSource],
    classes: Sequence[str],
    image_size: int,
    channels: int,
    fp: str,
    extra: dict | None = None,
    on_bad_image: str = "error",
    task: str = "single_label",
) -> DataInfo:
    """Decode every split into `dest`; atomic: a crash leaves no half-written cache behind.

    An unreadable image raises `DataError` naming every bad file, unless `on_bad_image` is
    "skip": then bad images are left out and counted in `extra["skipped"]`.
    """
    dest = Path(dest)
    with folder_in_place(dest) as tmp:
        counts, all_problems, skipped = {}, [], {}
        for split, source in sources.items():
            counts[split], problems = _decode_split(
                tmp, split, source, image_size, channels, on_bad_image == "skip", len(classes)
            )
            all_problems += problems
            skipped[split] = len(problems)
        if all_problems and on_bad_image != "skip":
            raise DataError(
                [*all_problems[:MAX_PROBLEM_LINES], *more(all_problems), BAD_IMAGE_HINT]
            )
        empty = [s for s, c in counts.items() if c == 0]
        if empty:
            raise DataError([f"split {s}: no usable images" for s in empty])
        train = np.load(tmp / "train_images.npy", mmap_mode="r")
        sample = train[:: max(1, len(train) // 2000)].astype(np.float32) / 255.0
        info = DataInfo(
            path=str(dest),
            fingerprint=fp,
            classes=list(classes),
            channels=channels,
            image_size=image_size,
            counts=counts,
            mean=[round(float(v), 5) for v in sample.mean(axis=(0, 1, 2))],
            std=[round(float(max(v, 1e-3)), 5) for v in sample.std(axis=(0, 1, 2))],
            extra={**(extra or {}), "skipped": skipped, "skipped_files": all_problems[:100]},
            task=task,
        )
        (tmp / "meta.json").write_text(json.dumps(info.to_json(), indent=2))
    return info


def load_groups(path: str | Path, split: str) -> np.ndarray | None:
    """The group ids (patients, studies) of a cached split, when its source had them."""
    file = Path(path) / f"{split}_groups.npy"
    return np.load(file) if file.is_file() else None


def read_info(path: str | Path) -> DataInfo | None:
    meta = Path(path) / "meta.json"
    if not meta.is_file():
        return None
    info = DataInfo(**json.loads(meta.read_text()))
    info.path = str(path)
    return info


def load_targets(path: str | Path, split: str):
    """A split's targets alone: the cached labels or masks (N, ...), or for a volume cache the
    list of its volumes' masks (memory-mapped; each volume has its own shape)."""
    path = Path(path)
    labels = path / f"{split}_labels.npy"
    if labels.is_file() or not (path / f"{split}.json").is_file():
        return np.load(labels)
    count = len(json.loads((path / f"{split}.json").read_text()))
    return [np.load(path / split / f"{i}_mask.npy", mmap_mode="r") for i in range(count)]


def load_split(path: str | Path, split: str, mmap: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The images (memory-mapped by default) and labels of one cached split."""
    path = Path(path)
    images = np.load(path / f"{split}_images.npy", mmap_mode="r" if mmap else None)
    labels = np.load(path / f"{split}_labels.npy")
    return images, labels
