"""A MedMNIST v2 3D `.npz` (OrganMNIST3D, NoduleMNIST3D, ...) by path or by name, as a volume
data kind of single-label classification: each volume is one sample, trained and predicted whole.

The format (medmnist 3.0.2's `dataset.py`): keys `{train,val,test}_{images,labels}`; images
N x S x S x S uint8 (0-255, no channel axis; S is 28 or 64 for `{flag}_64.npz`), labels N x 1
class indices. `val` is our `valid`. The sets carry no voxel spacing (they are resized crops):
volumes are given 1 mm isotropic spacing, and intensities are scaled to 0..1 before the
configured normalisation, as medmnist's `__getitem__` divides by 255.

By `name` and `side` (28 or 64) the file is looked up in `folder` (default `~/.medmnist`, the
`medmnist` package's own) under the package's file name, downloaded there once and checked
against the registry's MD5, as the 2D sets are (`kdray.data.medmnist.data_file`); class names
come from the registry. `patch` defaults to the whole volume (side^3; by path, the archive's
own side): a classifier sees every volume centre-cropped or padded to it.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from kdray.data import medmnist_registry
from kdray.data.base import DataError, DistinctNames
from kdray.data.files import raise_problems
from kdray.data.medmnist_download import local_copy
from kdray.data.npz import read_array
from kdray.data.volume_base import ArrayVolumeSource, Volume, VolumeConfigBase
from kdray.data.volume_prep import prepare_volume, spacing_problem

NPZ_SPLITS = {"train": "train", "valid": "val", "test": "test"}


class Config(VolumeConfigBase):
    """`data: {kind: medmnist3d, path: organmnist3d.npz}` or `{kind: medmnist3d, name:
    organmnist3d, side: 28}`."""

    kind: Literal["medmnist3d"] = "medmnist3d"
    path: Path | None = Field(None, description="a MedMNIST 3D .npz file")
    name: str | None = Field(
        None, description="a MedMNIST v2 3D set by registry name (organmnist3d, ...) instead"
    )
    side: Literal[28, 64] = Field(
        28, description="with name: the published side in voxels, 28 or 64 (`size` resizes)"
    )
    folder: Path = Field(
        default_factory=lambda: Path.home() / ".medmnist",
        description="with name: where registry files are looked up and downloaded",
    )
    classes: DistinctNames | None = Field(
        None,
        min_length=2,
        description="class names by index; default: the registry's, else class_0, class_1, ...",
    )

    @model_validator(mode="before")
    @classmethod
    def _whole_volume_patch(cls, data: Any) -> Any:
        """A classifier's input defaults to the whole volume: `size` where volumes are resized,
        else side^3 by name, else the archive's side (28 when it cannot be read yet: opening it
        says why)."""
        if isinstance(data, dict) and "patch" not in data:
            if data.get("size") is not None:
                return {**data, "patch": data["size"]}
            side = data.get("side", 28) if data.get("name") else _archive_side(data.get("path"))
            data = {**data, "patch": (side, side, side)}
        return data

    @field_validator("folder")
    @classmethod
    def _absolute_folder(cls, folder: Path) -> Path:
        return folder.expanduser().resolve()

    @model_validator(mode="after")
    def _one_file(self) -> Config:
        if (self.path is None) == (self.name is None):
            raise ValueError("give exactly one of path (a .npz file) and name (a MedMNIST 3D set)")
        if self.name is not None:
            medmnist_registry.lookup_3d(self.name, self.side)  # a clear ValueError if unknown
        return self

    def declared_task(self) -> str | None:
        return "single_label"


def _archive_side(path: Any) -> int:
    """The side of the volumes in a MedMNIST 3D archive, read from the header of its
    `train_images` array alone; 28 where the file cannot be read."""
    try:
        with zipfile.ZipFile(Path(path)) as archive, archive.open("train_images.npy") as f:
            major, _ = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0
            if major != 1:
                read_header = np.lib.format.read_array_header_2_0
            shape = read_header(f)[0]
        return int(shape[1]) if len(shape) == 4 else 28
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile):
        return 28


def data_file(cfg: Config) -> Path:
    """The `.npz` to read: `path`, or the named set's local or freshly fetched copy."""
    if cfg.path is not None:
        return Path(cfg.path)
    return local_copy(medmnist_registry.lookup_3d(cfg.name, cfg.side), cfg.folder)


