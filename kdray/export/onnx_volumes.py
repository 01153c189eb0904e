"""The ONNX check of a 3D student: onnxruntime against PyTorch on the validation volumes, fed
the way kdray evaluates them (`kdray.train.volume_eval`).

A segmenter is exported on its training patch (N x 1 x D x H x W) and deployed by sliding
window over a whole volume; so each validation volume is predicted whole by the same sliding
window (`kdray.tasks.sliding_window`) twice, once with the PyTorch model and once with the
ONNX file as the window's predictor, and the blended per-voxel probabilities are compared. A
classifier sees each volume centre-cropped or padded to its input (`whole_volume`), as in
training and evaluation. Volumes are compared one at a time: a CT's per-voxel probabilities
are never all held at once.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from kdray.data.volume_cache import CachedVolumes
from kdray.tasks import Task
from kdray.tasks.sliding_window import sliding_window_logits
from kdray.train.patches import whole_volume

CHECK_BATCH = 8  # classification volumes per onnxruntime call (a 64^3 volume is 1 MB)


class OnnxPredictor(nn.Module):
    """An onnxruntime session as a PyTorch module (CPU, float32), so that MONAI's sliding
    window can call it on a batch of windows as it calls the PyTorch model."""

    def __init__(self, session) -> None:
        super().__init__()
        self.session = session

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().cpu().float().numpy()
        return torch.from_numpy(self.session.run(None, {"image": array})[0])


def model_input(image: np.ndarray, patch) -> np.ndarray:
    """One volume as the exported network's input (1 x 1 x patch, float32): a classifier's
    whole volume centre-cropped or padded, or a segmenter's first window."""
    return whole_volume(np.asarray(image, dtype=np.float32), tuple(patch), flips=False)[None, None]


def compare_on_volumes(
    session, model: nn.Module, volumes: CachedVolumes, patch, task: Task
) -> tuple[float, float, int]:
    """(max absolute difference of the task's probabilities, share of decisions that agree,
    volumes compared) of the ONNX `session` against `model` over `volumes`."""
    if task.pixel_targets:
        return _compare_masks(session, model, volumes, patch, task)
    return _compare_classes(session, model, volumes, patch, task)


def _compare_masks(session, model, volumes, patch, task) -> tuple[float, float, int]:
    onnx_model = OnnxPredictor(session)
    diff, agreeing, voxels = 0.0, 0, 0
    for index in range(len(volumes)):
        image = np.asarray(volumes[index].image, dtype=np.float32)
        x = torch.from_numpy(image)[None, None]
        expected = task.probabilities(sliding_window_logits(model, x, tuple(patch)))
        got = task.probabilities(sliding_window_logits(onnx_model, x, tuple(patch)))
        diff = float(np.maximum(diff, float((got - expected).abs().max())))  # NaN stays NaN
        agreeing += int((task.decisions(got) == task.decisions(expected)).sum())
        voxels += image.size
    return diff, agreeing / max(voxels, 1), len(volumes)


def _compare_classes(session, model, volumes, patch, task) -> tuple[float, float, int]:
    inputs = np.concatenate([model_input(volumes[i].image, patch) for i in range(len(volumes))])
    was_training = model.training
    model.eval()
    expected, got = [], []
    with torch.inference_mode():
        for start in range(0, len(inputs), CHECK_BATCH):
            batch = inputs[start : start + CHECK_BATCH]
            expected.append(task.probabilities(model(torch.from_numpy(batch))))
            got.append(task.probabilities(torch.from_numpy(session.run(None, {"image": batch})[0])))
    model.train(was_training)
    expected_all, got_all = torch.cat(expected), torch.cat(got)
    diff = float((got_all - expected_all).abs().max())
    same = task.decisions(got_all) == task.decisions(expected_all)
    return diff, float(same.float().mean()), len(inputs)
