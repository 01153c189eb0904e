"""Shared pieces: the benchmark's jobs, the data they train on, fresh-process tasks, memory."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import resource
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "jobs" / "quickstart.yaml"

# smoke-test sizes for --quick: fewer, smaller trials (the quickstart's models and shapes)
QUICK_OVERRIDES = (
    "train.epochs=2",
    "data.train_size=320",
    "data.valid_size=100",
    "data.test_size=100",
    "studies={normal: {teachers: [seresnet18], students: [resnet10t]}}",
)

# P4's bigger pair: seresnet50 -> resnet18 at 64 px (1 channel, 5 classes, batch 32, 1 thread)
LARGE_OVERRIDES = (
    "data.image_size=64",
    "data.native_size=64",
    "data.train_size=256",
    "data.valid_size=64",
    "data.test_size=10",
)

# the thesis job's trial shape (jobs/mura_thesis.yaml) on synthetic radiographs: 224 px, RGB,
# 7 classes, batch 16, adam at 1e-4, augmentation on; only a few batches are drawn
THESIS_OVERRIDES = (
    "data.image_size=224",
    "data.native_size=224",
    "data.channels=3",
    "data.classes=[ELBOW, FINGER, FOREARM, HAND, HUMERUS, SHOULDER, WRIST]",
    "data.train_size=96",
    "data.valid_size=32",
    "data.test_size=10",
    "train.batch_size=16",
    "train.lr=0.0001",
)
THESIS_TRAIN_IMAGES = 15_407
THESIS_VALID_IMAGES = 1_750  # 7 classes x 250 valid images (max_per_class.valid)
THESIS_TEST_IMAGES = 1_540  # about 10% of the train patients
THESIS_EPOCHS = 20
THESIS_BATCH = 16


def log(message: str) -> None:
    """Progress goes to stderr; stdout carries only the final JSON object."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load_bench_job(storage: Path, overrides: Sequence[str] = (), name: str | None = None):
    """jobs/quickstart.yaml with the benchmark's storage and any `--set`-style overrides."""
    from kdray.spec.load import load_job

    # one run per trial: the sections below time single-run trials (bench/packed.py: packs)
    extra = [f"storage={storage}", "resources.runs_per_trial=1"] + (
        [f"name={name}"] if name else []
    )
    return load_job(QUICKSTART, [*extra, *overrides])


def prepare(job, cache_root: Path) -> dict:
    """Decode the job's data into `cache_root` (once); returns the DataInfo as JSON."""
    from kdray.data import prepare_data

    return prepare_data(job.data, cache_root).to_json()


def peak_rss_mb() -> float:
    """This process's peak resident set size (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def in_fresh_process(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run `fn` in a new (spawned) Python process and return its result: a clean peak RSS,
    its own torch thread setting, and nothing shared with the Ray driver in this process."""
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def proc_children(root: int) -> list[int]:
    """All descendants of process `root` (`kdray.grid.processes`: /proc, the standard library)."""
    from kdray.grid.processes import descendants

    return descendants(root)


def proc_name_and_hwm(pid: int) -> tuple[str, float] | None:
    """A process's title (Ray sets `ray::<Actor>.<method>`) and its peak RSS (VmHWM) in MB;
    None for processes that are gone and for the benchmark's own multiprocessing children."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read()
        if b"multiprocessing" in cmdline:
            return None
        title = cmdline.split(b"\0")[0].decode(errors="replace")
        with open(f"/proc/{pid}/status") as fh:
            hwm = next((line for line in fh if line.startswith("VmHWM:")), None)
    except OSError:
        return None
    if hwm is None:
        return None
    return title, int(hwm.split()[1]) / 1024
