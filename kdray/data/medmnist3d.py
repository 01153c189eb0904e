"""A MedMNIST v2 3D `.npz` (OrganMNIST3D, NoduleMNIST3D, ...) by path, as a volume data kind.

The format (medmnist 3.0.2's `dataset.py`): keys `{train,val,test}_{images,labels}`; images
N x S x S x S uint8 (0-255, no channel axis; S is 28 or 64 for `{flag}_64.npz`), labels N x 1
class indices. `val` is our `valid`. The sets carry no voxel spacing (they are resized crops):
volumes are given 1 mm isotropic spacing, and intensities are scaled to 0..1 before the
configured normalisation, as medmnist's `__getitem__` divides by 255.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from kdray.data.base import DataError, DistinctNames
from kdray.data.files import raise_problems
from kdray.data.volume_base import ArrayVolumeSource, Volume, VolumeConfigBase
from kdray.data.volume_prep import prepare_volume

NPZ_SPLITS = {"train": "train", "valid": "val", "test": "test"}


class Config(VolumeConfigBase):
    """`data: {kind: medmnist3d, path: organmnist3d.npz}`."""

    kind: Literal["medmnist3d"] = "medmnist3d"
    path: Path = Field(description="a MedMNIST 3D .npz file")
    classes: DistinctNames | None = Field(
        None, min_length=2, description="class names by index; default: class_0, class_1, ..."
    )

    def declared_task(self) -> str | None:
        return "single_label"


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
    path = Path(cfg.path)
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
            images, labels = archive[names[0]], archive[names[1]]
            problem = _split_problem(path, key, images, labels)
            if problem:
                problems.append(problem)
                continue
            arrays[split] = (images, labels.reshape(-1).astype(np.int64))
    raise_problems(problems)
    found = 1 + max(int(labels.max(initial=0)) for _, labels in arrays.values())
    classes = list(cfg.classes) if cfg.classes else [f"class_{i}" for i in range(max(found, 2))]
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
    if images.dtype != np.uint8 or images.ndim != 4 or not len(images):
        return f"{path}: {key}_images has shape {list(images.shape)} and dtype {images.dtype}; " \
            "expected uint8 N x S x S x S (a 3D set; a 2D set is data kind medmnist)"  # fmt: skip
    if labels.shape not in ((len(images),), (len(images), 1)):
        return f"{path}: {key}_labels has shape {list(labels.shape)}; expected " \
            f"[{len(images)}, 1], one class index per volume"  # fmt: skip
    return None
