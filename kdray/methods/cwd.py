"""Channel-wise distillation, CWD (Shu, Liu, Gao, Yan & Shen, "Channel-wise Knowledge
Distillation for Dense Prediction", ICCV 2021).

Each output channel (a class's logit map) becomes a distribution over the spatial positions:
phi(y_c) = softmax over the H x W locations of y_c / T. The student's is pulled towards the
teacher's channel by channel: `ce_weight * (CE + Dice) + cwd_weight * T^2 / C * sum over
channels of KL(phi_teacher,c || phi_student,c)`, averaged over the images (the reference code's
`ChannelWiseDivergence`: summed over N x C channel maps, times T^2, divided by N x C). Where a
channel's teacher mass sits is what the student learns: the most salient regions of each class,
rather than every pixel alike (pixel-wise KD). Applied here to the logits, so the teachers'
soft-label cache serves it; defaults T = 1, weight 5 (mmrazor's PSPNet logit configuration).
One teacher per student (an ensemble's spatial distributions are not defined here).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from kdray.methods.base import Method, MethodParams, Outputs, register
from kdray.methods.features import one_teacher


class CWDParams(MethodParams):
    name: Literal["cwd"] = "cwd"
    temperature: float = Field(1.0, gt=0, description="tau of the spatial softmax")
    cwd_weight: float = Field(5.0, ge=0, description="weight of the channel-wise KL")
    ce_weight: float = Field(1.0, ge=0, description="weight of the supervised loss (CE + Dice)")


def channel_divergence(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> torch.Tensor:
    """T^2 / (N C) * sum over the N x C channel maps of KL(spatial softmax of the teacher's
    map || the student's), both (N, C, H, W) logits at the same size."""
    n, c = student.shape[:2]
    log_s = F.log_softmax(student.float().flatten(2) / tau, dim=2)
    log_t = F.log_softmax(teacher.float().flatten(2) / tau, dim=2)
    kl = F.kl_div(log_s, log_t, reduction="sum", log_target=True)
    return kl * tau**2 / (n * c)


@register
class ChannelWiseDistillation(Method):
    Params = CWDParams
    needs = "logits"
    loss_weights = ("cwd_weight", "ce_weight")
    allows_ensemble = False
    tasks = ("segmentation",)
    ranks = (2, 3)  # written over dim 1 and flattened space: (N, C, D, H, W) logits too

    def forward(
        self, student: Outputs, teachers: list[Outputs], targets: torch.Tensor, epoch: float
    ) -> dict[str, torch.Tensor]:
        p = self.params
        teacher = one_teacher("cwd", teachers)
        supervised = self.task.supervised_loss(student.logits, targets)
        cwd = channel_divergence(student.logits, teacher.logits.detach(), p.temperature)
        loss = p.ce_weight * supervised + p.cwd_weight * cwd
        return {"loss": loss, self.task.loss_name: supervised, "cwd": cwd}