class MedMNIST3DSource(ArrayVolumeSource):
    """One split's uint8 volumes, scaled to 0..1 and prepared one at a time."""

    def __init__(self, images, labels, cfg: Config, where: str):
        super().__init__(images, (1.0, 1.0, 1.0), labels, where)
        self.cfg = cfg

    def volume(self, index: int) -> Volume:
        volume = super().volume(index)
        volume.image = volume.image / np.float32(255)
        return prepare_volume(volume, self.cfg)


def open_sources(cfg: Config) -> tuple[list[str], dict[str, MedMNIST3DSource]]:
    path = data_file(cfg)
    if not zipfile.is_zipfile(path):
        what = "does not exist" if not path.exists() else "is not an .npz (zip) archive"
        raise DataError([f"{path}: {what}; set data.path to a MedMNIST 3D .npz file"])
    arrays, problems = {}, []
    with np.load(path, allow_pickle=False) as archive:
        for split, key in NPZ_SPLITS.items():
            names = [f"{key}_images", f"{key}_labels"]
            missing = [n for n in names if n not in archive.files]
            if missing:
                problems.append(f"{path}: no array {missing} (MedMNIST 3D has {names})")
                continue
            images, labels = (read_array(archive, path, name) for name in names)
            problem = _split_problem(path, key, images, labels)
            if problem:
                problems.append(problem)
                continue
            arrays[split] = (images, labels.reshape(-1).astype(np.int64))
    sides = {images.shape[1:] for images, _ in arrays.values()}  # 1 mm voxels, one side
    if problem := spacing_problem(cfg, [(f"the volumes of {path}", s, (1.0,) * 3) for s in sides]):
        problems.append(problem)
    raise_problems(problems)
    found = 1 + max(int(labels.max(initial=0)) for _, labels in arrays.values())
    classes = _class_names(cfg, found)
    for split, (_, labels) in arrays.items():
        if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
            problems.append(
                f"{path}: {NPZ_SPLITS[split]}_labels has values outside the "
                f"declared classes 0..{len(classes) - 1}; fix data.classes"
            )
    raise_problems(problems)
    return classes, {
        split: MedMNIST3DSource(images, labels, cfg, f"{path} {NPZ_SPLITS[split]}_images")
        for split, (images, labels) in arrays.items()
    }


def _split_problem(path, key, images, labels) -> str | None:
    if images.ndim == 4 and not len(images):
        return f"{path}: the {key} split is empty ({key}_images holds no volumes); a MedMNIST " \
            "3D archive has volumes in train, val and test"  # fmt: skip
    if images.dtype != np.uint8 or images.ndim != 4:
        return f"{path}: {key}_images has shape {list(images.shape)} and dtype {images.dtype}; " \
            "expected uint8 N x S x S x S (a 3D set; a 2D set is data kind medmnist)"  # fmt: skip
    if labels.shape not in ((len(images),), (len(images), 1)):
        return f"{path}: {key}_labels has shape {list(labels.shape)}; expected " \
            f"[{len(images)}, 1], one class index per volume"  # fmt: skip
    if labels.dtype.kind not in "iub" and not _whole(labels):
        return f"{path}: {key}_labels holds values that are not whole numbers (dtype " \
            f"{labels.dtype}); give one class index 0, 1, ... per volume"  # fmt: skip
    return None


def _whole(labels: np.ndarray) -> bool:
    if labels.dtype.kind != "f":
        return False
    return bool(np.all(np.isfinite(labels) & (labels == np.round(labels))))


def _class_names(cfg: Config, found: int) -> list[str]:
    if cfg.classes:
        return list(cfg.classes)
    if cfg.name is not None:
        return list(medmnist_registry.lookup_3d(cfg.name, cfg.side).info.labels)
    return [f"class_{i}" for i in range(max(found, 2))]
