"""A MedMNIST `.npz` file (`train_*`, `val_*`, `test_*` images and labels) as a data kind.

MedMNIST v2 ships each data set as one NumPy archive: images N×H×W (gray) or N×H×W×3 (RGB)
uint8, labels N×1 (some re-packagings: N). Its `val` split is our `valid`. Multi-label sets
(ChestMNIST: labels N×14 of 0/1) are the multi-label task (`kdray.tasks.multi_label`); so is
any archive whose labels are N×L with L > 1 (0, 1, and -1 for an unknown label).

The file is named either by `path`, or by registry `name` and `size`: then it is looked up in
`folder` (default `~/.medmnist`, the `medmnist` package's own) under the package's file name,
downloaded there on first use and checked against the registry's MD5 before it is read; classes,
channels and image size default to the registry's. BreastMNIST at 28 ships with kdray
(`builtin/`) and is never downloaded.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from kdray.data import medmnist_registry
from kdray.data.base import DataConfigBase, DataError, DistinctNames
from kdray.data.cache import ArraySource
from kdray.data.files import empty_class_problems, raise_problems
from kdray.data.medmnist_download import local_copy
from kdray.data.npz import read_array

SPLIT_KEYS = {"train": "train", "valid": "val", "test": "test"}
BUILTIN = Path(__file__).resolve().parent / "builtin"
SHIPPED = {("breastmnist", 28): BUILTIN / "breastmnist.npz"}
NPY_MAGIC = b"\x93NUMPY"


class Config(DataConfigBase):
    """`data: {kind: medmnist, path: ...}` or `{kind: medmnist, name: ..., size: ...}`."""

    kind: Literal["medmnist"] = "medmnist"
    image_size: int | None = Field(
        None,
        ge=8,
        le=1024,
        description="images are resized to this square (default: the archive's own size; with "
        "name: its size)",
    )
    path: Path | None = Field(
        None, description="the .npz file; a relative path is resolved against the working directory"
    )
    name: str | None = Field(
        None, description="a MedMNIST v2 2D set by registry name (pneumoniamnist, ...) instead"
    )
    size: int = Field(28, description="with name: the published image size (28, 64, 128, 224)")
    folder: Path = Field(
        default_factory=lambda: Path.home() / ".medmnist",
        description="with name: where registry files are looked up and downloaded",
    )
    classes: DistinctNames | None = Field(
        None, min_length=2, description="class names by label index (default: the registry's)"
    )
    max_per_split: int | None = Field(
        None, ge=1, description="keep only the first N images of each split (quick runs)"
    )

    @model_validator(mode="before")
    @classmethod
    def _defaults_from_registry(cls, data: Any) -> Any:
        """A named set is trained at its own size and channels unless the job says otherwise."""
        if isinstance(data, dict) and isinstance(data.get("name"), str):
            known = medmnist_registry.registry().get(data["name"])
            if known is not None:
                data = {"image_size": data.get("size", 28), "channels": known.n_channels, **data}
        return data

    @field_validator("folder")
    @classmethod
    def _absolute_folder(cls, folder: Path) -> Path:
        return folder.expanduser().resolve()

    def unused_fields(self) -> set[str]:
        """A `path` section dumps, and so fingerprints its cache, as before `name` existed."""
        unused = {"name", "size", "folder"} if self.path is not None else {"path"}
        return super().unused_fields() | unused

    def declared_task(self) -> str | None:
        if self.name is None:
            return None
        task = medmnist_registry.lookup(self.name, self.size).info.task
        return "multi_label" if task.startswith("multi-label") else "single_label"

    @model_validator(mode="after")
    def _one_file(self) -> Config:
        if (self.path is None) == (self.name is None):
            raise ValueError("give exactly one of path (a .npz file) and name (a MedMNIST set)")
        if self.name is not None:
            medmnist_registry.lookup(self.name, self.size)  # a clear ValueError if unknown
        return self


def data_file(cfg: Config) -> Path:
    """The `.npz` to read: `path`, or the named set's shipped, local or freshly fetched copy."""
    if cfg.path is not None:
        return Path(cfg.path).expanduser()
    remote = medmnist_registry.lookup(cfg.name, cfg.size)
    shipped = SHIPPED.get((cfg.name, cfg.size))
    if shipped is not None and shipped.is_file():
        return shipped
    return local_copy(remote, cfg.folder)


