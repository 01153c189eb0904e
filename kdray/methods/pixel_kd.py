"""Pixel-wise distillation (Liu, Chen, Liu, Qin, Luo & Wang, "Structured Knowledge Distillation
for Semantic Segmentation", CVPR 2019, section 3.1).

Each pixel is a classification: the student's per-pixel class distribution is pulled towards
the teacher's. `ce_weight * (CE + Dice) + kd_weight * T^2 * mean over pixels of
KL(p_teacher || p_student)`, p = softmax over the classes at temperature T. The authors' code
(`CriterionPixelWise`) minimises the cross-entropy to the teacher's distribution, which is this
KL plus the teacher's entropy (a constant: the same gradient), at T = 1 with weight 10 (their
`lambda_pi`): the defaults here. Several teachers: the mean of their softened distributions per
pixel. The teachers' soft-label cache serves it (per-pixel logits, `Task.output_shape`).
A label budget's pool images get the KD term alone (their pixels are unknown to the CE).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from kdray.methods.base import (
    Method,
    MethodParams,
    Outputs,
    kl_to_student,
    register,
    teacher_log_probs,
)


class PixelKDParams(MethodParams):
    name: Literal["pixel_kd"] = "pixel_kd"
    temperature: float = Field(1.0, gt=0, description="softmax temperature T")
    kd_weight: float = Field(10.0, ge=0, description="weight of the pixel-wise KL (lambda_pi)")
    ce_weight: float = Field(1.0, ge=0, description="weight of the supervised loss (CE + Dice)")


@register
class PixelKD(Method):
    Params = PixelKDParams
    needs = "logits"
    loss_weights = ("kd_weight", "ce_weight")
    uses_unlabelled = True
    tasks = ("segmentation",)
    ranks = (2, 3)  # written over dim 1 and flattened space: (N, C, D, H, W) logits too

    def forward(
        self, student: Outputs, teachers: list[Outputs], targets: torch.Tensor, epoch: float
    ) -> dict[str, torch.Tensor]:
        p = self.params
        supervised = self.task.supervised_loss(student.logits, targets)
        log_p_teacher = teacher_log_probs(self.task, teachers, p.temperature)
        log_p_student = self.task.log_probs(student.logits, p.temperature)
        # batchmean over (N, C, H, W) outcomes along dim 1: the mean over every pixel
        kd = kl_to_student(log_p_teacher, log_p_student) * p.temperature**2
        loss = p.ce_weight * supervised + p.kd_weight * kd
        return {"loss": loss, self.task.loss_name: supervised, "pixel_kd": kd}
