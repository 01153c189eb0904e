"""Deployable students: a run's network as an ONNX file, checked against PyTorch on real images.

`export_onnx` loads the run's `model.pt` (the network alone: a feature method's adapters never
reach it), exports it with PyTorch's dynamo exporter (input `image` with a dynamic batch axis,
output `logits`) and records in the file's metadata what a deployment needs to feed it: class
names, image size, channels, mean and std, the kdray run id and the model. Then it checks the
file: onnxruntime on the experiment's validation images must reproduce the PyTorch model's
probabilities (softmax, sigmoid, or a segmenter's per-pixel softmax) within `TOLERANCE`, or the
file is removed and `DeployError` raised; it reports the share of decisions (classes, labels at
0.5, mask pixels) the two runtimes agree on, and times onnxruntime's batch-1 latency. onnx,
onnxscript and onnxruntime are imported here only, when a file is exported.

A 3D student is exported on its training patch (N x 1 x D x H x W, `patch` in the metadata)
and checked on the validation volumes as kdray evaluates them (`kdray.export.onnx_volumes`:
a segmenter by sliding window over each whole volume, the ONNX file as the window's predictor).
"""

from __future__ import annotations

import contextlib
import json
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kdray.data import DataError, load_split, prepare_data
from kdray.data.volume_cache import load_volumes
from kdray.export.onnx_volumes import compare_on_volumes, model_input
from kdray.store.experiment import Experiment, ExperimentError
from kdray.store.model_file import load_model
from kdray.tasks import DEFAULT_TASK, Task, get_task
from kdray.train.evaluate import predict, to_tensor

TOLERANCE = 1e-4  # max absolute difference of probabilities, onnxruntime against PyTorch
CHECK_BATCH = 64  # not a divisor of most splits: the last batch exercises the dynamic axis
WARMUP_CALLS, TIMED_CALLS = 5, 30
PREPROCESSING = "float32 NCHW: (pixels / 255 - mean) / std per channel"
VOLUME_PREPROCESSING = (
    "float32 N x 1 x D x H x W: the volume prepared as the job's data section says (RAS+, "
    "resampled, windowed, zero mean and unit variance per volume); a segmenter by sliding "
    "window over the patch (gaussian blend, overlap 0.5), a classifier on the volume "
    "centre-cropped or zero-padded to the patch"
)


class DeployError(Exception):
    pass


@dataclass
class OnnxFile:
    path: Path
    max_abs_diff: float  # of the task's probabilities over `images` validation images
    images: int
    agreement: float  # share of decisions (classes, labels, mask pixels) onnxruntime matches
    latency_ms: float  # onnxruntime, batch 1, median of `TIMED_CALLS` after warm-up
    unit: str = "images"  # what `images` counts: validation images, or volumes


def to_onnx(
    model: nn.Module, channels: int, size: int | tuple[int, ...], path: Path, metadata: dict
) -> None:
    """Export `model` (eval mode, CPU) with a dynamic batch axis and string metadata; `size`
    is an image's side, or a volume patch's shape (D, H, W)."""
    import onnxscript  # noqa: F401  (the dynamo exporter's dependency: fail here, by name)

    spatial = (size, size) if isinstance(size, int) else tuple(size)
    batch = torch.export.Dim("batch")
    example = torch.zeros(2, channels, *spatial)  # 2: a batch of 1 would be specialised
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        input_names=["image"],
        output_names=["logits"],
        dynamic_shapes=({0: batch},),
        verbose=False,
    )
    program.model.metadata_props.update({k: str(v) for k, v in metadata.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path))


def onnx_probabilities(session, images: np.ndarray, mean, std, task: Task) -> np.ndarray:
    """The task's probabilities from the ONNX file, inputs normalised as `kdray.train.evaluate`
    does."""
    logits = []
    for start in range(0, len(images), CHECK_BATCH):
        x = to_tensor(images[start : start + CHECK_BATCH], mean, std, "cpu").numpy()
        logits.append(session.run(None, {"image": x})[0])
    return task.probabilities(torch.from_numpy(np.concatenate(logits))).numpy()


def onnx_latency_ms(session, one: np.ndarray) -> float:
    """Median batch-1 latency of `session` in milliseconds, after warm-up."""
    for _ in range(WARMUP_CALLS):
        session.run(None, {"image": one})
    times = []
    for _ in range(TIMED_CALLS):
        start = time.perf_counter()
        session.run(None, {"image": one})
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def check_onnx(
    path: Path, model: nn.Module, images: np.ndarray, mean, std, task: Task | None = None
) -> OnnxFile:
    """onnxruntime (CPU) against the PyTorch model on `images`; the file is removed and
    `DeployError` raised when their probabilities differ by more than `TOLERANCE`."""
    import onnxruntime

    task = task or get_task(DEFAULT_TASK)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = predict(model, images, mean, std, "cpu", CHECK_BATCH, task, task.probabilities)
    got = onnx_probabilities(session, images, mean, std, task)
    diff = float(np.abs(got - expected).max())
    same = task.decisions(torch.from_numpy(got)) == task.decisions(torch.from_numpy(expected))
    refuse_above_tolerance(path, diff, f"{len(images)} validation images")
    one = to_tensor(images[:1], mean, std, "cpu").numpy()
    agreement = float(same.float().mean())
    return OnnxFile(path, diff, len(images), agreement, onnx_latency_ms(session, one))


