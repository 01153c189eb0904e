"""Mean teacher (Tarvainen & Valpola, "Mean teachers are better role models", NeurIPS 2017).

No teacher run: the teacher is an exponential moving average (EMA, timm's `ModelEmaV3`) of the
student's weights, updated after every optimizer step with decay `rampup_decay` during the
ramp-up and `ema_decay` after it (never above 1 - 1/(step + 1), as the authors' code, so the
first steps are not an average over the random initial weights). Loss: cross-entropy on the
labelled images + w(t) x MSE between the softmax outputs of the student on its view and of the
EMA on another view of the same images (labelled and pool alike): the student's view is the
job's augmentation; the EMA's view is that view shifted by up to `translate` pixels and with
Gaussian noise of std `noise`, the paper's own perturbations, drawn from a generator seeded by
(run seed, step), so a resumed run draws the same views. w(t) = consistency x exp(-5(1 - t)^2),
t the share of the ramp-up done. The MSE is the mean over images and classes. The authors
weighed it 100 on CIFAR-10 (10 classes, long schedules); on BreastMNIST (2 classes, ~170 steps)
100 drove every run to the majority class (balanced accuracy 0.5) and 10 cost accuracy, while 1
beat the no-KD baseline: hence the default 1.

Segmentation (per-pixel softmax; UA-MT's setting on volumes, Yu et al., MICCAI 2019) and
volumes take the same loss: the EMA's view is shifted per spatial axis (a volume's three), and
a segmenter's EMA output is shifted back by the same whole pixels before the MSE, so each
pixel's consistency compares predictions for the same pixel (within `translate` of the border
the shifted-back output is the reflection's).

The EMA's weights and step count are part of the method's state, so checkpoints hold them and a
resumed run restores them; the EMA model is evaluated at the end beside the student
(`ema_*` metrics). The deployable `model.pt` is the student.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from kdray.methods.base import Method, MethodParams, Outputs, register

if TYPE_CHECKING:
    from timm.utils import ModelEmaV3


class MeanTeacherParams(MethodParams):
    name: Literal["mean_teacher"] = "mean_teacher"
    consistency: float = Field(1.0, ge=0, description="consistency weight after the ramp-up")
    rampup_epochs: float = Field(5.0, ge=0, description="epochs of ramp-up (weight and decay)")
    rampup_decay: float = Field(0.99, ge=0, lt=1, description="EMA decay during the ramp-up")
    ema_decay: float = Field(0.999, ge=0, lt=1, description="EMA decay after the ramp-up")
    noise: float = Field(0.15, ge=0, description="EMA view: Gaussian noise std (normalised)")
    translate: int = Field(2, ge=0, description="EMA view: random shift of up to N pixels")


def rampup(epoch: float, rampup_epochs: float) -> float:
    """exp(-5 (1 - t)^2), t = epoch / rampup_epochs clipped to [0, 1] (Laine & Aila's)."""
    if rampup_epochs <= 0:
        return 1.0
    t = min(max(epoch / rampup_epochs, 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)


def shifted(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Each image (N, C, H, W) or volume (N, C, D, H, W) of `x` moved by whole pixels or voxels,
    `shifts[:, i]` along the i-th spatial axis counted from the last, reflected at the border."""
    n, rank = shifts.shape
    sizes = torch.tensor(x.shape[2:][::-1], device=x.device)  # width, height[, depth]
    theta = torch.zeros(n, rank, rank + 1, device=x.device, dtype=x.dtype)
    theta[:, range(rank), range(rank)] = 1
    theta[:, :, rank] = shifts.to(x.dtype) * 2 / sizes
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="reflection", align_corners=False)


def perturbed_view(
    x: torch.Tensor, translate: int, noise: float, generator
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`x` with each image or volume shifted by whole pixels in [-translate, translate] per
    spatial axis (`shifted`) and Gaussian noise added; and the shifts (None without)."""
    shifts = None
    if translate:
        size = (len(x), x.dim() - 2)
        shifts = torch.randint(-translate, translate + 1, size, generator=generator,
                               device=x.device)  # fmt: skip
        x = shifted(x, shifts)
    if noise:
        x = x + noise * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x, shifts


@register
class MeanTeacher(Method):
    Params = MeanTeacherParams
    needs = "none"
    uses_unlabelled = True
    tasks = ("single_label", "multi_label", "segmentation")  # MSE of the task's probabilities
    ranks = (2, 3)  # the EMA's view shifted per axis: a volume's three too

    def __init__(self, params: MeanTeacherParams, shapes):
        super().__init__(params, shapes)
        self.ema: ModelEmaV3 | None = None
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def bind_student(self, student: nn.Module) -> None:
        from timm.utils import ModelEmaV3  # here: a trial driver imports the methods, not timm

        self.ema = ModelEmaV3(student, decay=self.params.rampup_decay)
        self.ema.requires_grad_(False)  # a buffer-like copy: not trained, not DDP-reduced

    @torch.no_grad()
    def teach(self, x: torch.Tensor, student: nn.Module) -> list[Outputs]:
        generator = torch.Generator(device=x.device)
        generator.manual_seed(self.shapes.seed * 1_000_003 + int(self.steps))
        view, shifts = perturbed_view(x, self.params.translate, self.params.noise, generator)
        self.ema.module.eval()  # the moving averages of the student's batch-norm statistics
        logits = self.ema.module(view)
        if shifts is not None and self.task.pixel_targets:  # back onto the student's pixels
            logits = shifted(logits, -shifts)
        return [Outputs(logits)]

    @torch.no_grad()
    def after_step(self, student: nn.Module, epoch: float) -> None:
        self.steps += 1
        p = self.params
        decay = p.ema_decay if epoch >= p.rampup_epochs else p.rampup_decay
        self.ema.decay = min(decay, 1.0 - 1.0 / (int(self.steps) + 1))
        self.ema.update(student)

    def evaluated_models(self) -> dict[str, nn.Module]:
        return {"ema": self.ema.module}

    def forward(self, student, teachers, targets, epoch):
        ce = self.task.supervised_loss(student.logits, targets)
        p_student = self.task.probabilities(student.logits)
        p_teacher = self.task.probabilities(teachers[0].logits.detach())
        consistency = F.mse_loss(p_student, p_teacher)
        weight = self.params.consistency * rampup(epoch, self.params.rampup_epochs)
        terms = {self.task.loss_name: ce, "consistency": consistency}
        return {"loss": ce + weight * consistency, **terms}
