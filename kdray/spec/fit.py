"""What a job asks that its data, once read, cannot give: checks that need the training labels."""

from __future__ import annotations

import numpy as np

from kdray.data.budgets import budget_label, labelled_indices
from kdray.spec.job import Job


def batch_problems(
    job: Job, train_labels: np.ndarray | None, train_images: int = 0, task: str | None = None
) -> list[str]:
    """A batch larger than the images a worker trains on: one batch would be the whole split
    (with a label budget, every labelled image several times over) and every epoch one step.
    `train_labels` None (masks not read yet): `train_images` counts the split, budgets wait.
    With `task`, a batch of one image that a model's BatchNorm cannot train on."""
    if task and job.train.batch_size == 1:
        problem = single_image_problem(job, task)
        if problem:
            return [problem]
    workers = job.resources.workers_per_trial
    images = len(train_labels) if train_labels is not None else train_images
    per_worker = images // workers
    where = f" per worker ({workers} workers)" if workers > 1 else ""
    samples = "volumes" if job.data.spatial_rank == 3 else "images"
    if job.train.batch_size > per_worker:
        return [
            f"train.batch_size: {job.train.batch_size} is larger than the training split "
            f"({images} {samples}{where}); lower it to at most {max(per_worker, 1)}"
        ]
    budgets = [b for b in job.label_budgets() if b]
    if not budgets or train_labels is None:
        return []
    counts = {budget_label(b): len(labelled_indices(train_labels, b, 0)) for b in budgets}
    label, smallest = min(counts.items(), key=lambda item: item[1])
    if job.train.batch_size > smallest // workers:
        return [
            f"train.batch_size: {job.train.batch_size} is larger than the {smallest} labelled "
            f"training images of the label budget {label} (labelled){where}: a batch would hold "
            f"each several times; lower it to at most {max(smallest // workers, 1)}, or give a "
            "larger budget"
        ]
    return []


def label_budget_warnings(job: Job, train_labels: np.ndarray | None) -> list[str]:
    """Label budgets the data cannot tell apart: a count per class at or above every class's
    images, or a fraction that rounds up to them, keeps every label (yet the tables say `1000
    per class`, `99%`), and two budgets that keep the same images (`per_class: [10, 12]` with
    10 a class) train the same grid twice."""
    budgets = job.label_budgets()
    if train_labels is None or budgets == [None] or job.labelled is None:
        return []
    field = "labelled.fraction" if job.labelled.fraction is not None else "labelled.per_class"
    kept = {}  # the images a budget keeps (the same for every seed when equal for one)
    out = []
    for budget in budgets:
        indices = labelled_indices(train_labels, budget, 0)
        keeps_all = budget is not None and len(indices) == len(train_labels)
        if keeps_all and "per_class" in budget:
            largest = int(np.unique(train_labels, return_counts=True)[1].max())
            out.append(
                f"{field}: {budget['per_class']} keeps every training label (no class has more "
                f"than {largest} images), yet the tables say {budget_label(budget)}; give a "
                f"count below {largest}"
            )
        elif keeps_all and budget.get("fraction", 1) < 1:
            out.append(
                f"{field}: {budget['fraction']} keeps every training label (each class's share "
                f"rounds up to all its images), yet the tables say {budget_label(budget)}; give "
                "a smaller fraction"
            )
        key = indices.tobytes()
        if key in kept:
            first = kept[key]
            out.append(
                f"{field}: {_value(first)} and {_value(budget)} "
                f"keep the same {len(indices)} labelled training images, so the grid trains "
                "that budget twice; drop one"
            )
        kept.setdefault(key, budget)
    return out


def _value(budget: dict | None) -> float:
    """The budget as the job wrote it: its count or fraction (1 for every label)."""
    return budget.get("per_class", budget.get("fraction")) if budget else 1


def single_image_problem(job: Job, task: str) -> str | None:
    """`train.batch_size: 1` where a model's BatchNorm would see one value per channel (a 1x1
    map of one image: PyTorch refuses to train on it); found by one forward pass on the meta
    device. Batches of one are only ever full ones: a smaller last batch is dropped."""
    import torch
    from torch import nn

    from kdray.spec.stages import meta_model

    rank = job.data.spatial_rank
    channels = getattr(job.data, "channels", None) or 1
    if rank == 2 and not getattr(job.data, "image_size", None):
        return None  # an npz at its own size: the run's data says
    shape = tuple(job.data.patch) if rank == 3 else (job.data.image_size,) * 2
    for name in sorted(job.models()):
        model = meta_model(name, task, rank, channels)
        if model is None or not any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()
        ):
            continue
        try:
            model.train()(torch.empty(1, channels, *shape, device="meta"))
        except ValueError as exc:
            if "more than 1 value per channel" in str(exc):
                return (
                    f"train.batch_size: 1 cannot train {name}: its BatchNorm layers need more "
                    "than one value per channel, and one image makes a 1x1 map there; set "
                    "train.batch_size: 2 or more"
                )
        except Exception:  # a model the meta device cannot run: its own run says what is wrong
            continue
    return None
