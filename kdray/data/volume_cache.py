"""Decode a volume data set once into memory-mappable arrays, one file per volume.

The 2D cache (`kdray.data.cache`) stacks a split into one (N, H, W, C) uint8 array at one image
size. Volumes differ: a Decathlon folder's CTs keep their own shapes after resampling to a
target spacing, a CT is ~10^7 voxels, and training reads patches of it; and the intensities are
floats after windowing and normalisation. So each volume is its own `.npy`, float16 (2 bytes a
voxel; normalised intensities need no more), memory-mapped on reading: a patch reads only its
pages. Layout of a cache folder:
    meta.json                   classes, task, counts (written last: the cache is complete)
    <split>.json                per volume: shape, spacing (mm), where it came from
    <split>/<i>_image.npy       float16 (D, H, W), prepared (resampled, windowed, normalised)
    <split>/<i>_mask.npy        int8 (D, H, W) class indices (segmentation)
    <split>_labels.npy          (N,) int64 class indices (classification), or (N, K) rows of
                                1 / 0 / -1 unknown (multi-label)
Bad volumes raise `DataError` naming every bad file; a crash leaves no half-written cache.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from kdray.data.files import folder_in_place, raise_problems
from kdray.data.volume_base import Volume, VolumeSource

SPLITS = ("train", "valid", "test")


@dataclass
class VolumeInfo:
    path: str
    fingerprint: str
    classes: list[str]
    task: str  # "segmentation" or "single_label"
    counts: dict[str, int]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def volume_problem(source: VolumeSource, index: int, volume: Volume, num_classes: int):
    """One line saying what is wrong with a decoded volume's shape or target, or None."""
    if volume.image.ndim != 3:
        return f"{source.describe(index)}: a 3D volume is expected, got shape {volume.image.shape}"
    if not source.masks:
        return label_problem(source.describe(index), volume.label, num_classes)
    mask = volume.mask
    if mask is None or mask.shape != volume.image.shape:
        shape = None if mask is None else list(mask.shape)
        return f"{source.describe_mask(index)}: mask of shape {shape}, its image " \
            f"{list(volume.image.shape)}"  # fmt: skip
    bad = np.setdiff1d(np.unique(mask), np.arange(num_classes))
    if bad.size:
        return f"{source.describe_mask(index)}: label values {bad[:5].tolist()} are outside " \
            f"the declared classes 0..{num_classes - 1}; fix the file or data.classes"  # fmt: skip
    return None


def label_problem(where: str, label, num_classes: int) -> str | None:
    """Why a classification volume's label is no class index 0..K-1 (or, a row, no K
    labels of 1, 0 or -1 unknown)."""
    if np.ndim(label) == 1:
        if len(label) != num_classes or not np.isin(label, (-1, 0, 1)).all():
            return f"{where}: label row {np.asarray(label).tolist()} is not {num_classes} " \
                "labels of 1, 0 or -1 (unknown)"  # fmt: skip
        return None
    if label is None or not 0 <= label < num_classes:
        return f"{where}: label {label} is not a class index 0..{num_classes - 1}"
    return None


def _write_split(tmp: Path, split: str, source: VolumeSource, num_classes: int) -> list[str]:
    """Decode one split into `tmp`; returns the problems (nothing is kept when there are any)."""
    folder = tmp / split
    folder.mkdir()
    entries, labels, problems = [], [], []
    for i in range(len(source)):
        try:
            volume = source.volume(i)
        except ValueError as exc:  # the source's own line, naming the file
            problems.append(str(exc))
            continue
        except Exception as exc:  # a decoder's error: name the file
            problems.append(f"{source.describe(i)}: unreadable volume ({exc})")
            continue
        problem = volume_problem(source, i, volume, num_classes)
        if problem:
            problems.append(problem)
            continue
        np.save(folder / f"{i}_image.npy", volume.image.astype(np.float16))
        if source.masks:
            np.save(folder / f"{i}_mask.npy", volume.mask.astype(np.int8))
        else:
            labels.append(volume.label)
        entries.append(
            {"shape": list(volume.image.shape), "spacing": [float(s) for s in volume.spacing],
             "source": source.describe(i)}
        )  # fmt: skip
    if not source.masks:
        np.save(tmp / f"{split}_labels.npy", np.asarray(labels, dtype=np.int64))
    (tmp / f"{split}.json").write_text(json.dumps(entries))
    return problems


def write_volume_cache(
    dest: Path, sources: dict[str, VolumeSource], classes: Sequence[str], fp: str, task: str
) -> VolumeInfo:
    """Decode every split into `dest`, atomically; `DataError` naming every bad file."""
    dest = Path(dest)
    with folder_in_place(dest) as tmp:
        problems = []
        for split, source in sources.items():
            problems += _write_split(tmp, split, source, len(classes))
        raise_problems(problems)
        counts = {split: len(source) for split, source in sources.items()}
        info = VolumeInfo(str(dest), fp, list(classes), task, counts)
        (tmp / "meta.json").write_text(json.dumps(asdict(info), indent=2))
    return info


def read_volume_info(path: str | Path) -> VolumeInfo | None:
    meta = Path(path) / "meta.json"
    if not meta.is_file():
        return None
    info = VolumeInfo(**json.loads(meta.read_text()))
    info.path = str(path)
    return info


@dataclass
class CachedVolumes:
    """One cached split: `volumes[i]` is a `Volume` whose arrays are memory-mapped (float16
    image, int8 mask) until a caller copies the part it reads."""

    folder: Path
    entries: list[dict]
    labels: np.ndarray | None

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> Volume:
        entry = self.entries[index]
        image = np.load(self.folder / f"{index}_image.npy", mmap_mode="r")
        spacing = tuple(entry["spacing"])
        if self.labels is not None:  # a class index, or a multi-label row
            label = self.labels[index]
            return Volume(image, spacing, label=int(label) if label.ndim == 0 else label)
        mask = np.load(self.folder / f"{index}_mask.npy", mmap_mode="r")
        return Volume(image, spacing, mask=mask)


def load_volumes(path: str | Path, split: str) -> CachedVolumes:
    path = Path(path)
    entries = json.loads((path / f"{split}.json").read_text())
    labels_file = path / f"{split}_labels.npy"
    labels = np.load(labels_file) if labels_file.is_file() else None
    return CachedVolumes(path / split, entries, labels)
