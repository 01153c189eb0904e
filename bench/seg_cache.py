"""`python -m bench.seg_cache`: does a per-pixel soft-label cache pay for segmentation KD, or
should the teacher run online? One JSON object on stdout, progress on stderr.

The shape of `jobs/segmentation.yaml` (synthetic ultrasound at 64 px, 160 training scans,
batch 16, one thread: the job's `cpus_per_worker`), its pair (teacher `unet-resnet34`, student
`unet-lcnet_035-d16.16.8.8.8`) and pixel-wise KD, through the worker's own pieces
(`bench.bare`: `build_session`, `train_epoch`): the teacher's soft-label cache is built and
timed (`kdray.train.soft_labels.build`, the teacher's replay of every view of `EPOCHS` epochs),
then one warm-up epoch each and `ROUNDS` rounds of cached-KD, no-KD and online-KD epochs
interleaved. Per epoch: the time inside the teacher source (the teacher's forward, or the cache
read) and the student's step. The cache costs one teacher replay per epoch (`build_s`, paid
once per teacher and seed) and its file; each logit-KD student of that teacher then saves the
online teacher's forward pass minus the cache read. `break_even_students` is the number of
students per teacher above which the cache is faster.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from bench.bare import CACHED, ONLINE, PLAIN, build_loop, run_epoch
from bench.common import REPO, log
from kdray.data import prepare_data
from kdray.spec.load import load_job

JOB = REPO / "jobs" / "segmentation.yaml"
TEACHER, STUDENT = "unet-resnet34", "unet-lcnet_035-d16.16.8.8.8"
EPOCHS, ROUNDS = 3, 2  # epochs the cache covers: a warm-up epoch and ROUNDS timed ones


def main() -> dict:
    return measure(JOB, TEACHER, STUDENT)


def measure(job_file: Path, teacher: str, student: str) -> dict:
    """The cache against the teacher online for `job_file`'s data and this pair (pixel-wise
    KD); `bench.volume_cache` measures volumes with it."""
    torch.set_num_threads(1)
    job = load_job(job_file)
    with tempfile.TemporaryDirectory(prefix="kdray-bench-seg-") as folder:
        info = prepare_data(job.data, Path(folder) / "data")
        log("building the teacher's per-pixel soft-label cache")
        loop = build_loop(
            job, info, student, teacher, (CACHED, PLAIN, ONLINE), EPOCHS, Path(folder),
            method={"name": "pixel_kd"},
        )  # fmt: skip
        timings: dict[str, list] = {m: [] for m in (CACHED, PLAIN, ONLINE)}
        order = [CACHED, PLAIN, ONLINE]
        for epoch in range(1 + ROUNDS):
            for mode in order if epoch % 2 else order[::-1]:
                log(f"epoch {epoch} {mode}")
                timing = run_epoch(loop, epoch, mode, validate=False)
                if epoch:  # the first is the warm-up
                    timings[mode].append(timing)
    per_epoch = {
        mode: {
            key: statistics.mean(getattr(t, key) for t in runs)
            for key in ("teacher_s", "student_s", "data_s", "train_s")
        }
        for mode, runs in timings.items()
    }
    saved = per_epoch[ONLINE]["teacher_s"] - per_epoch[CACHED]["teacher_s"]
    build_per_epoch = loop.cache["build_s"] / EPOCHS
    return {
        "shape": {"input": list(info.spatial), "train_images": info.counts["train"],
                  "batch_size": job.train.batch_size, "classes": info.num_classes,
                  "teacher": teacher, "student": student, "threads": 1},
        "per_epoch_s": per_epoch,
        "cache": {
            "build_s_per_epoch": build_per_epoch,
            "mb_per_epoch": loop.cache["mb"] / EPOCHS,
            "job_epochs": job.train.epochs,
            "job_mb": loop.cache["mb"] / EPOCHS * job.train.epochs,
        },
        "saved_per_student_epoch_s": saved,
        "break_even_students": build_per_epoch / saved if saved > 0 else None,
        "online_over_cached_epoch": per_epoch[ONLINE]["train_s"] / per_epoch[CACHED]["train_s"],
        "cached_over_plain_epoch": per_epoch[CACHED]["train_s"] / per_epoch[PLAIN]["train_s"],
    }  # fmt: skip


if __name__ == "__main__":
    result = main()
    json.dump(result, sys.stdout, indent=2)
    print()
