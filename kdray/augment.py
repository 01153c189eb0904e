"""Train-time augmentation as albumentations pipelines (never applied to valid/test)."""

from __future__ import annotations

import albumentations as A


def build_train_augmentation(job, seed: int) -> A.Compose:
    """The default for radiographs: small rotations, shifts and zooms, mild exposure changes,
    and a horizontal flip (left and right limbs are mirror images). No vertical flips."""
    return A.Compose(
        [
            A.Affine(
                rotate=(-10, 10),
                translate_percent=(-0.05, 0.05),
                scale=(0.92, 1.08),
                border_mode=0,
                p=0.8,
            ),
            A.HorizontalFlip(p=0.5),
            A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5),
        ],
        seed=seed,
    )
