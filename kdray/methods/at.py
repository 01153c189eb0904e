"""Attention transfer, AT (Zagoruyko & Komodakis, "Paying More Attention to Attention: Improving
the Performance of Convolutional Neural Networks via Attention Transfer", ICLR 2017).

Per chosen aligned stage, the attention map `Q = normalize(mean over channels of |f|^p)`,
flattened and L2-normalised per sample; the term is the mean of `(Q_s - Q_t)^2`, summed over
stages; loss = `ce_weight * CE + at_weight * term`. The larger feature map is average-pooled to
the smaller size before Q is computed. No adapter: Q has no channel dimension. Defaults follow
mdistiller's `AT.py`: p = 2, weight 1000, every stage but the shallowest (the stem); on a
segmenter (`kdray.tasks.segmenters`), every encoder stage but the shallowest (`stages` indexes
the aligned encoder and decoder stages, encoder first).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from kdray.methods.base import Method, MethodParams, Outputs, register
from kdray.methods.features import one_teacher, resolve_stages, same_size


class ATParams(MethodParams):
    name: Literal["at"] = "at"
    stages: list[int] | None = Field(
        None,
        min_length=1,
        description="aligned stages (negative: from the deepest); None: all but the shallowest "
        "(a segmenter: its encoder's but the shallowest)",
    )
    p: float = Field(2.0, gt=0, description="exponent of the attention map")
    at_weight: float = Field(1000.0, ge=0, description="weight of the attention term")
    ce_weight: float = Field(1.0, ge=0, description="weight of the supervised loss (CE)")


def attention(feature: torch.Tensor, p: float) -> torch.Tensor:
    """(N, positions): the mean over channels of |f|^p, flattened (H*W, or a volume's D*H*W)
    and L2-normalised per sample."""
    return F.normalize(feature.float().abs().pow(p).mean(dim=1).flatten(1), dim=1)


@register
class AttentionTransfer(Method):
    Params = ATParams
    needs = "features"
    loss_weights = ("at_weight", "ce_weight")
    allows_ensemble = False
    tasks = ("single_label", "multi_label", "segmentation")
    ranks = (2, 3)  # attention over every spatial position: a volume's voxels too

    @classmethod
    def feature_stages(cls, params: ATParams, num_stages: int, parts=()) -> list[int]:
        # all but the stem; a single aligned stage is still compared. A segmenter: its
        # encoder's stages but the shallowest (attention maps of what the encoder looks at)
        candidates = [i for i, part in enumerate(parts) if part == "encoder"]
        candidates = candidates or list(range(num_stages))
        default = candidates[1:] or candidates
        stages = default if params.stages is None else params.stages
        return resolve_stages("at.stages", stages, num_stages)

    def forward(
        self, student: Outputs, teachers: list[Outputs], targets: torch.Tensor, epoch: float
    ) -> dict[str, torch.Tensor]:
        p = self.params
        teacher = one_teacher("at", teachers)
        terms = []
        for f_s, f_t in zip(student.features, teacher.features, strict=True):
            f_s, f_t = same_size(f_s, f_t.detach())
            terms.append((attention(f_s, p.p) - attention(f_t, p.p)).pow(2).mean())
        at = torch.stack(terms).sum()
        ce = self.task.supervised_loss(student.logits, targets)
        return {"loss": p.ce_weight * ce + p.at_weight * at, self.task.loss_name: ce, "at": at}
