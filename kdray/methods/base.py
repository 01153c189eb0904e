"""What a distillation method is: an `nn.Module` over student and teacher outputs.

A method receives the student's outputs, its teachers' outputs (one entry per teacher; several
make an ensemble), the targets and the training progress (fractional epoch, for warm-ups), and
returns named loss terms; `loss` is the one minimised. Its own trainable parts (adapters) are
sub-modules: they train with the student, are wrapped by DDP with it (`kdray.train.distiller`), are
saved in checkpoints and left out of the deployable `model.pt`.

A method declares what it needs from a teacher (`needs`): `logits` (the soft-label cache can
serve them), `features` (the teacher runs online; stages come from timm's
`forward_intermediates`) or `none`. A method that makes its own teacher (mean teacher's moving
average of the student) overrides `teach` and `after_step`. A method that can train on images
without a label (target `UNLABELLED`, a label budget's pool) says so with `uses_unlabelled`,
and the spatial ranks its loss is written for (`ranks`: 2 images, 3 volumes) as it declares
its tasks.
Its parameters are a pydantic model (`Params`) whose `name` field is the method's name in job
files; the job's `studies.<name>.method` is the discriminated union of every registered
method's `Params`.

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

from kdray.tasks import DEFAULT_TASK, Task, get_task

Needs = Literal["none", "logits", "features"]

METHODS: dict[str, type[Method]] = {}


class MethodParams(BaseModel):
    """A method's validated settings; subclasses add `name: Literal["<method>"] = "<method>"`."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    #: fields added after runs were planned: left out of a run's identity at their default,
    #: so those runs keep their ids
    added_later: ClassVar[tuple[str, ...]] = ()

    name: str

    def identity(self) -> dict:
        """The settings that decide a run (`kdray.spec.plan`)."""
        values = self.model_dump(mode="json")
        for key in self.added_later:
            if values.get(key) == type(self).model_fields[key].default:
                values.pop(key)
        return values


@dataclass
class Outputs:
    """What one network produced for a batch: logits, and stage features when asked for."""

    logits: torch.Tensor
    features: list[torch.Tensor] = field(default_factory=list)


@dataclass(frozen=True)
class Shapes:
    """What a method may size its adapters and weights by: classes, each network's stage
    channels, the labelled training images per class, and the data's spatial rank."""

    num_classes: int
    total_epochs: int
    student_channels: tuple[int, ...] = ()
    teacher_channels: tuple[tuple[int, ...], ...] = ()  # one tuple per teacher
    class_counts: tuple[int, ...] = ()  # positives per label for a multi-label task
    seed: int = 0
    task: str = DEFAULT_TASK  # kdray.tasks: what a target and an output are
    rank: int = 2  # spatial axes of the inputs and stage maps: 2 images, 3 volumes