def load_arrays(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{split: (images, labels)} from the archive, labels int64: (N,) class indices (an N×1
    column flattened), or N×L rows of labels."""
    with _open_npz(path) as archive:
        wanted = [f"{key}_{part}" for key in SPLIT_KEYS.values() for part in ("images", "labels")]
        missing = [key for key in wanted if key not in archive.files]
        if missing:
            raise DataError(
                [f"{path}: no array {key!r} (a MedMNIST .npz has {wanted})" for key in missing]
            )
        arrays, problems = {}, []
        for split, key in SPLIT_KEYS.items():
            images = read_array(archive, path, f"{key}_images")
            labels = read_array(archive, path, f"{key}_labels")
            problems += _shape_problems(path, key, images, labels)
            column = labels.ndim == 2 and labels.shape[1] == 1
            arrays[split] = (images, labels.reshape(-1) if column else labels)
    raise_problems(problems)
    return {s: (im, lab.astype(np.int64)) for s, (im, lab) in arrays.items()}


def _open_npz(path: Path) -> np.lib.npyio.NpzFile:
    """The archive, or DataError with one line saying what the file is instead."""
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise DataError([f"{path}: {what}; set data.path to a MedMNIST .npz file"])
    with open(path, "rb") as f:
        head = f.read(len(NPY_MAGIC))
    if head == NPY_MAGIC:
        raise DataError([f"{path}: a single .npy array, not a MedMNIST .npz archive"])
    if not zipfile.is_zipfile(path):
        raise DataError(
            [
                f"{path}: not an .npz file (an .npz is a zip archive of .npy arrays; this is "
                "not a zip archive): point data.path at a MedMNIST .npz"
            ]
        )
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError([f"{path}: not a readable .npz archive ({exc})"]) from None


def _shape_problems(path: Path, key: str, images: np.ndarray, labels: np.ndarray) -> list[str]:
    problems = []
    gray = images.ndim == 3
    colour = images.ndim == 4 and images.shape[3] in (1, 3)
    if not (gray or colour):
        problems.append(f"{path}: {key}_images has shape {images.shape}; expected N×H×W[×3]")
    elif len(images) == 0:  # whatever its labels' dtype, this is the one thing to fix
        return [
            f"{path}: the {key} split is empty (0 images); kdray needs images in train, val "
            "and test: re-export the file with all three"
        ]
    if images.dtype != np.uint8:
        problems.append(f"{path}: {key}_images has dtype {images.dtype}; expected uint8")
    if labels.ndim not in (1, 2) or not np.issubdtype(labels.dtype, np.integer):
        problems.append(
            f"{path}: {key}_labels has shape {labels.shape} and dtype {labels.dtype}; "
            "expected N or N×1 integers (classes), or N×L integers (multi-label)"
        )
    elif len(labels) != len(images):
        problems.append(f"{path}: {len(images)} {key}_images but {len(labels)} {key}_labels")
    return problems


def open_sources(cfg: Config) -> tuple[list[str], dict[str, ArraySource]]:
    """The three splits of the archive, each cut to `max_per_split` images when set."""
    path = data_file(cfg)
    arrays = load_arrays(path)
    classes = _class_names(cfg, arrays)
    if arrays["train"][1].ndim == 2:
        raise_problems(label_matrix_problems(path, arrays, classes))
    else:
        if cfg.classes is None and cfg.name is None:  # classes read off the labels
            raise_problems(stray_label_problems(path, arrays))
        raise_problems(class_index_problems(path, arrays, classes))
        raise_problems(
            empty_class_problems(
                classes, arrays["train"][1], "train", str(path), "check data.classes"
            )
        )
    sources = {}
    for split, (images, labels) in arrays.items():
        n = len(labels) if cfg.max_per_split is None else min(cfg.max_per_split, len(labels))
        sources[split] = ArraySource(images[:n], labels[:n])
    return classes, sources


def class_index_problems(path: Path, arrays: dict, classes: list[str]) -> list[str]:
    """Single-label: every label an index of `classes`."""
    problems = []
    for split, (_, labels) in arrays.items():
        bad = np.unique(labels[(labels < 0) | (labels >= len(classes))])
        if len(bad):
            problems.append(
                f"{path}: {SPLIT_KEYS[split]}_labels has labels {bad.tolist()} outside the "
                f"{len(classes)} classes {classes}; fix data.classes"
            )
    return problems


def stray_label_problems(path: Path, arrays: dict) -> list[str]:
    """Labels above a gap of labels that never occur: labels 0/1 plus one stray 7 would be
    read as 8 classes, 2-6 without images. One line per such label, naming where it is."""
    present = np.unique(np.concatenate([labels for _, labels in arrays.values()]))
    if len(present) == 0 or present[0] < 0:  # negative labels: class_index_problems says so
        return []
    gap = next((k for k in range(int(present[-1])) if k not in present), None)
    if gap is None:
        return []
    after = present[present > gap]
    unused = f"{gap}-{int(after[0]) - 1}" if after[0] - 1 > gap else f"{gap}"
    problems = []
    for value in after.tolist():
        where = []
        for split, (_, labels) in arrays.items():
            hits = np.flatnonzero(labels == value)
            if len(hits):
                more = f" and {len(hits) - 1} more" if len(hits) > 1 else ""
                where.append(f"{SPLIT_KEYS[split]}_labels[{hits[0]}]{more}")
        problems.append(
            f"{path}: label {value} ({', '.join(where)}) lies above labels that never occur "
            f"({unused}), so it would make classes without images; if it is a mistake, fix it, "
            "else name every class in data.classes"
        )
    return problems


def label_matrix_problems(path: Path, arrays: dict, labels_named: list[str]) -> list[str]:
    """Multi-label: every split N×L with L the number of label names, values 0, 1 or -1."""
    problems = []
    for split, (_, labels) in arrays.items():
        key = f"{SPLIT_KEYS[split]}_labels"
        if labels.ndim != 2 or labels.shape[1] != len(labels_named):
            problems.append(
                f"{path}: {key} has shape {labels.shape}; every split needs one column per "
                f"label: {len(labels_named)} ({labels_named})"
            )
            continue
        bad = np.unique(labels[~np.isin(labels, (-1, 0, 1))])
        if len(bad):
            problems.append(
                f"{path}: {key} has values {bad.tolist()[:5]}; a multi-label row holds 1 "
                "(present), 0 (absent) or -1 (unknown)"
            )
    return problems


def _class_names(cfg: Config, arrays: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[str]:
    """The job's names, else the registry's for a named set, else '0', '1', ... ."""
    if cfg.classes:
        return list(cfg.classes)
    if cfg.name is not None:
        return list(medmnist_registry.lookup(cfg.name, cfg.size).info.labels)
    if arrays["train"][1].ndim == 2:  # one name per label column
        return [str(i) for i in range(arrays["train"][1].shape[1])]
    all_labels = np.concatenate([labels for _, labels in arrays.values()])
    top = int(all_labels.max()) if len(all_labels) else -1
    return [str(i) for i in range(max(top + 1, 2))]
