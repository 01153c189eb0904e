"""What a job asks that its data, once read, cannot give: checks that need the training labels."""

from __future__ import annotations

import numpy as np

from kdray.data.budgets import budget_label, labelled_indices
from kdray.spec.job import Job


def batch_problems(job: Job, train_labels: np.ndarray | None, train_images: int = 0) -> list[str]:
    """A batch larger than the images a worker trains on: one batch would be the whole split
    (with a label budget, every labelled image several times over) and every epoch one step.
    `train_labels` None (masks not read yet): `train_images` counts the split, budgets wait."""
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
