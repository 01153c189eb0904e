"""A MedMNIST `.npz` file (`train_*`, `val_*`, `test_*` images and labels) as a data kind.

MedMNIST v2 ships each data set as one NumPy archive: images N×H×W (gray) or N×H×W×3 (RGB)
uint8, labels N×1 (some re-packagings: N). Its `val` split is our `valid`. Multi-label sets
(ChestMNIST: labels N×14) are not single-label classification and are refused.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from kdray.data.base import DataConfigBase, DataError, DistinctNames
from kdray.data.cache import ArraySource
from kdray.data.files import empty_class_problems, raise_problems

SPLIT_KEYS = {"train": "train", "valid": "val", "test": "test"}


class Config(DataConfigBase):
    """`data: {kind: medmnist, path: ...}`: one MedMNIST `.npz` archive."""

    kind: Literal["medmnist"] = "medmnist"
    path: Path = Field(
        description="the .npz file; a relative path is resolved against the working directory"
    )
    classes: DistinctNames | None = Field(
        None, min_length=2, description="class names by label index (default: '0', '1', ...)"
    )
    max_per_split: int | None = Field(
        None, ge=1, description="keep only the first N images of each split (quick runs)"
    )


def load_arrays(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{split: (images, labels)} from the archive, labels flattened to (N,) int64."""
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise DataError([f"{path}: {what}; set data.path to a MedMNIST .npz file"])
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError([f"{path}: not a NumPy .npz archive ({exc})"]) from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError([f"{path}: a single .npy array, not a MedMNIST .npz archive"])
    with archive:
        wanted = [f"{key}_{part}" for key in SPLIT_KEYS.values() for part in ("images", "labels")]
        missing = [key for key in wanted if key not in archive.files]
        if missing:
            raise DataError(
                [f"{path}: no array {key!r} (a MedMNIST .npz has {wanted})" for key in missing]
            )
        arrays, problems = {}, []
        for split, key in SPLIT_KEYS.items():
            images, labels = archive[f"{key}_images"], archive[f"{key}_labels"]
            problems += _shape_problems(path, key, images, labels)
            arrays[split] = (images, labels.reshape(-1) if labels.ndim == 2 else labels)
    raise_problems(problems)
    return {s: (im, lab.astype(np.int64)) for s, (im, lab) in arrays.items()}


def _shape_problems(path: Path, key: str, images: np.ndarray, labels: np.ndarray) -> list[str]:
    problems = []
    gray = images.ndim == 3
    colour = images.ndim == 4 and images.shape[3] in (1, 3)
    if not (gray or colour):
        problems.append(f"{path}: {key}_images has shape {images.shape}; expected N×H×W[×3]")
    if images.dtype != np.uint8:
        problems.append(f"{path}: {key}_images has dtype {images.dtype}; expected uint8")
    if labels.ndim == 2 and labels.shape[1] != 1:
        problems.append(
            f"{path}: {key}_labels has shape {labels.shape}: multi-label data is not supported"
        )
    elif labels.ndim not in (1, 2) or not np.issubdtype(labels.dtype, np.integer):
        problems.append(
            f"{path}: {key}_labels has shape {labels.shape} and dtype {labels.dtype}; "
            "expected N or N×1 integers"
        )
    elif len(labels) != len(images):
        problems.append(f"{path}: {len(images)} {key}_images but {len(labels)} {key}_labels")
    return problems


def open_sources(cfg: Config) -> tuple[list[str], dict[str, ArraySource]]:
    """The three splits of the archive, each cut to `max_per_split` images when set."""
    arrays = load_arrays(Path(cfg.path).expanduser())
    all_labels = np.concatenate([labels for _, labels in arrays.values()])
    top = int(all_labels.max()) if len(all_labels) else -1
    classes = list(cfg.classes) if cfg.classes else [str(i) for i in range(max(top + 1, 2))]
    problems = []
    for split, (_, labels) in arrays.items():
        bad = np.unique(labels[(labels < 0) | (labels >= len(classes))])
        if len(bad):
            problems.append(
                f"{cfg.path}: {SPLIT_KEYS[split]}_labels has labels {bad.tolist()} outside the "
                f"{len(classes)} classes {classes}; fix data.classes"
            )
    raise_problems(problems)
    problems = empty_class_problems(
        classes, arrays["train"][1], "train", str(cfg.path), "check data.classes"
    )
    raise_problems(problems)
    sources = {}
    for split, (images, labels) in arrays.items():
        n = len(labels) if cfg.max_per_split is None else min(cfg.max_per_split, len(labels))
        sources[split] = ArraySource(images[:n], labels[:n])
    return classes, sources
