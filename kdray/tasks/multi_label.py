"""Multi-label classification: any number of findings per image (ChestMNIST, ChestX-ray14,
CheXpert).

A target is a row of 0/1 per label, `UNLABELLED` (-1) where a label is unknown: uncertain,
missing, or the whole row of a label budget's pool image. The loss is binary cross-entropy with
logits over the known labels; predictions are per-label sigmoid probabilities; a teacher hands
its student one Bernoulli distribution per label, so Hinton KD becomes per-label binary KD
(the KL between sigma(z_t/T) and sigma(z_s/T), averaged over labels and images).

Metrics, as MedMNIST reports ChestMNIST: mean AUROC over labels (primary), mean average
precision, mean per-label accuracy at 0.5, binary cross-entropy; and macro-F1 with each label's
threshold chosen on the validation split (the one that maximises its F1 there, `THRESHOLD_RULE`)
and applied to every split, since at a fixed 0.5 a rare label is never predicted and its F1 is
0. Without validation thresholds (`thresholds=None`) F1 is taken at 0.5. A label with one class
only among a split's known targets has no AUROC: it is named (`left_out`) and left out of every
mean, never a crash.

Volumes (spatial rank 3, `kind: nifti_csv` with `label_columns`) are the same task: a MONAI
classifier by name (`kdray.tasks.volume_models`) on each whole volume, a row of labels per
volume, the same loss, predictions and metrics.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    precision_recall_curve,
    roc_auc_score,
)

from kdray.tasks.base import UNLABELLED, Task, register
from kdray.tasks.models import create_model
from kdray.tasks.volume_models import create_volume_model, volume_model_problem

THRESHOLD = 0.5
THRESHOLD_RULE = "each label's threshold maximises its F1 on the validation split"


@register
class MultiLabel(Task):
    name = "multi_label"
    primary = "auroc"
    primary_title = "mean AUROC"
    outputs = "labels"
    loss_name = "bce"
    ranks = (2, 3)  # volumes: a MONAI classifier on each whole volume, a row of labels each

    def create_model(self, name, num_classes, channels, weights=None, rank=2, image_size=None):
        if rank == 3:
            return create_volume_model(name, num_classes, channels)
        return create_model(name, num_classes, channels, weights, image_size)

    def model_problem(self, name, image_size):
        if isinstance(image_size, tuple):  # a volume's input shape
            return volume_model_problem(name, image_size, self.name)
        return super().model_problem(name, image_size)

    def supervised_loss(self, logits, targets, weight=None):
        known = targets != UNLABELLED  # no known label in the batch: 0 (no host sync)
        losses = F.binary_cross_entropy_with_logits(
            logits.float(), targets.clamp(min=0).float(), reduction="none"
        )
        scale = known.float() if weight is None else known.float() * weight.view(1, -1)
        return (losses * scale).sum() / scale.sum().clamp(min=1e-12)

    def probabilities(self, logits):
        return torch.sigmoid(logits.float())

    def decisions(self, probs):
        return probs >= THRESHOLD

    def log_probs(self, logits, temperature=1.0):
        z = logits.float() / temperature
        return torch.stack([F.logsigmoid(-z), F.logsigmoid(z)], dim=1)  # (B, 2, L): no, yes

    def item_weights(self, weight, targets, teacher_log_probs):
        return weight.view(1, -1).expand(teacher_log_probs.shape[0], -1)

    def correct(self, logits, targets):
        known = targets != UNLABELLED
        right = ((logits > 0) == (targets == 1)) & known
        return right.sum(), known.sum()

    def class_counts(self, targets, num_classes):
        return tuple(int(c) for c in (np.asarray(targets) == 1).sum(axis=0))

    def count_line(self, targets, names, samples="images"):
        positives = (np.asarray(targets) == 1).sum(axis=0)
        pairs = ", ".join(f"{n} {c}" for n, c in zip(names, positives, strict=True))
        return f"positives per label: {pairs}"

    def no_skill(self, targets, names):
        return 0.5, "ranking images at random"

    def chosen_on_validation(self, probs, targets, fixed_threshold=None):
        if fixed_threshold is not None:
            labels = np.asarray(targets).shape[1]
            rule = f"threshold {fixed_threshold:g} for every label (train.f1_threshold)"
            return {"thresholds": [float(fixed_threshold)] * labels, "f1_rule": rule}
        return {"thresholds": best_f1_thresholds(probs, targets), "f1_rule": THRESHOLD_RULE}

    def metrics(self, probs, targets, num_classes=None, thresholds=None, f1_rule=None):
        per_label = label_scores(probs, targets, thresholds)
        scored = [s for s in per_label if s["auroc"] is not None]
        known = np.asarray(targets) != UNLABELLED
        truth = np.asarray(targets) == 1
        clipped = np.clip(probs, 1e-7, 1 - 1e-7)
        bce = -(truth * np.log(clipped) + (~truth) * np.log(1 - clipped))
        right = ((probs >= THRESHOLD) == truth) & known
        return {
            "auroc": _mean(s["auroc"] for s in scored),
            "map": _mean(s["ap"] for s in scored),
            "f1": _mean(s["f1"] for s in scored),
            "acc": float(right.sum() / max(known.sum(), 1)),
            "loss": float(bce[known].mean()) if known.any() else None,
            "balanced_acc": None,
            "kappa": None,
        }

    def report(self, probs, targets, names, thresholds=None, f1_rule=None):
        """Each label's scores, the labels left out of the means (one class only), and how
        F1's thresholds were set (`f1_rule`: what `chosen_on_validation` said)."""
        per_label = label_scores(probs, targets, thresholds)
        return {
            "per_label": [{"label": n, **s} for n, s in zip(names, per_label, strict=True)],
            "left_out": [n for n, s in zip(names, per_label, strict=True) if s["auroc"] is None],
            "f1_rule": f1_rule or (THRESHOLD_RULE if thresholds is not None else "threshold 0.5"),
        }


