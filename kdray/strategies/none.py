"""No distillation: plain cross-entropy. Trains teachers and the per-student baselines."""

import torch.nn.functional as F

from kdray.strategies.base import Strategy, register


@register
class NoKD(Strategy):
    name = "none"
    needs_teacher = False

    def loss(self, student_logits, targets, teacher_logits=None):
        ce = F.cross_entropy(student_logits, targets)
        return {"loss": ce, "ce": ce}
