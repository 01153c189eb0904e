"""Synthetic breast-ultrasound-like images with lesion masks: the offline segmentation default.

Each image is a linear-probe B-mode scan drawn procedurally: tissue layers (bright skin line,
dark fat, brighter textured gland) whose echoes fade with depth, imaged through speckle (the
magnitude of a complex Gaussian field blurred by an elongated point-spread function, then
log-compressed, as B-mode envelopes are). A lesion is a hypoechoic region of varied shape (an
ellipse, a lobulated outline, or an irregular spiculated one), size (8% to 40% of the width)
and contrast (from clearly dark to nearly isoechoic), with posterior acoustic enhancement
(cyst-like) or shadowing (solid) below it; a share of images (`empty_fraction`) has no lesion,
as BUSI's normal class. The mask is the lesion's outline at the drawing's resolution.

`lesions: binary` gives classes background and lesion; `benign_malignant` labels smooth
outlines (ellipse, lobulated) benign and spiculated ones malignant, a three-class mask.
Images are drawn at `native_size`; the cache resizes images and masks like any other source.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import cv2
import numpy as np
from pydantic import Field

from kdray.data.base import DataConfigBase
from kdray.data.cache import MaskArraySource

SHAPES = ("ellipse", "lobulated", "spiculated")
CLASSES = {
    "binary": ["background", "lesion"],
    "benign_malignant": ["background", "benign", "malignant"],
}


def tissue(size: int, rng: np.random.Generator) -> np.ndarray:
    """Echogenicity (size, size) in [0, 1]: skin line, fat, textured gland, fading with depth."""
    depth = np.linspace(0, 1, size, dtype=np.float32)[:, None]
    skin = rng.uniform(0.03, 0.06)
    fat = skin + rng.uniform(0.1, 0.25)
    echo = np.where(depth < skin, 0.95, np.where(depth < fat, 0.35, 0.6)).astype(np.float32)
    echo = np.broadcast_to(echo, (size, size)).copy()
    texture = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), size / 25)
    echo += 0.15 * texture / (texture.std() + 1e-6) * (depth > fat)
    return np.clip(echo * np.exp(-rng.uniform(0.3, 1.0) * depth), 0.02, 1)


def outline(size: int, shape: str, rng: np.random.Generator) -> tuple[np.ndarray, tuple]:
    """A lesion's boolean mask and its bounding columns and bottom row."""
    radius = rng.uniform(0.04, 0.2) * size  # diameter 8% to 40% of the width
    cy, cx = rng.uniform(0.35, 0.75) * size, rng.uniform(0.25, 0.75) * size
    angle, aspect = rng.uniform(0, math.pi), rng.uniform(0.5, 1.0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = (-dx * math.sin(angle) + dy * math.cos(angle)) / aspect
    theta, dist = np.arctan2(v, u), np.hypot(u, v)
    edge = np.ones_like(theta)
    if shape == "lobulated":
        for k in (2, 3, 4):
            edge += rng.uniform(0.05, 0.15) * np.cos(k * theta + rng.uniform(0, 2 * math.pi))
    elif shape == "spiculated":
        for k in rng.integers(5, 14, size=4):
            edge += rng.uniform(0.05, 0.2) * np.cos(k * theta + rng.uniform(0, 2 * math.pi))
    mask = dist <= radius * edge
    if not mask.any():  # too small to cover a pixel centre at this size: its centre pixel
        mask[int(cy), int(cx)] = True
    cols = np.flatnonzero(mask.any(axis=0))
    return mask, (cols.min(), cols.max() + 1, np.flatnonzero(mask.any(axis=1)).max() + 1)


def speckle(size: int, rng: np.random.Generator) -> np.ndarray:
    """Fully developed speckle: |complex Gaussian| blurred by an axially short, laterally wide
    point-spread function, normalised to mean 1."""
    field = rng.normal(size=(2, size, size)).astype(np.float32)
    sigma = (max(0.4, size / 200), max(0.8, size / 90))  # (axial, lateral) in pixels
    field = [cv2.GaussianBlur(f, (0, 0), sigmaX=sigma[1], sigmaY=sigma[0]) for f in field]
    envelope = np.hypot(*field)
    return envelope / envelope.mean()


def draw_scan(
    size: int, lesions: str, empty_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One uint8 (size, size) scan and its mask of class indices."""
    echo = tissue(size, rng)
    mask = np.zeros((size, size), np.int8)
    if rng.random() >= empty_fraction:
        shape = SHAPES[rng.integers(len(SHAPES))]
        inside, (left, right, bottom) = outline(size, shape, rng)
        contrast = rng.uniform(0.15, 0.75)  # lesion echo / tissue echo: dark to near-isoechoic
        soft = cv2.GaussianBlur(inside.astype(np.float32), (0, 0), max(0.5, size / 150))
        echo = echo * (1 - soft * (1 - contrast))
        below = np.zeros_like(echo)
        fade = np.exp(-np.arange(size - bottom) / (0.3 * size))[:, None]
        below[bottom:, left:right] = fade * (1 if shape == "ellipse" else -1)
        echo *= 1 + rng.uniform(0.2, 0.5) * cv2.GaussianBlur(below, (0, 0), size / 60)
        label = 1 if lesions == "binary" or shape != "spiculated" else 2
        mask[inside] = label
    image = np.log1p(30 * echo * speckle(size, rng)) / math.log1p(30 * 2.5)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8), mask


def generate_split(count: int, size: int, lesions: str, empty_fraction: float, seed: int):
    """`count` scans and masks; the same seed gives the same arrays."""
    rng = np.random.default_rng(seed)
    pairs = [draw_scan(size, lesions, empty_fraction, rng) for _ in range(count)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


class Config(DataConfigBase):
    """`data: {kind: synthetic_ultrasound}`: procedural ultrasound scans with lesion masks."""

    kind: Literal["synthetic_ultrasound"] = "synthetic_ultrasound"
    image_size: int = Field(64, ge=8, le=1024, description="images are resized to this square")
    seed: int = Field(0, description="seeds the drawing of every scan")
    lesions: Literal["binary", "benign_malignant"] = Field(
        "binary", description="binary: lesion vs background; benign_malignant: 3 classes"
    )
    empty_fraction: float = Field(
        0.1, ge=0, le=1, description="share of lesion-free scans (their masks are empty)"
    )
    train_size: int = Field(240, ge=10, description="scans in train")
    valid_size: int = Field(60, ge=10, description="scans in valid")
    test_size: int = Field(60, ge=10, description="scans in test")
    native_size: int = Field(128, ge=16, le=1024, description="size the scans are drawn at")

    holds_masks: ClassVar[bool] = True

    def declared_task(self) -> str | None:
        return "segmentation"


def open_sources(cfg: Config) -> tuple[list[str], dict]:
    """The synthetic splits of a `data: {kind: synthetic_ultrasound}` job section."""
    sizes = {"train": cfg.train_size, "valid": cfg.valid_size, "test": cfg.test_size}
    sources = {}
    for index, (split, count) in enumerate(sizes.items()):
        images, masks = generate_split(
            count, cfg.native_size, cfg.lesions, cfg.empty_fraction, seed=cfg.seed * 1000 + index
        )
        sources[split] = MaskArraySource(images, masks, where=f"synthetic {split} scan")
    return list(CLASSES[cfg.lesions]), sources
