"""Few labels: how many training labels a run may read, and which images they are.

A *label budget* keeps a seeded, class-stratified part of the training labels: a fraction of
each class, or a count per class. The rest of the training images are the *unlabelled pool*:
a run whose study uses the pool trains on them with target `UNLABELLED` (no label is read from
the data for them); every other run trains on the labelled images alone. The same budget and
seed pick the same images in every run (teacher, baseline, student), so paired comparisons
share their labelled images. No budget (or a fraction of 1) is every label, as without one.

With a budget, every run's epoch is as long as a full-label epoch: a run on the labelled images
alone cycles through them (each draw its own augmentation), so runs with and without the pool
take the same number of steps, and more steps are never what the pool is credited with.
"""

from __future__ import annotations

import math

import numpy as np

from kdray.data.cache import DataInfo, load_split, load_targets
from kdray.tasks import UNLABELLED, get_task  # UNLABELLED: a pool image's target (row)

Budget = dict  # {"fraction": 0.1} or {"per_class": 20}; None: every label


def budget_label(budget: Budget | None) -> str:
    """`10%`, `20 per class`, or `all` for tables and run ids."""
    if not budget:
        return "all"
    if "fraction" in budget:
        return f"{budget['fraction'] * 100:g}%"
    return f"{budget['per_class']} per class"


def budget_id(budget: Budget | None) -> str:
    """The budget as a run-id part: `labels10pct`, `labels20pc`; "" for every label."""
    if not budget:
        return ""
    if "fraction" in budget:
        return f"labels{budget['fraction'] * 100:g}pct"
    return f"labels{budget['per_class']}pc"


def labelled_indices(labels: np.ndarray, budget: Budget | None, seed: int) -> np.ndarray:
    """The sorted indices of the labelled training images: per class, the first
    ceil(fraction x n) (at least 1) or min(count, n) of a permutation seeded by (seed, class).
    Multi-label rows and masks have no one class to stratify by: the first ceil(fraction x N)
    of a permutation seeded by the seed (a count per class is refused for them by
    `kdray.spec`)."""
    labels = np.asarray(labels)
    if not budget:
        return np.arange(len(labels))
    if labels.ndim >= 2:
        keep = max(1, math.ceil(budget["fraction"] * len(labels)))
        return np.sort(np.random.default_rng([seed]).permutation(len(labels))[:keep])
    chosen = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        order = np.random.default_rng([seed, int(cls)]).permutation(len(members))
        if "fraction" in budget:
            keep = max(1, math.ceil(budget["fraction"] * len(members)))
        else:
            keep = min(budget["per_class"], len(members))
        chosen.append(members[order[:keep]])
    return np.sort(np.concatenate(chosen))


def training_arrays(
    info: DataInfo, budget: Budget | None, seed: int, pool: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(images, targets) a run trains on. Without a budget: the whole training split (images
    memory-mapped). With one: the labelled images alone, cycled to the split's length, or
    (`pool`) every image with the pool's targets set to `UNLABELLED` without reading their
    labels."""
    images, labels = load_split(info.path, "train")
    if not budget:
        return images, labels
    keep = labelled_indices(labels, budget, seed)
    if not pool:
        cycled = np.resize(keep, len(labels))
        return np.ascontiguousarray(images[cycled]), labels[cycled]
    targets = np.full(labels.shape, UNLABELLED, dtype=labels.dtype)
    targets[keep] = labels[keep]
    return images, targets


def class_counts(info: DataInfo, budget: Budget | None, seed: int) -> tuple[int, ...]:
    """Labelled training images per class, or positives per label (each image once; pool
    images not counted): what class-balanced weights are made of. Volumes (no budgets):
    voxels per class of every training mask."""
    if info.rank == 3:
        return get_task(info.task).class_counts(load_targets(info.path, "train"), info.num_classes)
    _, labels = load_split(info.path, "train")
    kept = labels[labelled_indices(labels, budget, seed)]
    return get_task(info.task).class_counts(kept, info.num_classes)
