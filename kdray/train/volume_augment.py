"""Affine and intensity augmentation of training patches (`data.patch_augment`), with MONAI's
dictionary transforms, seeded per sample.

After a patch is drawn and flipped (`kdray.train.patches`), it is rotated about each axis and
zoomed per axis (`RandAffined`: trilinear for the image, nearest for the mask), its
intensities scaled and shifted, and gaussian noise added, each with probability `p`. Corners
that a rotation brings in from outside the patch are padding: intensity 0 (the volume's mean)
and no class (`UNLABELLED`: left out of the loss). MONAI's transforms draw from a
`RandomState` that every instance shares until reseeded (issue 32's notes), so `augment`
reseeds the whole pipeline from the sample's own seed before each patch: a resumed run, and a
teacher replaying its students' patches, get the same draws.
"""

from __future__ import annotations

import math

import numpy as np

from kdray.data.volume_base import PatchAugment
from kdray.tasks import UNLABELLED


def build_pipeline(cfg: PatchAugment, with_mask: bool):
    """MONAI's `Compose` of the four changes, over keys `image` and (segmentation) `mask`."""
    from monai.transforms import (
        Compose,
        RandAffined,
        RandGaussianNoised,
        RandScaleIntensityd,
        RandShiftIntensityd,
    )

    spatial = ["image", "mask"] if with_mask else ["image"]
    angle = math.radians(cfg.rotate)
    affine = RandAffined(
        spatial, prob=cfg.p, rotate_range=(angle,) * 3, scale_range=(cfg.scale,) * 3,
        mode=["bilinear", "nearest"][: len(spatial)], padding_mode="zeros",
    )  # fmt: skip
    return Compose(
        [
            affine,
            RandScaleIntensityd("image", factors=cfg.intensity, prob=cfg.p),
            RandShiftIntensityd("image", offsets=cfg.intensity, prob=cfg.p),
            RandGaussianNoised("image", prob=cfg.p, std=cfg.noise),
        ]
    )


def augment(
    pipeline, image: np.ndarray, mask: np.ndarray | None, seed: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """The patch (float32 (D, H, W)) and its mask (int64 class indices, or None) changed by
    `pipeline`, every draw from `seed`."""
    pipeline.set_random_state(seed=seed)
    data = {"image": image[None]}
    if mask is not None:  # shifted: UNLABELLED is 0, so the affine's zero padding is too
        data["mask"] = (mask - UNLABELLED).astype(np.float32)[None]
    out = pipeline(data)
    x = np.ascontiguousarray(np.asarray(out["image"][0], dtype=np.float32))
    if mask is None:
        return x, None
    y = np.asarray(out["mask"][0]).round().astype(np.int64) + UNLABELLED
    return x, np.ascontiguousarray(y)
