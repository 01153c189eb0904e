"""Train-time augmentation as albumentations pipelines (never applied to valid/test).

A job declares its pipeline as a list of albumentations transforms by class name:

    train:
      augment:
        - {name: Affine, rotate: [-10, 10], translate_percent: [-0.05, 0.05], p: 0.8}
        - {name: RandomBrightnessContrast, brightness_limit: 0.1, contrast_limit: 0.1}

`augment: true` means `DEFAULT_PIPELINE`, `augment: false` no augmentation.

Segmentation masks go through the same pipeline as their image (`augment_with_mask`): spatial
transforms (flips, rotations, crops, affine) move the mask with the image, by nearest neighbour;
pixel transforms (brightness, noise) leave it alone.
"""

from __future__ import annotations

import inspect
import os
from inspect import Parameter
from typing import Any

# albumentations asks PyPI for a newer version at import: nothing may reach out at run time
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402

# Suits radiographs: small rotations, shifts and zooms, mild exposure changes, and a horizontal
# flip (left and right limbs mirror each other). No vertical flips: anatomy has an up.
DEFAULT_PIPELINE: list[dict[str, Any]] = [
    {
        "name": "Affine",
        "rotate": [-10, 10],
        "translate_percent": [-0.05, 0.05],
        "scale": [0.92, 1.08],
        "border_mode": 0,
        "p": 0.8,
    },
    {"name": "HorizontalFlip", "p": 0.5},
    {"name": "RandomBrightnessContrast", "brightness_limit": 0.1, "contrast_limit": 0.1, "p": 0.5},
]


def pipeline_spec(augment: bool | list[dict[str, Any]]) -> list[dict[str, Any]]:
    if augment is True:
        return DEFAULT_PIPELINE
    return [] if augment is False else augment


def build_transform(step: dict[str, Any]) -> A.BasicTransform:
    """One transform from `{name: <albumentations class>, **params}`; raises ValueError."""
    params = dict(step)
    name = params.pop("name", None)
    if name is None:
        raise ValueError(
            "has no name; write {name: <albumentations transform>, ...}, e.g. "
            "{name: HorizontalFlip, p: 0.5}"
        )
    cls = getattr(A, str(name), None) if name else None
    if not (isinstance(cls, type) and issubclass(cls, A.BasicTransform)):
        raise ValueError(
            f"{name!r} is not an albumentations transform (e.g. Affine, HorizontalFlip)"
        )
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
    unknown = unknown_arguments(cls, params)
    if unknown:  # albumentations would only warn and ignore them
        allowed = [k for k in inspect.signature(cls).parameters if k != "kwargs"]
        raise ValueError(f"{name}: unknown argument(s) {unknown}; {name} takes {allowed}")
    try:
        return cls(**params)
    except Exception as exc:  # albumentations validates its own parameters
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        lines = [
            ln for ln in lines if "errors.pydantic.dev" not in ln and "validation error" not in ln
        ]
        raise ValueError(f"{name}: {' '.join(lines) or type(exc).__name__}") from None


def unknown_arguments(cls: type, params: dict[str, Any]) -> list[str]:
    """Arguments the transform's constructor does not name."""
    signature = inspect.signature(cls).parameters
    return [k for k in params if k not in signature or signature[k].kind is Parameter.VAR_KEYWORD]


def build_train_augmentation(augment: bool | list[dict[str, Any]], seed: int) -> A.Compose | None:
    steps = pipeline_spec(augment)
    if not steps:
        return None
    return A.Compose([build_transform(step) for step in steps], seed=seed)


def augment_problems(augment: bool | list[dict[str, Any]], size: int, channels: int) -> list[str]:
    """Steps of `train.augment` that fail on, or change, a training image: each step, with
    `p: 1`, runs once in order on a blank `size` x `size` image (and mask) as the loader hands
    it over (uint8, height x width x channels). Its output must stay one: the conversion to a
    tensor and the normalisation are kdray's, and valid/test images keep `data.image_size`."""
    import warnings

    import numpy as np

    if not isinstance(augment, list):
        return []  # true: DEFAULT_PIPELINE, which keeps the size
    image = np.zeros((size, size, channels), np.uint8)
    mask = np.zeros((size, size), np.uint8)
    resized = ""
    for i, step in enumerate(augment):
        where = f"train.augment step {i} ({step.get('name')})"
        try:
            transform = build_transform({**step, "p": 1.0})
        except ValueError:
            return []  # said by the field's own check
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = transform(image=image, mask=mask)
        except Exception as exc:
            return [f"{where}: fails on a {size}x{size} image: {_first_line(exc)}; drop or fix it"]
        before, (image, mask) = image.shape, (out["image"], out["mask"])
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
            kind = f"{type(image).__name__} {getattr(image, 'dtype', '')}".strip()
            return [
                f"{where}: turns the image into a {kind}; kdray converts and normalises images "
                "itself: drop the step"
            ]
        if image.shape[:2] != before[:2]:
            resized = where  # a later step may restore the size (a crop, then a pad)
    if image.shape[:2] != (size, size):
        return [
            f"{resized}: changes the training images from {size}x{size} to "
            f"{image.shape[0]}x{image.shape[1]}, while valid and test images stay at "
            f"data.image_size {size}; give it size {size}, or drop it and set data.image_size"
        ]
    return []


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def augment_with_mask(augment, image, mask) -> tuple:
    """(image, mask) through `augment` together (None: unchanged). The mask (class indices, -1
    unknown) travels shifted by one as uint8, so that the pixels a transform fills in from
    outside the image (albumentations' `fill_mask`, 0) come back as -1: unknown, left out of
    the loss, rather than taken for background."""
    import numpy as np

    mask = np.asarray(mask)
    if augment is None:
        return image, mask.astype(np.int64)
    out = augment(image=image, mask=(mask.astype(np.int16) + 1).astype(np.uint8))
    return out["image"], out["mask"].astype(np.int64) - 1
