"""What a trained model costs: parameters, compute, weights on disk, and inference speed.

- `macs`: multiply-accumulates of one forward pass of one image at the data's size and channels,
  from PyTorch's own `torch.utils.flop_counter.FlopCounterMode` (which counts 2 FLOPs per
  multiply-add; we halve it: papers' "FLOPs" of a CNN, e.g. ResNet-50's 4.1 G, are these);
- `latency_ms_p50` / `latency_ms_p90`: batch-1 forward time on the trial's device, median and
  90th percentile of repeated timed calls after warm-up (CUDA synchronised around each call);
- `throughput`: images per second at the evaluation batch size.
Each (model, image size, channels, classes, device) is measured once per experiment and kept in
`costs/<key>.json`: a teacher and its model's baseline share one measurement. Timing is bounded
(`budget_s` per model, 0.5 s by default: at least 3 calls of each kind, so a slow model on a CPU
takes longer) so it never costs a trial noticeable time: on the quickstart, about 0.6 s per model.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kdray.store.atomic import write_json

WARMUP_CALLS = 5
TIMED_CALLS = 30


Size = int | tuple[int, ...]  # an image's side, or a volume patch's shape


def _shape(size: Size) -> tuple[int, ...]:
    return tuple(size) if isinstance(size, tuple | list) else (size, size)


def count_macs(model: nn.Module, channels: int, size: Size) -> int:
    """Multiply-accumulates of one forward pass of one `channels` x `size` x `size` image (or
    volume patch of shape `size`)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, channels, *_shape(size), device=device))
    model.train(was_training)
    return counter.get_total_flops() // 2


def _timed(model: nn.Module, x: torch.Tensor) -> float:
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    start = time.perf_counter()
    model(x)
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    return time.perf_counter() - start


@torch.no_grad()
def time_inference(
    model: nn.Module, channels: int, size: Size, batch_size: int, budget_s: float = 0.5
) -> dict:
    """Batch-1 latency (median, p90, in ms) and throughput at `batch_size` (images/s), within
    about `budget_s` seconds: fewer timed calls for a slow model, at least 3."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    one = torch.zeros(1, channels, *_shape(size), device=device)
    deadline = time.perf_counter() + budget_s / 2
    for _ in range(WARMUP_CALLS):
        _timed(model, one)
    times = []
    while len(times) < TIMED_CALLS and (len(times) < 3 or time.perf_counter() < deadline):
        times.append(_timed(model, one))
    batch = torch.zeros(batch_size, channels, *_shape(size), device=device)
    # no warm-up call at this shape: the model is warm, and the median of 3 or more drops a
    # slow first call (one call at batch 256 is ~0.2 s of a CPU core)
    batch_times, deadline = [], time.perf_counter() + budget_s / 2
    while len(batch_times) < 3 or (len(batch_times) < 10 and time.perf_counter() < deadline):
        batch_times.append(_timed(model, batch))
    model.train(was_training)
    ms = sorted(t * 1000 for t in times)
    return {
        "latency_ms_p50": statistics.median(ms),
        "latency_ms_p90": ms[min(len(ms) - 1, round(0.9 * (len(ms) - 1)))],
        "throughput": batch_size / statistics.median(batch_times),
        "timed_calls": len(ms),
    }


def cost_key(model_name: str, channels: int, size: Size, classes: int, device) -> str:
    spatial = "x".join(str(s) for s in _shape(size))
    return f"{model_name}-{channels}x{spatial}-{classes}cls-{torch.device(device).type}"


def measure(
    model: nn.Module,
    model_name: str,
    channels: int,
    size: Size,
    classes: int,
    batch_size: int,
    cost_dir: Path | None,
) -> dict:
    """The model's cost, from `cost_dir` when this (model, shape, device) was measured already."""
    device = next(model.parameters()).device
    key = cost_key(model_name, channels, size, classes, device)
    path = cost_dir / f"{key}.json" if cost_dir is not None else None
    if path is not None and path.is_file():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            pass  # a damaged record: measure again
    started = time.perf_counter()
    cost = {
        "macs": count_macs(model, channels, size),
        **time_inference(model, channels, size, batch_size),
        "device": device.type,
    }
    cost["measure_s"] = time.perf_counter() - started
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, cost)
    return cost
