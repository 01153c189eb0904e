"""Evaluation on volumes: every volume of a split predicted whole by sliding window over
patches of the training patch's shape (`kdray.tasks.sliding_window`), and scored at its own
spacing (Dice, IoU, HD95 in mm: `Task.metrics(..., spacings=...)`). Ranks share the volumes
and gather the predicted masks, as `kdray.train.evaluate.predict` does for images."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from kdray.data.cache import DataInfo
from kdray.data.volume_cache import CachedVolumes, load_volumes
from kdray.tasks import Task, get_task
from kdray.tasks.sliding_window import sliding_window_logits
from kdray.train.evaluate import world


def predict_volumes(
    model: torch.nn.Module, volumes: CachedVolumes, patch, device, task: Task
) -> list[np.ndarray]:
    """The task's prediction (a mask) of each volume, by sliding window over `patch`."""
    rank, size = world()
    shard = np.array_split(np.arange(len(volumes)), size)[rank]
    local = []
    for index in shard:
        image = np.asarray(volumes[int(index)].image, dtype=np.float32)
        x = torch.from_numpy(image)[None, None].to(device)
        logits = sliding_window_logits(model, x, tuple(patch))
        local.append((int(index), task.prediction(logits)[0].cpu().numpy()))
    if size > 1:
        parts: list = [None] * size
        dist.all_gather_object(parts, local)
        local = [item for part in parts for item in part]
    return [pred for _, pred in sorted(local, key=lambda item: item[0])]


def split_truth(volumes: CachedVolumes) -> tuple[list[np.ndarray], list[tuple[float, ...]]]:
    """Each volume's mask and spacing (mm per axis)."""
    return (
        [volumes[i].mask for i in range(len(volumes))],
        [tuple(entry["spacing"]) for entry in volumes.entries],
    )


def volume_score(model, volumes: CachedVolumes, info: DataInfo, device) -> float:
    """The task's primary metric over `volumes` (validation during training)."""
    task = get_task(info.task)
    preds = predict_volumes(model, volumes, info.patch, device, task)
    truths, spacings = split_truth(volumes)
    return task.primary_score(preds, truths, info.num_classes, spacings=spacings)


def volume_final_metrics(model, info: DataInfo, device) -> dict:
    """Every split's metrics from the final weights, and for valid and test the per-class
    report: what `kdray.train.evaluate.final_metrics` gives for images."""
    task = get_task(info.task)
    out: dict = {}
    for split in ("train", "valid", "test"):
        prefix = "val" if split == "valid" else split
        volumes = load_volumes(info.path, split)
        preds = predict_volumes(model, volumes, info.patch, device, task)
        truths, spacings = split_truth(volumes)
        for key, value in task.metrics(preds, truths, info.num_classes, spacings).items():
            out[f"{prefix}_{key}"] = value
        if split != "train":
            out[f"{prefix}_report"] = task.report(preds, truths, info.classes, spacings)
    return out
