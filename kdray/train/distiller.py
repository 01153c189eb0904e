"""The student and its method's trainable parts as one module: what DDP wraps, what the optimizer
steps and what a checkpoint holds. The deployable `model.pt` holds `Distiller.student` alone.

The whole loss is computed inside `forward` (as mdistiller's `forward_train`), so under DDP the
method's adapters are synchronised with the student. Called without targets it is the plain
student (evaluation).
"""

from __future__ import annotations

import torch
from torch import nn

from kdray.methods import Method, Outputs, plain_loss
from kdray.tasks import Task


def stage_count(model: nn.Module) -> int:
    """How many feature stages timm reports for `model` (`feature_info`)."""
    info = getattr(model, "feature_info", None)
    if not info or not hasattr(model, "forward_intermediates"):
        name = getattr(model, "default_cfg", {}).get("architecture", type(model).__name__)
        raise ValueError(
            f"{name} has no timm forward_intermediates/feature_info: a feature method cannot "
            "read its stages; use a logit method (kd, dkd) for this model"
        )
    return len(info)


def stage_channels(model: nn.Module) -> list[int]:
    return [stage["num_chs"] for stage in model.feature_info]


def network_outputs(model: nn.Module, x: torch.Tensor, stages: list[int]) -> Outputs:
    """Logits, plus the features of `stages` (timm `forward_intermediates`) when there are any."""
    if not stages:
        return Outputs(model(x))
    final, features = model.forward_intermediates(x)
    return Outputs(model.forward_head(final), [features[i] for i in stages])


class Distiller(nn.Module):
    def __init__(
        self, student: nn.Module, method: Method | None, student_stages: list[int], task: Task
    ):
        super().__init__()
        self.student = student
        self.method = method
        self.task = task
        self.student_stages = list(student_stages)
        if method is not None:
            method.bind_student(student)

    def forward(
        self,
        x: torch.Tensor,
        targets: torch.Tensor | None = None,
        teachers: list[Outputs] | None = None,
        epoch: float = 0.0,
    ):
        """Evaluation (no targets): the student's logits. Training: (logits, loss terms)."""
        if targets is None:
            return self.student(x)
        outputs = network_outputs(self.student, x, self.student_stages)
        if self.method is None:
            return outputs.logits, plain_loss(self.task, outputs, targets)
        own = self.method.teach(x, self.student)
        teachers = own if own is not None else teachers or []
        return outputs.logits, self.method(outputs, teachers, targets, epoch)
