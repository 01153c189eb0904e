"""Segmentation metrics over a split: Dice, IoU and HD95 per image and class, from label maps.

Every score is computed per (image, foreground class) and averaged over images, then over
classes (a per-image mean, as MONAI's `DiceMetric` and published BUSI numbers report it; not
pixels pooled over the split). The background class is never scored.

The empty-mask policy: an image whose ground truth has no pixel of a class has no Dice, IoU or
HD95 for that class (0/0; MONAI's `ignore_empty=True`): it is left out of that class's means,
and what the model predicts there is counted instead in `empty_fp`, the share of such images
with any pixel predicted as the class (a false alarm on a lesion-free image). A class absent
from every image of a split has no score (None), never a crash.

HD95 is MONAI's `HausdorffDistanceMetric(percentile=95)` in pixels, written with scipy: the
boundary of a mask is its pixels that binary erosion removes; the distance from each boundary
pixel of one mask to the nearest boundary pixel of the other (`distance_transform_edt`), the
95th percentile of each direction, the larger of the two. Where the prediction is empty and the
ground truth is not (MONAI: inf) it is the image's diagonal, the largest distance an image
allows, so that means stay finite. Pixels marked unknown (-1) are left out of every count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.ndimage import binary_erosion, distance_transform_edt


def boundary(mask: np.ndarray) -> np.ndarray:
    """The mask's pixels that one binary erosion removes (its outline)."""
    return mask & ~binary_erosion(mask)


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """The 95th-percentile symmetric Hausdorff distance between two non-empty boolean masks of
    any rank (MONAI's definition: the larger of the two directed 95th percentiles), in pixels,
    or in millimetres with `spacing` (mm per array axis)."""
    edge_pred, edge_truth = boundary(pred), boundary(truth)
    to_truth = distance_transform_edt(~edge_truth, sampling=spacing)[edge_pred]
    to_pred = distance_transform_edt(~edge_pred, sampling=spacing)[edge_truth]
    return float(max(np.percentile(to_truth, 95), np.percentile(to_pred, 95)))


def per_image_scores(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> dict:
    """Per image and foreground class (arrays of shape (N, num_classes - 1)): `dice`, `iou`,
    `hd95` (NaN where the ground truth is empty), `empty` (the ground truth is empty) and
    `alarm` (empty ground truth, something predicted)."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    known = truth >= 0
    n, classes = len(truth), range(1, num_classes)
    shape = (n, num_classes - 1)
    dice, iou, hd = (np.full(shape, np.nan) for _ in range(3))
    empty, alarm = np.zeros(shape, bool), np.zeros(shape, bool)
    diagonal = math.hypot(*truth.shape[1:3]) if truth.ndim == 3 else 0.0
    for j, c in enumerate(classes):
        p, g = (pred == c) & known, truth == c
        tp = (p & g).sum(axis=(1, 2))
        fp, fn = (p & ~g).sum(axis=(1, 2)), (~p & g).sum(axis=(1, 2))
        present = g.any(axis=(1, 2))
        empty[:, j], alarm[:, j] = ~present, ~present & p.any(axis=(1, 2))
        dice[present, j] = 2 * tp[present] / (2 * tp[present] + fp[present] + fn[present])
        iou[present, j] = tp[present] / (tp[present] + fp[present] + fn[present])
        for i in np.flatnonzero(present):
            hd[i, j] = hd95(p[i], g[i]) if p[i].any() else diagonal
    return {"dice": dice, "iou": iou, "hd95": hd, "empty": empty, "alarm": alarm}


def class_means(values: np.ndarray) -> list[float | None]:
    """Per class, the mean over the images that have a score; None where none has."""
    return [float(np.nanmean(col)) if np.isfinite(col).any() else None for col in values.T]


def mean_known(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def segmentation_metrics(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> dict:
    """`dice` (primary), `iou`, `hd95`: per class the mean over images whose ground truth has
    the class, then the mean over classes; `empty_fp` over images without it; `acc` the share
    of known pixels labelled right."""
    scores = per_image_scores(pred, truth, num_classes)
    known = np.asarray(truth) >= 0
    return {
        **overlap_means(scores),
        "acc": float((np.asarray(pred)[known] == np.asarray(truth)[known]).mean())
        if known.any()
        else None,
    }


def overlap_means(scores: dict[str, np.ndarray]) -> dict[str, float | None]:
    """`dice`, `iou`, `hd95`: per class the mean over items (images, volumes) whose ground
    truth has the class, then over classes; `empty_fp` over items without it."""
    empty = scores["empty"].sum()
    return {
        "dice": mean_known(class_means(scores["dice"])),
        "iou": mean_known(class_means(scores["iou"])),
        "hd95": mean_known(class_means(scores["hd95"])),
        "empty_fp": float(scores["alarm"].sum() / empty) if empty else None,
    }


def mean_dice(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> float:
    """The primary metric alone (no distance transforms): validation during training."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    known = truth >= 0
    per_class = []
    for c in range(1, num_classes):
        p, g = (pred == c) & known, truth == c
        present = g.any(axis=(1, 2))
        if present.any():
            tp = (p & g).sum(axis=(1, 2))[present]
            total = p.sum(axis=(1, 2))[present] + g.sum(axis=(1, 2))[present]
            per_class.append(float(np.mean(2 * tp / total)))
    return float(np.mean(per_class)) if per_class else float("nan")


def segmentation_report(pred: np.ndarray, truth: np.ndarray, names: list[str]) -> dict:
    """Per foreground class: Dice, IoU, HD95, the images that have the class, the images
    that do not, and the false-alarm share among those."""
    scores = per_image_scores(pred, truth, len(names))
    rows = []
    means = {k: class_means(scores[k]) for k in ("dice", "iou", "hd95")}
    for j, name in enumerate(names[1:]):
        empty = int(scores["empty"][:, j].sum())
        rows.append(
            {
                "class": name,
                **{k: means[k][j] for k in means},
                "images": int(len(scores["empty"]) - empty),
                "empty": empty,
                "empty_fp": float(scores["alarm"][:, j].sum() / empty) if empty else None,
            }
        )
    return {"per_class_dice": rows}
