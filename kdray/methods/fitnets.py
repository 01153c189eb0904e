"""FitNets hint (Romero, Ballas, Kahou, Chassang, Gatta & Bengio, "FitNets: Hints for Thin Deep
Nets", ICLR 2015).

`ce_weight * CE(student, y) + hint_weight * MSE(adapter(f_s), f_t)` at one aligned stage (by
default the middle one, n // 2): the adapter (1x1 conv, batch norm) maps the student's channels
to the teacher's, the larger map is average-pooled to the smaller size, the MSE is the mean over
elements. As in mdistiller's `FitNet.py`, hint and CE train together in one stage (the paper
pre-trains the lower half on the hint first) with the hint weighted 100.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from kdray.methods.base import Method, MethodParams, Outputs, Shapes, register
from kdray.methods.features import adapters, one_teacher, resolve_stages, same_size


class FitNetsParams(MethodParams):
    name: Literal["fitnets"] = "fitnets"
    stage: int | None = Field(
        None, description="aligned stage of the hint (negative: from the deepest); None: n // 2"
    )
    hint_weight: float = Field(100.0, ge=0, description="weight of the hint (MSE) term")
    ce_weight: float = Field(1.0, ge=0, description="weight of the supervised loss (CE)")


@register
class FitNets(Method):
    Params = FitNetsParams
    needs = "features"
    loss_weights = ("hint_weight", "ce_weight")
    allows_ensemble = False
    tasks = ("single_label", "multi_label")
    ranks = (2, 3)  # 3D: a Conv3d adapter, volumes pooled per axis

    def __init__(self, params: FitNetsParams, shapes: Shapes):
        super().__init__(params, shapes)
        self.adapters = adapters("fitnets", shapes)

    @classmethod
    def feature_stages(cls, params: FitNetsParams, num_stages: int, parts=()) -> list[int]:
        stage = num_stages // 2 if params.stage is None else params.stage
        return resolve_stages("fitnets.stage", [stage], num_stages)

    def forward(
        self, student: Outputs, teachers: list[Outputs], targets: torch.Tensor, epoch: float
    ) -> dict[str, torch.Tensor]:
        p = self.params
        teacher = one_teacher("fitnets", teachers)
        f_s, f_t = same_size(self.adapters[0](student.features[0]), teacher.features[0].detach())
        hint = F.mse_loss(f_s.float(), f_t.float())
        ce = self.task.supervised_loss(student.logits, targets)
        return {
            "loss": p.ce_weight * ce + p.hint_weight * hint,
            self.task.loss_name: ce,
            "hint": hint,
        }
