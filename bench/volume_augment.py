"""`python -m bench.volume_augment`: what `data.patch_augment` (affine and intensity changes of
each training patch, MONAI's transforms, `kdray.train.volume_augment`) costs an epoch of
`jobs/volumes.yaml`. One JSON object on stdout, progress on stderr.

The job's shape (phantoms of 48x48x24 voxels, 24 training volumes, 32x32x16 patches, batch 4,
the flips on, one thread: its `cpus_per_worker`), through the worker's own pieces
(`bench.bare`: `build_session`, `train_epoch`): for the teacher (`unet3d`, the job's dearest
step) and the student (`unet3d-c4.8.16.32-s2.2.2-r1`, where the patch's share is largest), an
epoch without and with `patch_augment` (its defaults, p 0.3, and p 1: every change on every
patch), interleaved over `ROUNDS` rounds after a warm-up epoch each. Per epoch: the wall time,
and the time the step waited for its batch (the patches are prepared `prefetch_batches`
ahead in a thread, so the wait is what the augmentation adds that the step did not hide).
`/proc/loadavg` before and after: on a shared machine read the ratios, not the seconds.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from bench.bare import PLAIN, build_loop, run_epoch
from bench.common import REPO, log
from kdray.data import prepare_data
from kdray.spec.job import Job
from kdray.spec.load import load_job

JOB = REPO / "jobs" / "volumes.yaml"
TEACHER, STUDENT = "unet3d", "unet3d-c4.8.16.32-s2.2.2-r1"
SETTINGS = {"off": None, "p0.3": {}, "p1": {"p": 1.0}}  # data.patch_augment
ROUNDS = 3


def load() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def with_augment(job: Job, augment: dict | None) -> Job:
    raw = job.model_dump(mode="json")
    raw["data"]["patch_augment"] = augment
    return Job.model_validate(raw)


def measure(model: str, job: Job, folder: Path) -> dict:
    """Mean epoch and batch-wait seconds of `model`'s no-KD run per setting."""
    info = prepare_data(job.data, folder / "data")
    loops = {
        name: build_loop(with_augment(job, augment), info, model, TEACHER, (PLAIN,), 1 + ROUNDS,
                         folder / name / model, method={"name": "pixel_kd"})
        for name, augment in SETTINGS.items()
    }  # fmt: skip
    timings: dict[str, list] = {name: [] for name in SETTINGS}
    for epoch in range(1 + ROUNDS):
        order = list(SETTINGS) if epoch % 2 else list(SETTINGS)[::-1]
        for name in order:
            log(f"{model} epoch {epoch} patch_augment {name}")
            timing = run_epoch(loops[name], epoch, PLAIN, validate=False)
            if epoch:  # the first is the warm-up
                timings[name].append(timing)
    out = {
        name: {"epoch_s": statistics.mean(t.train_s for t in runs),
               "batch_wait_s": statistics.mean(t.data_s for t in runs)}
        for name, runs in timings.items()
    }  # fmt: skip
    for name in SETTINGS:
        out[name]["over_off"] = out[name]["epoch_s"] / out["off"]["epoch_s"]
    return out


def main() -> dict:
    torch.set_num_threads(1)
    job = load_job(JOB)
    before = load()
    with tempfile.TemporaryDirectory(prefix="kdray-bench-vaug-") as folder:
        per_model = {model: measure(model, job, Path(folder)) for model in (TEACHER, STUDENT)}
    return {
        "shape": {"patch": list(job.data.patch), "train_volumes": job.data.train_size,
                  "batch_size": job.train.batch_size, "threads": 1,
                  "prefetch_batches": job.train.prefetch_batches},
        "per_model": per_model,
        "loadavg_before": before,
        "loadavg_after": load(),
    }  # fmt: skip


if __name__ == "__main__":
    json.dump(main(), sys.stdout, indent=2)
    print()