class Method(nn.Module, ABC):
    """Base of every distillation method; see the module docstring for the contract."""

    name: ClassVar[str]
    needs: ClassVar[Needs] = "logits"
    Params: ClassVar[type[MethodParams]]
    #: Params fields that, when a job leaves them unset, come from the job's `distill` block
    distill_defaults: ClassVar[tuple[str, ...]] = ()
    #: False: one teacher per student only (feature methods align one teacher's stages)
    allows_ensemble: ClassVar[bool] = True
    #: True: the loss is defined on images without a label (target UNLABELLED)
    uses_unlabelled: ClassVar[bool] = False
    #: the tasks (kdray.tasks) whose outputs the method's loss is defined for
    tasks: ClassVar[tuple[str, ...]] = ("single_label",)
    #: the spatial ranks of inputs it is written for: 2 (images), 3 (volumes)
    ranks: ClassVar[tuple[int, ...]] = (2,)
    # the parameters that weigh the loss's terms: all of them 0, and the loss is 0
    loss_weights: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: MethodParams, shapes: Shapes):
        super().__init__()
        self.params = params
        self.shapes = shapes
        self.task: Task = get_task(shapes.task)

    @classmethod
    def feature_stages(
        cls, params: MethodParams, num_stages: int, parts: tuple[str, ...] = ()
    ) -> list[int]:
        """Which of the `num_stages` aligned stage pairs the method compares. 2D classifiers'
        stages (timm `feature_info` order) are aligned from the deepest; a segmenter's and a
        3D network's pair by part and input stride, and `parts` says each pair's part
        (`encoder`, `decoder`; `stage` for a classifier's)."""
        return []

    @classmethod
    def warnings(
        cls, params: MethodParams, num_classes: int, epochs: float | None = None
    ) -> list[str]:
        """What a user should know before training with these settings on this data, for runs
        of `epochs` epochs (None: unknown)."""
        weights = {name: getattr(params, name) for name in cls.loss_weights}
        if weights and not any(weights.values()):
            names = ", ".join(weights)
            return [
                f"{names}: every weight of the loss is 0, so the loss is 0 and the student "
                "never learns; give one of them a positive value"
            ]
        return []

    @classmethod
    def inert_params(cls, num_classes: int) -> tuple[str, ...]:
        """Parameters that change nothing on data of `num_classes` (a search over one spends
        its samples on settings that train alike)."""
        return ()

    def bind_student(self, student: nn.Module) -> None:
        """Called once with the student before training (mean teacher copies its weights)."""

    def evaluated_models(self) -> dict[str, nn.Module]:
        """Models the method trains besides the student, evaluated at the end under a prefix
        (`ema_test_acc`, ...)."""
        return {}

    def teach(self, x: torch.Tensor, student: nn.Module) -> list[Outputs] | None:
        """Teachers the method makes itself for batch `x`; None: the study's teachers."""
        return None

    def after_step(self, student: nn.Module, epoch: float) -> None:
        """Called after every optimizer step (a moving-average teacher updates here)."""

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


def teacher_log_probs(task: Task, teachers: list[Outputs], temperature: float) -> torch.Tensor:
    """log of the teachers' softened distribution (`Task.log_probs`, outcomes along dim 1):
    with several teachers, the mean of their softened probabilities (the usual ensemble
    target)."""
    logs = [task.log_probs(t.logits.detach(), temperature) for t in teachers]
    if len(logs) == 1:
        return logs[0]
    return torch.logsumexp(torch.stack(logs), dim=0) - math.log(len(logs))


def kl_to_student(
    log_p_teacher: torch.Tensor, log_p_student: torch.Tensor, reduction: str = "batchmean"
) -> torch.Tensor:
    """KL(teacher || student) summed over the outcomes (dim 1); `batchmean` averages it over
    everything else (the images; a multi-label task's images and labels), `mean` over the
    outcomes too (Yuan et al.'s element-wise mean, K times smaller)."""
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="sum", log_target=True)
    # explicit divisors: torch's own reduction="mean" is announced to change meaning
    outcomes = log_p_student.shape[1]
    divisor = log_p_student.numel() if reduction == "mean" else log_p_student.numel() // outcomes
    return kl / divisor


def plain_loss(task: Task, student: Outputs, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """No distillation: what teachers and baselines train with (the task's supervised loss)."""
    loss = task.supervised_loss(student.logits, targets)
    return {"loss": loss, task.loss_name: loss}


def class_weights(counts: tuple[int, ...], kind: str, beta: float = 0.999) -> torch.Tensor:
    """Per-class loss weights from labelled counts, summing to the number of classes:
    `inverse` frequency, or Cui et al.'s (CVPR 2019) effective number `(1 - b) / (1 - b^n)`.
    A class with no labelled image gets weight 0."""
    n = torch.tensor(counts, dtype=torch.float64)
    if kind == "inverse":
        raw = torch.where(n > 0, 1.0 / n.clamp(min=1), torch.zeros_like(n))
    elif kind == "effective":
        raw = torch.where(n > 0, (1 - beta) / (1 - beta**n), torch.zeros_like(n))
    else:
        raise ValueError(f"unknown class weighting {kind!r}")
    return (raw * len(counts) / raw.sum()).float()
