"""What a distillation method is: an `nn.Module` over student and teacher outputs.

A method receives the student's outputs, its teachers' outputs (one entry per teacher; several
make an ensemble), the targets and the training progress (fractional epoch, for warm-ups), and
returns named loss terms; `loss` is the one minimised. Its own trainable parts (adapters) are
sub-modules: they train with the student, are wrapped by DDP with it (`kdray.distiller`), are
saved in checkpoints and left out of the deployable `model.pt`.

A method declares what it needs from a teacher (`needs`): `logits` (the soft-label cache can
serve them), `features` (the teacher runs online; stages come from timm's
`forward_intermediates`) or `none`. Its parameters are a pydantic model (`Params`) whose `name`
field is the method's name in job files; the job's `studies.<name>.method` is the discriminated
union of every registered method's `Params`.

Who teaches whom and how a teacher is trained belong to the study, never to the method.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import nn

Needs = Literal["none", "logits", "features"]

METHODS: dict[str, type[Method]] = {}


class MethodParams(BaseModel):
    """A method's validated settings; subclasses add `name: Literal["<method>"] = "<method>"`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str


@dataclass
class Outputs:
    """What one network produced for a batch: logits, and stage features when asked for."""

    logits: torch.Tensor
    features: list[torch.Tensor] = field(default_factory=list)


@dataclass(frozen=True)
class Shapes:
    """What a method may size its adapters by: classes and each network's stage channels."""

    num_classes: int
    total_epochs: int
    student_channels: tuple[int, ...] = ()
    teacher_channels: tuple[tuple[int, ...], ...] = ()  # one tuple per teacher


class Method(nn.Module, ABC):
    """Base of every distillation method; see the module docstring for the contract."""

    name: ClassVar[str]
    needs: ClassVar[Needs] = "logits"
    Params: ClassVar[type[MethodParams]]
    #: Params fields that, when a job leaves them unset, come from the job's `distill` block
    distill_defaults: ClassVar[tuple[str, ...]] = ()
    #: False: one teacher per student only (feature methods align one teacher's stages)
    allows_ensemble: ClassVar[bool] = True

    def __init__(self, params: MethodParams, shapes: Shapes):
        super().__init__()
        self.params = params
        self.shapes = shapes

    @classmethod
    def feature_stages(cls, params: MethodParams, num_stages: int) -> list[int]:
        """Which of a network's `num_stages` stages (timm `feature_info` order) the method
        compares; stage lists of student and teacher are aligned from the deepest stage."""
        return []

    @classmethod
    def warnings(cls, params: MethodParams, num_classes: int) -> list[str]:
        """What a user should know before training with these settings on this data."""
        return []

    @abstractmethod
    def forward(
        self,
        student: Outputs,
        teachers: list[Outputs],
        targets: torch.Tensor,
        epoch: float,
    ) -> dict[str, torch.Tensor]:
        """Named loss terms; `loss` is the one minimised, the others are logged."""


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available by its name in job files."""
    name = cls.Params.model_fields["name"].default
    if not name or name in METHODS:
        raise ValueError(f"method {name!r} has no name or is registered twice")
    cls.name = name
    METHODS[name] = cls
    return cls


# --- shared maths ------------------------------------------------------------------------------


def teacher_log_probs(teachers: list[Outputs], temperature: float) -> torch.Tensor:
    """log of the teachers' softened distribution: with several teachers, the mean of their
    softened probabilities (the usual ensemble target)."""
    logs = [F.log_softmax(t.logits.detach().float() / temperature, dim=1) for t in teachers]
    if len(logs) == 1:
        return logs[0]
    return torch.logsumexp(torch.stack(logs), dim=0) - math.log(len(logs))


def kl_to_student(
    log_p_teacher: torch.Tensor, log_p_student: torch.Tensor, reduction: str = "batchmean"
) -> torch.Tensor:
    """KL(teacher || student) summed over classes; `batchmean` divides by the batch size,
    `mean` by batch x classes (Yuan et al.'s element-wise mean, K times smaller)."""
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="sum", log_target=True)
    # explicit divisors: torch's own reduction="mean" is announced to change meaning
    divisor = log_p_student.numel() if reduction == "mean" else log_p_student.shape[0]
    return kl / divisor


def plain_cross_entropy(student: Outputs, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """No distillation: what teachers and baselines train with."""
    ce = F.cross_entropy(student.logits, targets)
    return {"loss": ce, "ce": ce}
