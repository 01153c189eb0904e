"""Single-label classification: one class per image (the thesis's task, MURA, most MedMNIST).

A target is a class index (`UNLABELLED` for a pool image); the loss is cross-entropy over the
labelled images; predictions are softmax probabilities; a teacher hands its student a softened
categorical distribution over the classes. Metrics: accuracy (primary), balanced accuracy,
macro-F1, Cohen's kappa, AUROC, cross-entropy; the report holds per-class precision / recall /
F1 and the confusion matrix.

Volumes (spatial rank 3) are the same task: a MONAI classifier by name (`densenet3d-...`,
`resnet3d-...`: `kdray.tasks.volume_models`) on each whole volume, one class per volume, the
same loss, predictions and metrics (a volume's spacing does not enter them).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from kdray.tasks.base import UNLABELLED, Task, register
from kdray.tasks.classification_metrics import (
    classification_metrics,
    classification_report,
    study_metrics,
)
from kdray.tasks.models import create_model
from kdray.tasks.volume_models import create_volume_model, volume_model_problem


@register
class SingleLabel(Task):
    name = "single_label"
    primary = "acc"
    primary_title = "accuracy"
    outputs = "classes"
    loss_name = "ce"
    one_class_per_image = True
    ranks = (2, 3)

    def create_model(self, name, num_classes, channels, weights=None, rank=2, image_size=None):
        if rank == 3:
            return create_volume_model(name, num_classes, channels)
        return create_model(name, num_classes, channels, weights, image_size)

    def model_problem(self, name, image_size):
        if isinstance(image_size, tuple):  # a volume's input shape
            return volume_model_problem(name, image_size, self.name)
        return super().model_problem(name, image_size)

    def supervised_loss(self, logits, targets, weight=None):
        # a pool image's target is ignored; a batch of pool images alone would give 0/0, so it
        # gives 0 instead (its gradient is 0 either way), without a host sync per step
        loss = F.cross_entropy(logits, targets, weight=weight, ignore_index=UNLABELLED)
        return torch.where((targets != UNLABELLED).any(), loss, torch.zeros_like(loss))

    def probabilities(self, logits):
        return torch.softmax(logits.float(), dim=1)

    def decisions(self, probs):
        return probs.argmax(1)

    def log_probs(self, logits, temperature=1.0):
        return F.log_softmax(logits.float() / temperature, dim=1)

    def item_weights(self, weight, targets, teacher_log_probs):
        classes = torch.where(targets != UNLABELLED, targets, teacher_log_probs.argmax(1))
        return weight[classes]

    def correct(self, logits, targets):
        labelled = targets != UNLABELLED  # a pool image's target matches no class anyway
        return (logits.argmax(1) == targets).sum(), labelled.sum()

    def class_counts(self, targets, num_classes):
        kept = np.asarray(targets)[np.asarray(targets) != UNLABELLED]
        return tuple(int(c) for c in np.bincount(kept, minlength=num_classes))

    def count_line(self, targets, names, samples="images"):
        per_class = np.bincount(np.asarray(targets), minlength=len(names))
        pairs = ", ".join(f"{n} {c}" for n, c in zip(names, per_class, strict=True))
        return f"{samples} per class: {pairs}"

    def train_problems(self, targets, names, samples="images"):
        labels = np.asarray(targets)
        present = np.unique(labels[labels != UNLABELLED])
        if len(present) > 1:
            return []
        only = f"{names[present[0]]} only" if len(present) else "no labelled one"
        return [
            f"data: the train split holds {only} of the {len(names)} classes: a classifier "
            f"learns nothing from it; check the data's labels (every train {samples[:-1]} "
            "has the same class)"
        ]

    def no_skill(self, targets, names):
        counts = np.bincount(np.asarray(targets), minlength=len(names))
        majority = int(counts.argmax())
        return counts[majority] / max(len(targets), 1), f"always predicting {names[majority]}"

    def metrics(self, probs, targets, num_classes=None):
        return classification_metrics(probs, targets)

    def report(self, probs, targets, names):
        return classification_report(probs, targets, names)

    def group_metrics(self, probs, targets, groups, category):
        """MURA's rule: a study's images averaged, positive at 0.5 (`study_acc`, kappa, ...)."""
        return study_metrics(probs, targets, groups, category)
