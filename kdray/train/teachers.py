"""Where a student's teacher outputs come from, batch by batch: nowhere (no teacher), the
teachers' soft-label caches (logits stacked, one array per teacher), or the teachers run online
(needed for features, and the fallback when a cache is missing or was made for other settings).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kdray.data.cache import DataInfo
from kdray.methods import Outputs
from kdray.spec.job import Job
from kdray.spec.plan import RunSpec
from kdray.store.model_file import load_model
from kdray.train import soft_labels
from kdray.train.distiller import network_outputs


class NoTeacher:
    kind = None

    def outputs(self, x: torch.Tensor, epoch: int, rank: int, start: int) -> list[Outputs]:
        return []


class CachedTeachers:
    """Each teacher's stored logits for (epoch, rank, position) of the student's own draw."""

    kind = "cached"

    def __init__(self, caches: list[np.ndarray], device: torch.device):
        self.caches, self.device = caches, device

    def outputs(self, x: torch.Tensor, epoch: int, rank: int, start: int) -> list[Outputs]:
        stop = start + len(x)
        return [
            Outputs(torch.from_numpy(c[epoch, rank, start:stop].astype(np.float32)).to(self.device))
            for c in self.caches
        ]


class OnlineTeachers:
    """The teacher networks run on every batch (no gradients), in their own normalisation."""

    kind = "online"

    def __init__(
        self,
        models: list[nn.Module],
        metas: list[dict],
        stages: list[list[int]],
        info: DataInfo,
        autocast: Callable[[], contextlib.AbstractContextManager],
    ):
        self.models, self.metas, self.stages = models, metas, stages
        self.info, self.autocast = info, autocast
        for model in models:
            for p in model.parameters():
                p.requires_grad_(False)

    @torch.no_grad()
    def outputs(self, x: torch.Tensor, epoch: int, rank: int, start: int) -> list[Outputs]:
        out = []
        for model, meta, stages in zip(self.models, self.metas, self.stages, strict=True):
            xt = x if meta["mean"] == self.info.mean else _renormalise(x, self.info, meta)
            with self.autocast():
                out.append(network_outputs(model, xt, stages))
        return out


def load_cached(job: Job, spec: RunSpec, info: DataInfo, teacher_dirs: list[Path], device="cpu"):
    """Every teacher's soft labels for this student's views on `device`, or None if any is
    missing or was made for other views."""
    key = soft_labels.cache_key(job, spec.seed, info, spec.labels, spec.unlabelled, device)
    caches = [soft_labels.load(d, key) for d in teacher_dirs]
    return None if any(c is None for c in caches) else caches


def load_teachers(teacher_dirs: list[Path], device: torch.device) -> tuple[list, list]:
    loaded = [load_model(d / "model.pt", device) for d in teacher_dirs]
    return [m for m, _ in loaded], [meta for _, meta in loaded]


def _renormalise(x: torch.Tensor, info: DataInfo, meta: dict) -> torch.Tensor:
    """Re-express a batch normalised with the data's mean/std in the teacher's normalisation;
    per channel, over every spatial axis (images or volumes)."""
    shape = (1, -1) + (1,) * (x.dim() - 2)

    def channels(values) -> torch.Tensor:
        return torch.tensor(values, device=x.device).view(shape)

    data_mean, data_std = channels(info.mean), channels(info.std)
    teacher_mean, teacher_std = channels(meta["mean"]), channels(meta["std"])
    return (x * data_std + data_mean - teacher_mean) / teacher_std
