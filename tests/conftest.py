"""Shared fixtures: small, fast jobs and a repo-relative path to shared/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local test clusters only
os.environ.setdefault("WANDB_MODE", "disabled")
# kdray's output as in a log (200 columns), whatever runs the suite: pytest-xdist's workers get
# COLUMNS=80 from the terminal. A test that wants a width sets COLUMNS itself.
os.environ.pop("COLUMNS", None)
os.environ.pop("LINES", None)


def tiny_job_dict(tmp_path: Path, **overrides) -> dict:
    """A grid small enough for CPU tests: 16 px synthetic images, the smallest timm models."""
    job = {
        "name": "tiny",
        "storage": str(tmp_path / "runs"),
        "data": {
            "kind": "synthetic",
            "image_size": 16,
            "native_size": 32,
            "train_size": 96,
            "valid_size": 40,
            "test_size": 40,
            "classes": ["FOREARM", "HAND", "HUMERUS"],
        },
        "train": {"epochs": 2, "batch_size": 16, "lr": 0.003, "eval_batch_size": 64},
        "studies": {
            "normal": {"teachers": ["resnet10t"], "students": ["test_resnet"]},
        },
        "seeds": [0],
        "resources": {"max_concurrent_trials": 2},
    }
    for key, value in overrides.items():
        job[key] = value
    return job


def run_grid(job):
    """Create the job's experiment and run it on a fresh local Ray, shut down afterwards."""
    import ray

    from kdray.grid.run import run_experiment
    from kdray.store.experiment import Experiment

    exp = Experiment.create(job)
    try:
        report = run_experiment(exp, job)
    finally:
        ray.shutdown()
    return exp, report


@pytest.fixture
def tiny_job(tmp_path):
    return tiny_job_dict(tmp_path)
