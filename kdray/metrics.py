"""Classification metrics over a whole split, computed with scikit-learn."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score, log_loss, roc_auc_score


def classification_metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, float | None]:
    """accuracy, macro-F1, Cohen's kappa, AUROC (binary: positive-class score; multi-class:
    macro one-vs-rest; None when a split lacks a class) and mean cross-entropy."""
    labels = np.asarray(labels)
    k = probs.shape[1]
    preds = probs.argmax(1)
    out: dict[str, float | None] = {
        "acc": float(accuracy_score(labels, preds)),
        "f1": float(f1_score(labels, preds, average="macro", labels=np.arange(k), zero_division=0)),
        "kappa": None,
        "auroc": None,
        "loss": float(log_loss(labels, np.clip(probs, 1e-7, 1), labels=np.arange(k))),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kappa = cohen_kappa_score(labels, preds)
    out["kappa"] = None if np.isnan(kappa) else float(kappa)
    if len(np.unique(labels)) == k:
        if k == 2:
            out["auroc"] = float(roc_auc_score(labels, probs[:, 1]))
        else:
            scores = probs / probs.sum(1, keepdims=True)
            out["auroc"] = float(roc_auc_score(labels, scores, multi_class="ovr", average="macro"))
    return out
