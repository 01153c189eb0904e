"""Multi-label classification: any number of findings per image (ChestMNIST, ChestX-ray14,
CheXpert).

A target is a row of 0/1 per label, `UNLABELLED` (-1) where a label is unknown: uncertain,
missing, or the whole row of a label budget's pool image. The loss is binary cross-entropy with
logits over the known labels; predictions are per-label sigmoid probabilities; a teacher hands
its student one Bernoulli distribution per label, so Hinton KD becomes per-label binary KD
(the KL between sigma(z_t/T) and sigma(z_s/T), averaged over labels and images).

Metrics, as MedMNIST reports ChestMNIST: mean AUROC over labels (primary), mean average
precision, macro-F1 and mean per-label accuracy at 0.5, binary cross-entropy. A label with one
class only among a split's known targets has no AUROC: it is named (`left_out`) and left out of
every mean, never a crash.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from kdray.tasks.base import UNLABELLED, Task, register
from kdray.tasks.models import create_model

THRESHOLD = 0.5


@register
class MultiLabel(Task):
    name = "multi_label"
    primary = "auroc"
    primary_title = "mean AUROC"
    outputs = "labels"
    loss_name = "bce"

    def create_model(self, name, num_classes, channels, weights=None):
        return create_model(name, num_classes, channels, weights)

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

    def count_line(self, targets, names):
        positives = (np.asarray(targets) == 1).sum(axis=0)
        pairs = ", ".join(f"{n} {c}" for n, c in zip(names, positives, strict=True))
        return f"positives per label: {pairs}"

    def no_skill(self, targets, names):
        return 0.5, "ranking images at random"

    def metrics(self, probs, targets, num_classes=None):
        per_label = label_scores(probs, targets)
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

    def report(self, probs, targets, names):
        """Each label's scores, and the labels left out of the means (one class only)."""
        per_label = label_scores(probs, targets)
        return {
            "per_label": [{"label": n, **s} for n, s in zip(names, per_label, strict=True)],
            "left_out": [n for n, s in zip(names, per_label, strict=True) if s["auroc"] is None],
        }


def label_scores(probs: np.ndarray, targets: np.ndarray) -> list[dict]:
    """Per label over its known targets: AUROC, average precision and F1 at 0.5 (None where
    the label has one class only), positives and negatives."""
    probs, targets = np.asarray(probs, dtype=np.float64), np.asarray(targets)
    scores = []
    for j in range(targets.shape[1]):
        known = targets[:, j] != UNLABELLED
        y, p = targets[known, j] == 1, probs[known, j]
        positives, negatives = int(y.sum()), int((~y).sum())
        row = {"auroc": None, "ap": None, "f1": None, "positives": positives}
        row["negatives"] = negatives
        if positives and negatives:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                row["auroc"] = float(roc_auc_score(y, p))
                row["ap"] = float(average_precision_score(y, p))
                row["f1"] = float(f1_score(y, p >= THRESHOLD, zero_division=0))
        scores.append(row)
    return scores


def _mean(values) -> float | None:
    values = list(values)
    return float(np.mean(values)) if values else None
