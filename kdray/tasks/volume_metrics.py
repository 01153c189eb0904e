"""Segmentation metrics over a split of volumes: Dice, IoU and HD95 in millimetres, per class.

The 2D rules (`kdray.tasks.segmentation_metrics`) on volumes of their own shapes and spacings:
every score per (volume, foreground class), averaged over volumes and then over classes; the
background never scored. The same empty-mask policy: a volume whose ground truth lacks a class
has no Dice, IoU or HD95 for it (left out of that class's means) and counts in `empty_fp` when
something is predicted as the class there. HD95 is MONAI's `HausdorffDistanceMetric(
percentile=95)` with the volume's spacing (`distance_transform_edt(..., sampling=spacing)`),
so in mm; an empty prediction where the ground truth is not (MONAI: inf) scores the volume's
diagonal in mm, the largest distance it allows. Voxels marked unknown (-1) are left out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from kdray.tasks.segmentation_metrics import class_means, hd95, overlap_means


def volume_scores(
    pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float], num_classes: int
) -> dict[str, np.ndarray]:
    """Per foreground class (arrays of length num_classes - 1) for one volume: `dice`, `iou`,
    `hd95` in mm (NaN where the ground truth lacks the class), `empty`, `alarm`."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction of shape {pred.shape}, ground truth {truth.shape}")
    known = truth >= 0
    diagonal = math.hypot(*(n * s for n, s in zip(truth.shape, spacing, strict=True)))
    count = num_classes - 1
    dice, iou, hd = (np.full(count, np.nan) for _ in range(3))
    empty, alarm = np.zeros(count, bool), np.zeros(count, bool)
    for j, c in enumerate(range(1, num_classes)):
        p, g = (pred == c) & known, truth == c
        if not g.any():
            empty[j], alarm[j] = True, p.any()
            continue
        tp, fp, fn = (p & g).sum(), (p & ~g).sum(), (~p & g).sum()
        dice[j], iou[j] = 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)
        hd[j] = hd95(p, g, spacing) if p.any() else diagonal
    return {"dice": dice, "iou": iou, "hd95": hd, "empty": empty, "alarm": alarm}


def _stacked(preds, truths, spacings, num_classes) -> dict[str, np.ndarray]:
    """`volume_scores` of every volume, stacked to (volumes, num_classes - 1)."""
    scores = [
        volume_scores(p, t, s, num_classes) for p, t, s in zip(preds, truths, spacings, strict=True)
    ]
    return {key: np.stack([s[key] for s in scores]) for key in scores[0]}


def volume_segmentation_metrics(
    preds: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    spacings: Sequence[Sequence[float]],
    num_classes: int,
) -> dict[str, float | None]:
    """`dice` (primary), `iou`, `hd95` (mm): per class the mean over volumes whose ground truth
    has the class, then the mean over classes; `empty_fp` over volumes without it."""
    return overlap_means(_stacked(preds, truths, spacings, num_classes))


def volume_segmentation_report(preds, truths, spacings, names: list[str]) -> dict:
    """Per foreground class: Dice, IoU, HD95 (mm), the volumes that have the class (`images`,
    the key 2D uses: one results schema), those that do not, and the false-alarm share among
    those."""
    scores = _stacked(preds, truths, spacings, len(names))
    means = {k: class_means(scores[k]) for k in ("dice", "iou", "hd95")}
    rows = []
    for j, name in enumerate(names[1:]):
        empty = int(scores["empty"][:, j].sum())
        rows.append(
            {"class": name, **{k: means[k][j] for k in means},
             "images": int(len(scores["empty"]) - empty), "empty": empty,
             "empty_fp": float(scores["alarm"][:, j].sum() / empty) if empty else None}
        )  # fmt: skip
    return {"per_class_dice": rows}
