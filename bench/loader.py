"""The loader alone at the thesis size (224 px, 3 channels, batch 64, the default pipeline:
Affine rotate/translate/scale, HorizontalFlip, RandomBrightnessContrast), images/s per core,
before and after issue 25, in one process on one thread (torch and OpenCV), paths alternated.

- `before`: `train.augment_on: loader` (kdray's path until issue 25): per sample, a copy of the
  memory-mapped row, albumentations, conversion to float and normalisation, then the
  DataLoader's collation into a float32 batch.
- `after_gpu_feed`: the device path's loader for a GPU (`train_batches(device="cuda")`,
  `TrainBatches.loaded`): the batch gathered from the memory-mapped split in one copy, uint8;
  its augmentation and normalisation run on the GPU after the copy, not on this core (pinning
  needs CUDA: not timed here).
- `after_cpu`: the device path on a CPU-only machine: the same batch, then the device steps and
  the normalisation by the OpenCV back end on this core (the whole CPU data path).
- `torch_backend_on_cpu`: the GPU's back end (`affine_grid` + `grid_sample`) run on this core:
  why the CPU uses OpenCV.

Every path draws `batches` batches of a fresh epoch per round (after one untimed batch), the
rounds alternate the paths, and each rate is also given per CPU-second of the process (robust to
other load on a shared machine); the load average is recorded around each round.
"""

from __future__ import annotations

import os
import statistics
import time

PATHS = ("before", "after_gpu_feed", "after_cpu", "torch_backend_on_cpu")


def _batches(path: str, images, labels, info, batch: int):
    from kdray.train.batches import train_batches

    augment_on = "loader" if path == "before" else "device"
    device = "cuda" if path in ("after_gpu_feed", "torch_backend_on_cpu") else "cpu"
    batches = train_batches(
        images, labels, True, info.mean, info.std, batch, seed=0, augment_on=augment_on,
        device=device,
    )  # fmt: skip
    if path == "torch_backend_on_cpu":
        stage = batches.on_device.augment
        stage.backend = "torch"
        return lambda epoch: (stage(x, index, epoch) for x, _, index in batches.loaded(epoch))
    return batches.loaded


def _timed(draw, epoch: int, count: int, batch: int) -> dict:
    stream = iter(draw(epoch))
    next(stream)  # untimed: the first batch of an epoch
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(count):
        next(stream)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    close = getattr(stream, "close", None)
    if close is not None:
        close()
    return {"images_per_s": count * batch / wall, "images_per_cpu_s": count * batch / cpu}


def loader_rates(info_json: dict, batch: int = 64, count: int = 6, rounds: int = 3) -> dict:
    """Each path's rates per round (alternating), their medians, and after ÷ before per
    round. Meant for a fresh process: one torch thread, one OpenCV thread."""
    import cv2
    import torch

    from kdray.data.cache import DataInfo, load_split

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    info = DataInfo(**info_json)
    images, labels = load_split(info.path, "train")
    draws = {path: _batches(path, images, labels, info, batch) for path in PATHS}
    runs: dict[str, list[dict]] = {path: [] for path in PATHS}
    loads = []
    for epoch in range(rounds):
        loads.append(os.getloadavg()[0])
        order = PATHS if epoch % 2 == 0 else PATHS[::-1]
        for path in order:
            runs[path].append(_timed(draws[path], epoch, count, batch))
    loads.append(os.getloadavg()[0])
    out: dict = {
        "image_size": info.image_size,
        "channels": info.channels,
        "batch": batch,
        "batches_per_round": count,
        "rounds": rounds,
        "threads": 1,
        "load_avg_1min": loads,
    }
    for path, rows in runs.items():
        out[path] = {
            "images_per_s": [r["images_per_s"] for r in rows],
            "images_per_cpu_s": [r["images_per_cpu_s"] for r in rows],
            "median_images_per_s": statistics.median(r["images_per_s"] for r in rows),
            "median_images_per_cpu_s": statistics.median(r["images_per_cpu_s"] for r in rows),
        }
    before = runs["before"]
    for path in ("after_gpu_feed", "after_cpu"):
        pairs = zip(runs[path], before, strict=True)
        ratios = [a["images_per_cpu_s"] / b["images_per_cpu_s"] for a, b in pairs]
        out[f"{path}_over_before_per_core"] = ratios
        out[f"{path}_over_before_per_core_median"] = statistics.median(ratios)
    return out


def run_loader(root, quick: bool = False) -> dict:
    """The thesis-shaped synthetic split (decoded once, memory-mapped as a run reads it), then
    `loader_rates` in a fresh process."""
    from bench.common import THESIS_OVERRIDES, in_fresh_process, load_bench_job, log, prepare

    size = 256 if quick else 512
    job = load_bench_job(
        root / "runs", [*THESIS_OVERRIDES, "data.native_size=64", f"data.train_size={size}"]
    )
    info = prepare(job, root / "data")
    log("loader alone at 224 px: before (albumentations) and after (device path), alternated")
    return in_fresh_process(loader_rates, info, 64, 2 if quick else 6, 2 if quick else 3)
