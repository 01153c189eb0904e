"""Evaluation on volumes: every volume of a split predicted whole by sliding window over
patches of the training patch's shape (`kdray.tasks.sliding_window`), and scored at its own
spacing (Dice, IoU, HD95 in mm: `Task.metrics(..., spacings=...)`). A classifier sees each
volume as it trained on it (`kdray.train.patches.whole_volume`), and its class probabilities
are scored as images' are. Ranks share the volumes and gather the predictions, as
`kdray.train.evaluate.predict` does for images."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from kdray.data.cache import DataInfo
from kdray.data.volume_cache import CachedVolumes, load_volumes
from kdray.tasks import Task, get_task
from kdray.tasks.sliding_window import sliding_window_logits
from kdray.train.evaluate import world
from kdray.train.patches import whole_volume


def predict_volumes(
    model: torch.nn.Module, volumes: CachedVolumes, patch, device, task: Task
) -> list[np.ndarray]:
    """The task's prediction of each volume: a mask by sliding window over `patch`, or a
    classifier's class probabilities on the whole volume."""
    rank, size = world()
    shard = np.array_split(np.arange(len(volumes)), size)[rank]
    local = []
    for index in shard:
        image = np.asarray(volumes[int(index)].image, dtype=np.float32)
        if task.pixel_targets:
            x = torch.from_numpy(image)[None, None].to(device)
            logits = sliding_window_logits(model, x, tuple(patch))
        else:
            x = torch.from_numpy(whole_volume(image, tuple(patch), flips=False))[None, None]
            logits = _inference(model, x.to(device))
        local.append((int(index), task.prediction(logits)[0].cpu().numpy()))
    if size > 1:
        parts: list = [None] * size
        dist.all_gather_object(parts, local)
        local = [item for part in parts for item in part]
    return [pred for _, pred in sorted(local, key=lambda item: item[0])]


@torch.inference_mode()
def _inference(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        return model(x)
    finally:
        model.train(was_training)


def scored(task: Task, preds: list[np.ndarray], volumes: CachedVolumes):
    """(predictions, truths, the keyword arguments of `metrics` and `report`): masks scored at
    each volume's spacing, or class probabilities against the volumes' classes."""
    if task.pixel_targets:
        truths, spacings = split_truth(volumes)
        return preds, truths, {"spacings": spacings}
    return np.stack(preds), np.asarray(volumes.labels), {}


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
    preds, truths, extra = scored(task, preds, volumes)
    return task.primary_score(preds, truths, info.num_classes, **extra)


def volume_final_metrics(model, info: DataInfo, device) -> dict:
    """Every split's metrics from the final weights, and for valid and test the per-class
    report: what `kdray.train.evaluate.final_metrics` gives for images."""
    task = get_task(info.task)
    out: dict = {}
    for split in ("train", "valid", "test"):
        prefix = "val" if split == "valid" else split
        volumes = load_volumes(info.path, split)
        preds = predict_volumes(model, volumes, info.patch, device, task)
        preds, truths, extra = scored(task, preds, volumes)
        for key, value in task.metrics(preds, truths, info.num_classes, **extra).items():
            out[f"{prefix}_{key}"] = value
        if split != "train":
            out[f"{prefix}_report"] = task.report(preds, truths, info.classes, **extra)
    return out
