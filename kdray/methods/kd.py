"""Hinton KD (Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015).

`(1 - alpha) * CE(student, y) + alpha * T^2 * KL(p_teacher || p_student)` at temperature T.
`batchmean` sums the KL over classes and averages over the batch (Hinton; mdistiller); `mean`
averages over batch and classes, K times smaller (Yuan et al.'s reference code). With several
teachers the target is the mean of their softened probabilities. Unset parameters come from the
job's `distill` block.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from pydantic import Field

from kdray.methods.base import Method, MethodParams, kl_to_student, register, teacher_log_probs


class KDParams(MethodParams):
    name: Literal["kd"] = "kd"
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the KD term")
    kl_reduction: Literal["batchmean", "mean"] = "batchmean"


@register
class HintonKD(Method):
    Params = KDParams
    needs = "logits"
    distill_defaults = ("temperature", "alpha", "kl_reduction")

    def forward(self, student, teachers, targets, epoch):
        p = self.params
        ce = F.cross_entropy(student.logits, targets)
        log_p_student = F.log_softmax(student.logits / p.temperature, dim=1)
        kl = kl_to_student(
            teacher_log_probs(teachers, p.temperature), log_p_student, p.kl_reduction
        )
        kd = kl * p.temperature * p.temperature
        return {"loss": (1 - p.alpha) * ce + p.alpha * kd, "ce": ce, "kd": kd}
