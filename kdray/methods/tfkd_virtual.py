"""Teacher-free KD with a virtual teacher (Yuan, Tay, Li, Wang & Feng, "Revisiting Knowledge
Distillation via Label Smoothing Regularization", CVPR 2020; Tf-KD_reg in their reference code).

No teacher model: a hand-made distribution q puts `correct_prob` (the paper's a) on the label and
`(1 - a) / (K - 1)` on every other class. The loss follows their code, conventions included:

`(1 - alpha) * CE(z_s, y) + alpha * multiplier * KL(softmax(q / T) || softmax(z_s))`

- the student's logits are *not* divided by T;
- q, already probabilities, is softened once more as logits: softmax(q / T);
- the KL is an element-wise mean: summed over batch and classes, divided by B * K.

The returned `kd` term is `multiplier * KL`, before the alpha weight.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from kdray.methods.base import Method, MethodParams, Outputs, kl_to_student, register


class TfKDVirtualParams(MethodParams):
    name: Literal["tfkd_virtual"] = "tfkd_virtual"
    correct_prob: float = Field(0.99, gt=0, lt=1, description="the virtual teacher's p(label)")
    alpha: float = Field(0.1, ge=0, le=1, description="weight of the KD term")
    temperature: float = Field(20.0, gt=0, le=1000, description="softens q only, not the student")
    multiplier: float = Field(100.0, gt=0, description="scale of the KL term")


def virtual_teacher(targets: torch.Tensor, num_classes: int, correct_prob: float) -> torch.Tensor:
    """q: `correct_prob` on the label, the rest spread evenly over the other classes."""
    other = (1 - correct_prob) / (num_classes - 1)
    q = torch.full((targets.shape[0], num_classes), other, device=targets.device)
    return q.scatter(1, targets[:, None], correct_prob)


@register
class TfKDVirtual(Method):
    Params = TfKDVirtualParams
    needs = "none"

    def forward(
        self, student: Outputs, teachers: list[Outputs], targets: torch.Tensor, epoch: float
    ) -> dict[str, torch.Tensor]:
        p = self.params
        logits = student.logits.float()
        ce = F.cross_entropy(student.logits, targets)
        q = virtual_teacher(targets, logits.shape[1], p.correct_prob)
        log_q = F.log_softmax(q / p.temperature, dim=1)
        kd = p.multiplier * kl_to_student(log_q, F.log_softmax(logits, dim=1), reduction="mean")
        return {"loss": (1 - p.alpha) * ce + p.alpha * kd, "ce": ce, "kd": kd}
