"""What a distillation strategy is: a loss over logits plus its role in the grid."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

STRATEGIES: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make a strategy available by its `name` in job files."""
    if cls.name in STRATEGIES:
        raise ValueError(f"strategy {cls.name!r} registered twice")
    STRATEGIES[cls.name] = cls
    return cls


class Strategy(ABC):
    name: ClassVar[str]
    #: whether a student trial of this strategy loads a teacher (False: plain training)
    needs_teacher: ClassVar[bool] = True
    #: how this strategy's teachers are trained: to the last epoch, or stopped inside a
    #: validation-accuracy band (defective KD)
    teacher_stop: ClassVar[Literal["converged", "band"]] = "converged"

    def __init__(
        self, temperature: float = 4.0, alpha: float = 0.9, kl_reduction: str = "batchmean"
    ):
        self.temperature = temperature
        self.alpha = alpha
        self.kl_reduction = kl_reduction

    @abstractmethod
    def loss(
        self,
        student_logits: torch.Tensor,
        targets: torch.Tensor,
        teacher_logits: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Named loss terms; `loss` is the one to minimise."""


def hinton_kd_loss(
    student_logits: torch.Tensor,
    targets: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    alpha: float,
    kl_reduction: str = "batchmean",
) -> dict[str, torch.Tensor]:
    """`(1 - alpha) * CE(student, y) + alpha * T^2 * KL(teacher_T || student_T)`.

    `batchmean` sums the KL over classes and averages over the batch (Hinton; mdistiller);
    `mean` averages over batch and classes, K times smaller (Yuan et al.'s reference code).
    """
    ce = F.cross_entropy(student_logits, targets)
    t = temperature
    log_p_student = F.log_softmax(student_logits / t, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.detach() / t, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="sum", log_target=True)
    # explicit divisors: torch's own reduction="mean" is announced to change meaning
    kl = kl / (student_logits.numel() if kl_reduction == "mean" else student_logits.shape[0])
    kd = kl * t * t
    return {"loss": (1 - alpha) * ce + alpha * kd, "ce": ce, "kd": kd}
