"""L1 feature transfer over all stages, after the breast-ultrasound KD paper in the project's
seeds (its reference describing knowledge transferred from every stage with an L1 norm between
student and teacher features, to a student with 100x fewer parameters).

That paper describes the idea, not this exact loss: the formulation here is ours after that
description. Per chosen aligned stage, the mean absolute difference between the adapted student
feature (1x1 conv, batch norm, to the teacher's channels) and the teacher's, the larger map
average-pooled to the smaller size; the term is the average over stages, and
loss = `ce_weight * CE + l1_weight * term` (CE: the task's supervised loss; CE + Dice for a
segmenter). By default every aligned stage is compared: on segmenters (U-Net, MAnet, Linknet)
every encoder and decoder stage the two networks share (paired by input stride), the paper's
all-layer transfer; a stage of another width goes through its adapter.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from kdray.methods.base import Method, MethodParams, Outputs, Shapes, register
from kdray.methods.features import adapters, one_teacher, resolve_stages, same_size


class FeatureL1Params(MethodParams):
    name: Literal["feature_l1"] = "feature_l1"
    stages: list[int] | None = Field(
        None, min_length=1, description="aligned stages (negative: from the deepest); None: all"
    )
    l1_weight: float = Field(1.0, ge=0, description="weight of the L1 feature term")
    ce_weight: float = Field(1.0, ge=0, description="weight of the supervised loss (CE)")


@register
class FeatureL1(Method):
    Params = FeatureL1Params
    needs = "features"
    loss_weights = ("l1_weight", "ce_weight")
    allows_ensemble = False
    tasks = ("single_label", "multi_label", "segmentation")
    ranks = (2, 3)  # 3D: Conv3d adapters, volumes pooled per axis

    def __init__(self, params: FeatureL1Params, shapes: Shapes):
        super().__init__(params, shapes)
        self.adapters = adapters("feature_l1", shapes)

    @classmethod
    def feature_stages(cls, params: FeatureL1Params, num_stages: int, parts=()) -> list[int]:
        stages = list(range(num_stages)) if params.stages is None else params.stages
        return resolve_stages("feature_l1.stages", stages, num_stages)

    def forward(
        self, student: Outputs, teachers: list[Outputs], targets: torch.Tensor, epoch: float
    ) -> dict[str, torch.Tensor]:
        p = self.params
        teacher = one_teacher("feature_l1", teachers)
        pairs = zip(self.adapters, student.features, teacher.features, strict=True)
        terms = []
        for adapt, f_s, f_t in pairs:
            f_s, f_t = same_size(adapt(f_s), f_t.detach())
            terms.append(F.l1_loss(f_s.float(), f_t.float()))
        l1 = torch.stack(terms).mean()
        ce = self.task.supervised_loss(student.logits, targets)
        return {"loss": p.ce_weight * ce + p.l1_weight * l1, self.task.loss_name: ce, "l1": l1}
