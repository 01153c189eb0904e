"""Volume segmentation metrics in millimetres: HD95, Dice and IoU equal MONAI's metric classes
with the volume's spacing on random masks; the 2D empty-mask policy holds in 3D."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from kdray.tasks.volume_metrics import volume_scores, volume_segmentation_metrics

SPACING = (0.8, 1.2, 3.0)
SHAPE = (24, 20, 12)


def random_labels(rng: np.random.Generator, classes: int = 3) -> np.ndarray:
    """Blobby random label maps: smoothed noise per class, the strongest above a threshold."""
    fields = np.stack([gaussian_filter(rng.standard_normal(SHAPE), 2.0) for _ in range(classes)])
    fields[0] += 0.15  # background wins where no class is strong
    return fields.argmax(0)


def one_hot(labels: np.ndarray, classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.as_tensor(labels), classes).permute(0, 4, 1, 2, 3)


def test_hd95_dice_and_iou_equal_monai_with_the_volume_spacing():
    from monai.metrics import DiceMetric, HausdorffDistanceMetric, MeanIoU

    rng = np.random.default_rng(0)
    truths = np.stack([random_labels(rng) for _ in range(4)])
    preds = np.stack([random_labels(rng) for _ in range(4)])
    pred_1h, truth_1h = one_hot(preds, 3), one_hot(truths, 3)
    monai_hd = HausdorffDistanceMetric(include_background=False, percentile=95)(
        pred_1h, truth_1h, spacing=SPACING
    ).numpy()
    monai_dice = DiceMetric(include_background=False)(pred_1h, truth_1h).numpy()
    monai_iou = MeanIoU(include_background=False)(pred_1h, truth_1h).numpy()
    ours = [volume_scores(p, t, SPACING, 3) for p, t in zip(preds, truths, strict=True)]
    assert np.all(np.isfinite(monai_hd)) and monai_hd.min() > 0
    np.testing.assert_allclose([s["hd95"] for s in ours], monai_hd, rtol=1e-5)
    np.testing.assert_allclose([s["dice"] for s in ours], monai_dice, rtol=1e-5)
    np.testing.assert_allclose([s["iou"] for s in ours], monai_iou, rtol=1e-5)
    isotropic = [
        volume_scores(p, t, (1, 1, 1), 3)["hd95"] for p, t in zip(preds, truths, strict=True)
    ]
    assert not np.allclose(isotropic, monai_hd)  # the spacing changes the distances


def test_the_empty_mask_policy_of_2d_segmentation_holds_for_volumes():
    truth = np.zeros(SHAPE, np.int64)
    truth[4:12, 4:12, 2:6] = 1  # class 2 absent from the ground truth
    miss = np.zeros(SHAPE, np.int64)  # predicts nothing
    alarm = truth.copy()
    alarm[20:22, 15:18, 8:10] = 2  # class 1 right, a false class-2 alarm
    scores = volume_scores(miss, truth, SPACING, 3)
    diagonal = math.hypot(*(n * s for n, s in zip(SHAPE, SPACING, strict=True)))
    assert scores["dice"][0] == 0 and scores["hd95"][0] == pytest.approx(diagonal)
    assert np.isnan(scores["dice"][1]) and scores["empty"][1] and not scores["alarm"][1]
    metrics = volume_segmentation_metrics([miss, alarm], [truth, truth], [SPACING] * 2, 3)
    assert metrics["dice"] == pytest.approx(0.5)  # class 1: mean of 0 and 1; class 2 unscored
    assert metrics["hd95"] == pytest.approx(diagonal / 2)
    assert metrics["empty_fp"] == pytest.approx(0.5)  # one of two class-2-free volumes alarmed
