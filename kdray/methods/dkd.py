"""Decoupled KD (Zhao, Cui, Song, Qiu & Liang, "Decoupled Knowledge Distillation", CVPR 2022;
reference code: mdistiller `distillers/DKD.py`).

`ce_weight * CE + min(epoch / warmup_epochs, 1) * (alpha * TCKD + beta * NCKD)`, where, at
temperature T and with p the softened distributions:

- TCKD is the KL between the binary distributions (p of the target class, sum of the others) of
  teacher and student, summed over the two bins, times T^2, averaged over the batch;
- NCKD is the KL between the teacher's and the student's distributions over the non-target
  classes only (target removed, renormalised), summed over them, times T^2, averaged over the batch.

The returned `tckd` and `nckd` terms are unweighted: before alpha, beta and the warm-up factor.
`warmup_epochs=None` means 1/12 of the run's epochs (the paper's 20 of 240); 0 disables it. With
several teachers the teacher distribution is the mean of their softened probabilities. With two
classes NCKD is identically 0 and DKD reduces to TCKD plus CE (a warning says so). Class-balanced
DKD (`class_weights`, as in `kd`) weighs CE and each image's TCKD and NCKD by its class.
"""

from __future__ import annotations

import warnings
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from kdray.methods.base import (
    Method,
    MethodParams,
    Outputs,
    Shapes,
    class_weights,
    register,
    teacher_log_probs,
)


class DKDParams(MethodParams):
    name: Literal["dkd"] = "dkd"
    added_later: ClassVar[tuple[str, ...]] = ("class_weights", "class_beta")
    alpha: float = Field(1.0, ge=0, description="weight of TCKD (target-class KD)")
    beta: float = Field(8.0, ge=0, description="weight of NCKD (non-target-class KD)")
    temperature: float = Field(4.0, gt=0, le=1000, description="softmax temperature T")
    ce_weight: float = Field(1.0, ge=0, description="weight of the supervised loss (CE)")
    warmup_epochs: float | None = Field(
        None, ge=0, description="linear warm-up of the KD terms; None: 1/12 of the run's epochs"
    )
    class_weights: Literal["none", "inverse", "effective"] = Field(
        "none", description="per-class weights on CE, TCKD and NCKD, from the labelled counts"
    )
    class_beta: float = Field(0.999, gt=0, lt=1, description="effective-number weights' beta")


def _two_class_warning() -> str:
    return (
        "DKD with 2 classes: NCKD (the non-target term) is identically 0 with two classes, so "
        "DKD reduces to TCKD plus CE and beta has no effect"
    )


def _split(log_p: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(target) and log(1 - p(target)) per sample, from log-probabilities over classes."""
    log_target = log_p.masked_fill(~mask, 0.0).sum(dim=1)
    log_others = torch.logsumexp(log_p.masked_fill(mask, float("-inf")), dim=1)
    return log_target, log_others


def dkd_terms(
    student_logits: torch.Tensor,
    log_p_teacher: torch.Tensor,
    targets: torch.Tensor,
    T: float,
    weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD), each times T^2 and averaged over the batch (weighted by each image's class
    weight when `weight` is given, as torch weighs cross-entropy), before alpha and beta."""
    mask = F.one_hot(targets, student_logits.shape[1]).bool()
    log_s = F.log_softmax(student_logits.float() / T, dim=1)
    s_target, s_others = _split(log_s, mask)
    t_target, t_others = _split(log_p_teacher, mask)
    # binary distributions (target, others): sum over the two bins of p_t (log p_t - log p_s)
    tckd = t_target.exp() * (t_target - s_target) + t_others.exp() * (t_others - s_others)
    # non-target distributions, renormalised; the target entry has teacher weight exactly 0
    log_t_nt = log_p_teacher - t_others[:, None]
    log_s_nt = log_s - s_others[:, None]
    p_t_nt = log_t_nt.exp().masked_fill(mask, 0.0)
    nckd = (p_t_nt * (log_t_nt - log_s_nt)).masked_fill(mask, 0.0).sum(dim=1)
    if weight is None:
        return tckd.mean() * T * T, nckd.mean() * T * T
    w = weight[targets]
    return (tckd * w).sum() / w.sum() * T * T, (nckd * w).sum() / w.sum() * T * T


@register
class DKD(Method):
    Params = DKDParams
    needs = "logits"
    loss_weights = ("ce_weight", "alpha", "beta")

    def __init__(self, params: DKDParams, shapes: Shapes):
        super().__init__(params, shapes)
        if shapes.num_classes == 2:
            warnings.warn(_two_class_warning(), UserWarning, stacklevel=2)
        weight = None
        if params.class_weights != "none":
            weight = class_weights(shapes.class_counts, params.class_weights, params.class_beta)
        self.register_buffer("class_weight", weight, persistent=False)

    @classmethod
    def warnings(
        cls, params: MethodParams, num_classes: int, epochs: float | None = None
    ) -> list[str]:
        out = super().warnings(params, num_classes, epochs)
        out += [_two_class_warning()] if num_classes == 2 else []
        warmup = params.warmup_epochs
        if epochs is not None and warmup is not None and warmup > epochs:
            reached = epochs / warmup
            out.append(
                f"warmup_epochs: {warmup:g} is longer than train.epochs ({epochs:g}): the KD "
                f"terms reach only {reached:.0%} of their weight by the last epoch; lower "
                "warmup_epochs (unset: 1/12 of the epochs)"
            )
        return out

    @classmethod
    def inert_params(cls, num_classes: int) -> tuple[str, ...]:
        return ("beta",) if num_classes == 2 else ()  # NCKD, what beta weighs, is 0

    def warmup_factor(self, epoch: float) -> float:
        """min(epoch / warm-up, 1); 1 when the warm-up is 0."""
        warmup = self.params.warmup_epochs
        if warmup is None:
            warmup = self.shapes.total_epochs / 12
        return 1.0 if warmup <= 0 else min(epoch / warmup, 1.0)

    def forward(
        self, student: Outputs, teachers: list[Outputs], targets: torch.Tensor, epoch: float
    ) -> dict[str, torch.Tensor]:
        p = self.params
        ce = F.cross_entropy(student.logits, targets, weight=self.class_weight)
        log_p_teacher = teacher_log_probs(self.task, teachers, p.temperature)
        tckd, nckd = dkd_terms(
            student.logits, log_p_teacher, targets, p.temperature, self.class_weight
        )
        kd = self.warmup_factor(epoch) * (p.alpha * tckd + p.beta * nckd)
        return {"loss": p.ce_weight * ce + kd, "ce": ce, "tckd": tckd, "nckd": nckd}
