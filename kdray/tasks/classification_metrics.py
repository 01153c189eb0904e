"""Single-label classification metrics over a whole split (scikit-learn), and MURA's study-level
metrics (the images of a study averaged)."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)


def classification_metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, float | None]:
    """accuracy, balanced accuracy, macro-F1, Cohen's kappa, AUROC (binary: positive-class
    score; multi-class: macro one-vs-rest; None when a split lacks a class) and mean
    cross-entropy."""
    labels = np.asarray(labels)
    k = probs.shape[1]
    preds = probs.argmax(1)
    out: dict[str, float | None] = {
        "acc": float(accuracy_score(labels, preds)),
        "balanced_acc": None,
        "f1": float(f1_score(labels, preds, average="macro", labels=np.arange(k), zero_division=0)),
        "kappa": None,
        "auroc": None,
        "loss": float(log_loss(labels, np.clip(probs, 1e-7, 1), labels=np.arange(k))),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kappa = cohen_kappa_score(labels, preds)
        # the mean of per-class recalls: not flattered by a majority class, as accuracy is
        out["balanced_acc"] = float(balanced_accuracy_score(labels, preds))
    out["kappa"] = None if np.isnan(kappa) else float(kappa)
    if len(np.unique(labels)) == k:
        if k == 2:
            out["auroc"] = float(roc_auc_score(labels, probs[:, 1]))
        else:
            scores = probs / probs.sum(1, keepdims=True)
            out["auroc"] = float(roc_auc_score(labels, scores, multi_class="ovr", average="macro"))
    return out


def classification_report(probs: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    """Per-class precision / recall / F1 / support and the confusion matrix (rows: truth)."""
    k = len(classes)
    preds = probs.argmax(1)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, preds, labels=np.arange(k), zero_division=0
    )
    return {
        "per_class": [
            {
                "class": classes[i],
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i in range(k)
        ],
        "confusion": confusion_matrix(labels, preds, labels=np.arange(k)).tolist(),
    }


def aggregate_by_group(
    probs: np.ndarray, labels: np.ndarray, groups: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Average the image probabilities of each group (MURA: a study).

    Returns (group_probs, group_labels, group_keys), keys sorted. `probs` is (N,) or (N, C);
    a group's label is its images' label; a group whose images disagree raises ValueError.
    """
    probs, labels, groups = np.asarray(probs, float), np.asarray(labels), np.asarray(groups)
    if not len(probs) == len(labels) == len(groups):
        raise ValueError(f"{len(probs)} probs, {len(labels)} labels, {len(groups)} groups")
    keys, inverse = np.unique(groups, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(keys)).astype(float)
    sums = np.zeros((len(keys), *probs.shape[1:]))
    np.add.at(sums, inverse, probs)
    group_probs = sums / counts.reshape(-1, *([1] * (probs.ndim - 1)))
    group_labels = np.empty(len(keys), dtype=labels.dtype)
    group_labels[inverse] = labels
    if np.any(group_labels[inverse] != labels):
        mixed = sorted({str(keys[i]) for i in inverse[group_labels[inverse] != labels]})
        raise ValueError(f"groups with images of different labels: {mixed[:5]}")
    return group_probs, group_labels, keys


def study_metrics(probs: np.ndarray, labels: np.ndarray, groups: np.ndarray, category=None) -> dict:
    """Study-level metrics: average each study's image probabilities, then predict (binary:
    positive-class probability >= 0.5, MURA's rule; else the arg-max). With `category` (a study
    key -> category function), also Cohen's kappa per category (MURA: per study type)."""
    study_probs, study_labels, keys = aggregate_by_group(probs, labels, groups)
    if study_probs.shape[1] == 2:
        preds = (study_probs[:, 1] >= 0.5).astype(int)
    else:
        preds = study_probs.argmax(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kappa = cohen_kappa_score(study_labels, preds)
    out: dict = {
        "study_acc": float(accuracy_score(study_labels, preds)),
        "study_kappa": None if np.isnan(kappa) else float(kappa),
        "study_auroc": None,
        "studies": len(keys),
    }
    if study_probs.shape[1] == 2 and len(np.unique(study_labels)) == 2:
        out["study_auroc"] = float(roc_auc_score(study_labels, study_probs[:, 1]))
    if category is not None:
        cats = np.array([category(str(k)) for k in keys])
        by_cat = {}
        for cat in sorted(set(cats)):
            mask = cats == cat
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                k = cohen_kappa_score(study_labels[mask], preds[mask])
            by_cat[cat] = None if np.isnan(k) else float(k)
        out["study_kappa_by_category"] = by_cat
    return out
