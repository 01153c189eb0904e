"""Hinton KD (Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015).

`(1 - alpha) * CE(student, y) + alpha * T^2 * KL(p_teacher || p_student)` at temperature T.
`batchmean` sums the KL over classes and averages over the batch (Hinton; mdistiller); `mean`
averages over batch and classes, K times smaller (Yuan et al.'s reference code). With several
teachers the target is the mean of their softened probabilities. Unset parameters come from the
job's `distill` block.

Few labels: images without a label (a label budget's pool) get the KD term only. Class-balanced
KD (`class_weights`: inverse frequency or Cui et al.'s effective number) weighs both terms by the
image's class (for a pool image, the teachers' predicted class), as torch weighs cross-entropy.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from kdray.methods.base import (
    Method,
    MethodParams,
    class_weights,
    kl_to_student,
    register,
    teacher_log_probs,
)


class KDParams(MethodParams):
    name: Literal["kd"] = "kd"
    added_later: ClassVar[tuple[str, ...]] = ("class_weights", "class_beta")
    temperature: float = Field(4.0, gt=0, le=1000, description="softmax temperature T")
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the KD term")
    kl_reduction: Literal["batchmean", "mean"] = Field(
        "batchmean",
        description="batchmean: sum over classes, mean over images; mean: also over classes",
    )
    class_weights: Literal["none", "inverse", "effective"] = Field(
        "none", description="per-class weights on both terms, from the labelled counts"
    )
    class_beta: float = Field(0.999, gt=0, lt=1, description="effective-number weights' beta")


@register
class HintonKD(Method):
    Params = KDParams
    needs = "logits"
    distill_defaults = ("temperature", "alpha", "kl_reduction")
    uses_unlabelled = True
    tasks = ("single_label", "multi_label")  # multi-label: per-label binary KD
    ranks = (2, 3)  # written over logits (N, C): a volume classifier's too

    def __init__(self, params: KDParams, shapes):
        super().__init__(params, shapes)
        weight = None
        if params.class_weights != "none":
            weight = class_weights(shapes.class_counts, params.class_weights, params.class_beta)
        self.register_buffer("class_weight", weight, persistent=False)

    def forward(self, student, teachers, targets, epoch):
        p = self.params
        ce = self.task.supervised_loss(student.logits, targets, self.class_weight)
        log_p_teacher = teacher_log_probs(self.task, teachers, p.temperature)
        log_p_student = self.task.log_probs(student.logits, p.temperature)
        if self.class_weight is None:
            kl = kl_to_student(log_p_teacher, log_p_student, p.kl_reduction)
        else:
            kl = self._weighted_kl(log_p_teacher, log_p_student, targets)
        kd = kl * p.temperature * p.temperature
        return {"loss": (1 - p.alpha) * ce + p.alpha * kd, self.task.loss_name: ce, "kd": kd}

    def _weighted_kl(self, log_p_teacher, log_p_student, targets) -> torch.Tensor:
        """Each item's KL (an image; a multi-label image's label) weighted by its class."""
        per_item = F.kl_div(log_p_student, log_p_teacher, reduction="none", log_target=True)
        weight = self.task.item_weights(self.class_weight, targets, log_p_teacher)
        kl = (per_item.sum(1) * weight).sum() / weight.sum().clamp(min=1e-12)
        return kl / log_p_student.shape[1] if self.params.kl_reduction == "mean" else kl
