"""What every volume data kind shares: a decoded volume, a split of them, and the `data:`
fields that say how volumes are prepared (resampling, CT window, normalisation).

A volume is a 3D array in RAS+ axis order (NIfTI files are reoriented on reading) with its
spacing in millimetres along each array axis; its target is a mask of class indices of the same
shape (segmentation) or one class index (classification). Multi-channel (4D) volumes are not
read yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, model_validator

from kdray.data.base import absolute_paths

Spacing = tuple[float, float, float]
#: the sides `size` may give a volume, in voxels (what a resampled volume may have too)
SIZE_MIN, SIZE_MAX = 4, 1024


@dataclass
class Volume:
    """One decoded volume: `image` float32 (D, H, W), `spacing` mm per array axis, and either
    `mask` (int8 (D, H, W) class indices) or `label` (a class index, or for multi-label a
    row of 1 / 0 / -1 unknown per label)."""

    image: np.ndarray
    spacing: Spacing
    mask: np.ndarray | None = None
    label: int | np.ndarray | None = None


class VolumeSource(Protocol):
    """What a volume data kind hands the volume cache for one split."""

    masks: bool  # targets are masks (segmentation), else one class per volume

    def __len__(self) -> int: ...

    def volume(self, index: int) -> Volume:
        """The volume, decoded; raises ValueError with one line naming the file."""
        ...

    def describe(self, index: int) -> str:
        """Where volume `index` comes from (its file), for error messages."""
        ...

    def describe_mask(self, index: int) -> str:
        """Where volume `index`'s mask comes from (its label file), for error messages."""
        ...


@dataclass
class ArrayVolumeSource:
    """A split already in memory: float32 images (N, D, H, W) at one spacing, and masks
    (N, D, H, W) or labels (N,)."""

    images: np.ndarray
    spacing: Spacing
    masks_or_labels: np.ndarray
    where: str = "volume"

    @property
    def masks(self) -> bool:
        return self.masks_or_labels.ndim == 4

    def __len__(self) -> int:
        return len(self.images)

    def volume(self, index: int) -> Volume:
        image = np.asarray(self.images[index], dtype=np.float32)
        target = self.masks_or_labels[index]
        if self.masks:
            return Volume(image, self.spacing, mask=np.asarray(target))
        return Volume(image, self.spacing, label=int(target))

    def describe(self, index: int) -> str:
        return f"{self.where} {index}"

    def describe_mask(self, index: int) -> str:
        return f"{self.where} {index}'s mask"


#: `data:` fields that say how a run trains on the cached volumes, not how they are prepared:
#: left out of the cache's fingerprint (another patch reuses the same decode)
TRAINING_FIELDS = frozenset({"patch", "foreground", "patch_augment"})


class PatchAugment(BaseModel):
    """`data.patch_augment`: small affine and intensity changes of each training patch, after
    its flips (`train.augment: true`); each change is applied with probability `p`."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    rotate: float = Field(
        15.0, ge=0, le=45, description="rotation about each axis, up to this many degrees"
    )
    scale: float = Field(0.1, ge=0, le=0.5, description="zoom per axis by 1 ± up to this")
    intensity: float = Field(
        0.1, ge=0, le=1, description="intensities times 1 ± up to this, then plus ± up to this"
    )
    noise: float = Field(0.05, ge=0, le=1, description="std of added gaussian noise")
    p: float = Field(0.3, ge=0, le=1, description="probability of each change per patch")


class VolumeConfigBase(BaseModel):
    """Fields common to every volume kind's `data:` section: how volumes are prepared before
    they are cached (in this order: resampled, windowed, normalised), and the patches a run
    trains on. The class attributes answer what the job's checks ask of any data section."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    spatial_rank: ClassVar[int] = 3
    channels: ClassVar[int] = 1  # multi-channel (4D) volumes are not read yet
    task_type: ClassVar[None] = None  # the kind says its task (`declared_task`)
    on_bad_image: ClassVar[str] = "error"

    patch: tuple[int, int, int] = Field(
        (32, 32, 32),
        description="training patch in voxels per axis (D, H, W); a volume larger than it "
        "trains on patches and is predicted whole by sliding window, a smaller one is padded",
    )
    foreground: float = Field(
        0.5,
        ge=0,
        le=1,
        description="share of training patches centred on a foreground voxel (a class > 0); "
        "the rest are centred anywhere",
    )
    patch_augment: PatchAugment | None = Field(
        None,
        description="with train.augment true, also rotate, zoom, scale and shift intensities "
        "and add noise to training patches ({} for the defaults); none: flips only",
    )

    spacing: tuple[PositiveFloat, PositiveFloat, PositiveFloat] | None = Field(
        None, description="resample to this spacing in mm per axis (RAS order); none: keep"
    )
    size: tuple[int, int, int] | None = Field(
        None, description="then resize to this shape in voxels; none: keep"
    )
    window: tuple[float, PositiveFloat] | None = Field(
        None,
        description="CT window [level, width] in HU: intensities clipped to it and scaled "
        "to 0..1 (e.g. [40, 400] soft tissue); none: no window",
    )
    normalise: Literal["volume", "none"] = Field(
        "volume", description="volume: zero mean, unit variance per volume (after the window)"
    )

    @model_validator(mode="before")
    @classmethod
    def _absolute_paths(cls, data: Any) -> Any:
        return absolute_paths(data)

    @model_validator(mode="after")
    def _size_in_range(self) -> VolumeConfigBase:
        if self.size is not None and not all(SIZE_MIN <= s <= SIZE_MAX for s in self.size):
            raise ValueError(f"size {list(self.size)}: each side {SIZE_MIN} to {SIZE_MAX} voxels")
        return self

    @model_validator(mode="after")
    def _patch_in_range(self) -> VolumeConfigBase:
        if not all(8 <= s <= 512 for s in self.patch):
            raise ValueError(f"patch {list(self.patch)}: each side 8 to 512 voxels")
        return self

    @property
    def image_size(self) -> int:
        """The patch's largest side (what the job's checks size models by)."""
        return max(self.patch)

    def declared_task(self) -> str | None:
        return None

    def task_type_problem(self) -> str | None:
        return None

    def file_stamps(self) -> dict[str, list]:
        return {}  # a folder's NIfTI files are stamped by `kdray.data.volumes`