def check_volume_onnx(path: Path, model: nn.Module, volumes, patch, task: Task) -> OnnxFile:
    """onnxruntime (CPU) against the PyTorch model on validation `volumes`, each predicted as
    kdray evaluates it; the file is removed and `DeployError` raised above `TOLERANCE`."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    diff, agreement, count = compare_on_volumes(session, model, volumes, patch, task)
    refuse_above_tolerance(path, diff, f"{count} validation volumes")
    one = model_input(volumes[0].image, patch)
    return OnnxFile(path, diff, count, agreement, onnx_latency_ms(session, one), "volumes")


def refuse_above_tolerance(path: Path, diff: float, compared: str) -> None:
    """Remove the file and raise `DeployError` when `diff` exceeds `TOLERANCE` (or is NaN)."""
    if not diff <= TOLERANCE:  # NaN fails too
        path.unlink(missing_ok=True)
        raise DeployError(
            f"{path.name}: onnxruntime's probabilities differ from PyTorch's by {diff:.2e} on "
            f"{compared} (tolerance {TOLERANCE:g}); the file was removed"
        )


def exporter_reason(exc: BaseException) -> str:
    """The first line of the innermost cause of an export error: torch's `TorchExportError`
    says only which of its steps failed, its cause which operator."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [line for line in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines() if line.strip()]
    return (lines[0].strip() if lines else type(exc).__name__)[:300]


SHOWN = 10  # finished runs named when an --onnx id is not one


def check_exportable(exp: Experiment, run_ids: list[str]) -> None:
    """Every run to export finished (has its model.pt); `DeployError` naming one that did not,
    and the runs that did, before anything is written."""
    for run_id in run_ids:
        if not exp.run(run_id).model_file.is_file():
            finished = [r for r in exp.plan().runs if exp.run(r).model_file.is_file()]
            why = f"not a finished run of {exp.root} (no model.pt)"
            with contextlib.suppress(ExperimentError):
                if (exp.run(run_id).summary() or {}).get("status") == "stopped":
                    why = "a sample its search stopped early, which keeps no model"
            shown = ", ".join(finished[:SHOWN]) or "none yet"
            if len(finished) > SHOWN:
                shown += f" and {len(finished) - SHOWN} more (kdray status {exp.root} lists them)"
            raise DeployError(f"--onnx {run_id}: {why}; finished: {shown}")


def export_onnx(experiment_dir: str | Path, run_id: str, out_dir: str | Path) -> OnnxFile:
    """`<out_dir>/onnx/<run_id>.onnx` from the run's final weights, checked and timed."""
    exp = Experiment.open(experiment_dir)
    model_file = exp.run_dir(run_id) / "model.pt"
    if not model_file.is_file():
        raise DeployError(f"run {run_id}: no {model_file} (not a finished run of {exp.root})")
    try:
        model, meta = load_model(model_file)
        info = prepare_data(exp.job().data, exp.data_dir)  # the arrays the grid trained on
    except ValueError as exc:  # a damaged model.pt
        raise DeployError(
            f"run {run_id}: {exc}; delete {exp.run_dir(run_id) / 'summary.json'} and run "
            f"`kdray resume {exp.root}`: the run finishes again from its last checkpoint"
        ) from None
    except DataError as exc:
        raise DeployError(f"run {run_id}: its data cannot be read: {exc.problems[0]}") from None
    task = get_task(meta.get("task", DEFAULT_TASK))  # model.pt files before tasks: single-label
    volumes = meta.get("rank", 2) == 3
    size = meta.get("patch") if volumes else meta.get("image_size", info.image_size)
    metadata = {
        "task": task.name,
        "classes": json.dumps(meta["classes"]),
        "channels": meta["in_chans"],
        "mean": json.dumps(meta["mean"]),
        "std": json.dumps(meta["std"]),
        "kdray_run_id": run_id,
        "model": meta["model"],
    }
    if volumes:
        metadata |= {"spatial_rank": 3, "patch": json.dumps(size)}
        metadata["preprocessing"] = VOLUME_PREPROCESSING
    else:
        metadata |= {"image_size": size, "preprocessing": PREPROCESSING}
    path = Path(out_dir) / "onnx" / f"{run_id}.onnx"
    try:
        to_onnx(model, meta["in_chans"], size, path, metadata)
    except Exception as exc:  # the exporter's own errors have no common base class
        raise DeployError(
            f"--onnx {run_id}: {meta['model']} does not export to ONNX ({exporter_reason(exc)})"
        ) from None
    if volumes:
        valid = load_volumes(info.path, "valid")
        return check_volume_onnx(path, model, valid, size, task)
    images, _ = load_split(info.path, "valid")
    return check_onnx(path, model, np.asarray(images), meta["mean"], meta["std"], task)
