"""Synthetic CT-like phantom volumes with two labelled structures (the offline 3D default).

Each volume is drawn in Hounsfield units on an anisotropic grid (`native_spacing`, mm): air
around a body (soft tissue under a fat rim), an unlabelled spine (bright bone: a distractor), an
organ (class 1: two or three rotated, lobed ellipsoids merged, with a smoothly deformed surface,
brighter or darker than the tissue around it by a random contrast) and, in most volumes, one or
two lesions inside the organ (class 2: small deformed blobs, hypo- or hyperdense against the
organ; about one volume in five has none, so the empty-mask policy is exercised). Partial-volume
blur and noise of random strength follow. Every volume has its own seed (`seed`, split, index),
so a volume does not depend on how many others are drawn. The default window (40, 400) maps
soft tissue to 0..1 as a CT would be.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, PositiveFloat, field_validator
from scipy.ndimage import gaussian_filter
from scipy.spatial.transform import Rotation

from kdray.data.base import DataError
from kdray.data.volume_base import ArrayVolumeSource, Volume, VolumeConfigBase
from kdray.data.volume_prep import prepare_volume, spacing_problem

CLASSES = ["background", "organ", "lesion"]
AIR, FAT, TISSUE, BONE = -1000.0, -100.0, 40.0, 600.0


class Config(VolumeConfigBase):
    """`data: {kind: synthetic_volumes}`: CT-like phantoms, organ and lesion masks."""

    kind: Literal["synthetic_volumes"] = "synthetic_volumes"
    seed: int = 0
    train_size: int = Field(24, ge=2)
    valid_size: int = Field(8, ge=1)
    test_size: int = Field(8, ge=1)
    shape: tuple[int, int, int] = Field(
        (32, 32, 32), description="voxels drawn per axis, each side 8 to 256"
    )
    native_spacing: tuple[PositiveFloat, PositiveFloat, PositiveFloat] = Field(
        (1.0, 1.0, 2.0), description="mm per voxel the phantoms are drawn at"
    )
    noise: float = Field(1.0, ge=0, le=5, description="scales the image noise (1: 8-25 HU)")
    window: tuple[float, PositiveFloat] | None = (40.0, 400.0)

    @field_validator("shape")
    @classmethod
    def _shape_in_range(cls, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        # every phantom of every split is drawn in memory at once: 256^3 is ~3 GB for 40
        if not all(8 <= s <= 256 for s in shape):
            raise ValueError(f"each side 8 to 256 voxels (got {list(shape)})")
        return shape

    def declared_task(self) -> str | None:
        return "segmentation"


def _grid(shape, spacing) -> np.ndarray:
    """(3, D, H, W) voxel centres in mm, the origin at the volume's centre."""
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing, strict=True)]
    return np.stack(np.meshgrid(*axes, indexing="ij")).astype(np.float32)


def _blob(grid, centre, radii, rng, roughness: float) -> np.ndarray:
    """A rotated ellipsoid whose surface is pushed in and out by smooth noise (a mask)."""
    rotation = Rotation.random(random_state=rng).as_matrix().astype(np.float32)
    local = np.einsum(
        "ij,j...->i...", rotation, grid - np.asarray(centre, np.float32)[:, None, None, None]
    )
    level = sum((local[i] / radii[i]) ** 2 for i in range(3))
    wobble = gaussian_filter(rng.standard_normal(level.shape).astype(np.float32), 3.0)
    wobble /= np.abs(wobble).max() + 1e-6
    return level <= 1.0 + roughness * wobble


def draw_phantom(shape, spacing, noise: float, rng: np.random.Generator) -> Volume:
    """One phantom: the image in HU (float32) and its mask (0 background, 1 organ, 2 lesion)."""
    grid = _grid(shape, spacing)
    extent = np.asarray(shape) * np.asarray(spacing) / 2  # half the field of view per axis, mm
    body_radii = extent * rng.uniform(0.8, 0.95, 3)
    body = _blob(grid, rng.normal(0, 0.03, 3) * extent, body_radii, rng, 0.05)
    core = _blob(grid, np.zeros(3), body_radii * 0.85, rng, 0.05)
    image = np.where(body, np.where(core, TISSUE, FAT), AIR).astype(np.float32)
    # a cylinder along the last (inferior-superior) axis, posterior to the centre
    spine = grid[0] ** 2 + (grid[1] + extent[1] * 0.55) ** 2 <= (extent[:2].min() * 0.12) ** 2
    image[spine & body] = BONE * rng.uniform(0.6, 1.2)
    mask = np.zeros(shape, np.int8)
    organ_centre = rng.uniform(-0.25, 0.25, 3) * extent
    organ = np.zeros(shape, bool)
    for _ in range(int(rng.integers(2, 4))):  # lobes
        lobe_centre = organ_centre + rng.normal(0, 0.12, 3) * extent
        organ |= _blob(grid, lobe_centre, extent * rng.uniform(0.3, 0.5, 3), rng, 0.3)
    organ &= core & ~spine
    contrast = rng.uniform(20, 70) * rng.choice([1, -1], p=[0.7, 0.3])
    image[organ] += contrast
    mask[organ] = 1
    if rng.random() < 0.8 and organ.any():
        inside = np.argwhere(organ)
        for _ in range(int(rng.integers(1, 3))):
            centre = grid[(slice(None), *inside[rng.integers(len(inside))])]
            radius = np.full(3, rng.uniform(0.18, 0.3) * extent.min()) * rng.uniform(0.8, 1.25, 3)
            lesion = _blob(grid, centre, radius, rng, 0.25) & organ
            image[lesion] += rng.uniform(25, 60) * rng.choice([1, -1])
            mask[lesion] = 2
    sigma = rng.uniform(0.4, 0.9) / np.asarray(spacing) * min(spacing)
    image = gaussian_filter(image, sigma)  # partial-volume blur
    image += rng.normal(0, noise * rng.uniform(8, 25), shape).astype(np.float32)
    return Volume(image.astype(np.float32), tuple(float(s) for s in spacing), mask=mask)


def generate_split(cfg: Config, split_index: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` phantoms (images in HU, masks); the same seed gives the same arrays."""
    drawn = [
        draw_phantom(cfg.shape, cfg.native_spacing, cfg.noise,
                     np.random.default_rng([cfg.seed, split_index, i]))
        for i in range(count)
    ]  # fmt: skip
    return np.stack([v.image for v in drawn]), np.stack([v.mask for v in drawn])


class PhantomSource(ArrayVolumeSource):
    """Drawn phantoms, prepared (window, normalisation, resampling) one at a time."""

    def __init__(self, images, masks, cfg: Config, where: str):
        super().__init__(images, tuple(cfg.native_spacing), masks, where)
        self.cfg = cfg

    def volume(self, index: int) -> Volume:
        return prepare_volume(super().volume(index), self.cfg)


def open_sources(cfg: Config) -> tuple[list[str], dict[str, PhantomSource]]:
    """The synthetic train, valid and test splits."""
    if problem := spacing_problem(cfg, [("the phantoms", cfg.shape, cfg.native_spacing)]):
        raise DataError([problem])
    sizes = {"train": cfg.train_size, "valid": cfg.valid_size, "test": cfg.test_size}
    sources = {}
    for index, (split, count) in enumerate(sizes.items()):
        images, masks = generate_split(cfg, index, count)
        sources[split] = PhantomSource(images, masks, cfg, f"synthetic {split} volume")
    return list(CLASSES), sources
