"""Evaluation: the task's predictions over a whole split (probabilities, or a segmenter's masks;
shared across data-parallel ranks) and every split's metrics from a run's final weights."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from kdray.data import DATA_KINDS
from kdray.data.cache import DataInfo, load_groups, load_split
from kdray.spec.job import Job
from kdray.tasks import Task, get_task


def to_tensor(images: np.ndarray, mean, std, device) -> torch.Tensor:
    """A batch of uint8 (N, H, W, C) images as a normalised float (N, C, H, W) tensor."""
    x = torch.from_numpy(np.array(images)).to(device).permute(0, 3, 1, 2).float()
    m = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=device).view(1, -1, 1, 1)
    return (x / 255 - m) / s


def world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def predict(
    model, images: np.ndarray, mean, std, device, batch_size: int, task: Task, keep=None
) -> np.ndarray:
    """The task's predictions over the whole split (`keep(logits)`, default `task.prediction`:
    probabilities, or masks); ranks share the work and gather them."""
    keep = keep or task.prediction
    rank, size = world()
    shard = np.array_split(np.arange(len(images)), size)[rank]
    was_training = model.training
    model.eval()
    probs = []
    for start in range(0, len(shard), batch_size):
        idx = shard[start : start + batch_size]
        logits = model(to_tensor(images[idx[0] : idx[-1] + 1], mean, std, device))
        probs.append(keep(logits).cpu().numpy())
    model.train(was_training)
    local = np.concatenate(probs) if probs else np.zeros((0, 0), np.float32)
    if size == 1:
        return local
    parts: list = [None] * size
    dist.all_gather_object(parts, local)
    return np.concatenate([p for p in parts if len(p)])


def final_metrics(model, job: Job, info: DataInfo, device) -> dict:
    """Every split's metrics from the final weights (train without augmentation); for valid
    and test also the task's per-class (per-label) report, and study-level metrics when the
    data has studies. Volumes: `kdray.train.volume_eval`."""
    task = get_task(info.task)
    category = getattr(DATA_KINDS[job.data.kind], "group_category", None)

    def predicted(split: str):
        images, labels = load_split(info.path, split)
        batch = job.train.eval_batch_size
        return predict(model, images, info.mean, info.std, device, batch, task), labels

    valid = predicted("valid")
    fixed = job.train.f1_threshold if job.train.f1_threshold != "validation" else None
    chosen = task.chosen_on_validation(*valid, fixed)  # multi-label thresholds: never from test
    out: dict = {}
    for split in ("train", "valid", "test"):
        prefix = "val" if split == "valid" else split
        probs, labels = valid if split == "valid" else predicted(split)
        for key, value in task.metrics(probs, labels, info.num_classes, **chosen).items():
            out[f"{prefix}_{key}"] = value
        if split == "train":
            continue
        out[f"{prefix}_report"] = task.report(probs, labels, info.classes, **chosen)
        groups = load_groups(info.path, split)
        if groups is not None:
            for key, value in task.group_metrics(probs, labels, groups, category).items():
                out[f"{prefix}_{key}"] = value
    return out