def label_scores(
    probs: np.ndarray, targets: np.ndarray, thresholds: list[float | None] | None = None
) -> list[dict]:
    """Per label over its known targets: AUROC, average precision and F1 at its threshold (from
    validation; 0.5 where none is given or chosen), None where the label has one class only;
    positives, negatives and the threshold."""
    probs, targets = np.asarray(probs, dtype=np.float64), np.asarray(targets)
    scores = []
    for j in range(targets.shape[1]):
        known = targets[:, j] != UNLABELLED
        y, p = targets[known, j] == 1, probs[known, j]
        positives, negatives = int(y.sum()), int((~y).sum())
        chosen = thresholds[j] if thresholds is not None else None
        cut = THRESHOLD if chosen is None else chosen
        row = {"auroc": None, "ap": None, "f1": None, "positives": positives}
        row |= {"negatives": negatives, "threshold": cut}
        if positives and negatives:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                row["auroc"] = float(roc_auc_score(y, p))
                row["ap"] = float(average_precision_score(y, p))
                row["f1"] = float(f1_score(y, p >= cut, zero_division=0))
        scores.append(row)
    return scores


def best_f1_thresholds(probs: np.ndarray, targets: np.ndarray) -> list[float | None]:
    """Each label's decision threshold with the highest F1 over its known targets here (the
    validation split), from sklearn's precision-recall curve; None for a label without both
    classes (it keeps 0.5)."""
    probs, targets = np.asarray(probs, dtype=np.float64), np.asarray(targets)
    out: list[float | None] = []
    for j in range(targets.shape[1]):
        known = targets[:, j] != UNLABELLED
        y, p = targets[known, j] == 1, probs[known, j]
        if not (y.any() and (~y).any()):
            out.append(None)
            continue
        precision, recall, cuts = precision_recall_curve(y, p)
        f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
        out.append(float(cuts[int(np.argmax(f1[:-1]))]))  # the last point has no threshold
    return out


def _mean(values) -> float | None:
    values = list(values)
    return float(np.mean(values)) if values else None
