"""P3 from outside the grid: cold imports in fresh processes, and the thesis trial estimate."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from bench.common import (
    REPO,
    THESIS_BATCH,
    THESIS_EPOCHS,
    THESIS_TEST_IMAGES,
    THESIS_TRAIN_IMAGES,
    THESIS_VALID_IMAGES,
)

# what each kind of Ray process imports before it can run our code
IMPORTS = {
    "python_start": "pass",
    "import_ray": "import ray",
    "import_torch_timm": "import torch, timm",
    # the Train worker unpickles train_pack, i.e. imports kdray.train.worker and everything below
    "import_kdray_worker": "import kdray.train.worker",
    # the Tune trial driver unpickles run_trial: kdray.grid.tune (ray.train.torch,
    # kdray.train.worker, ...)
    "import_kdray_grid": "import kdray.grid.tune",
}


def cold_imports(repeats: int = 1) -> dict[str, float]:
    """Seconds for a fresh `python -c "<import>"` (interpreter start included, page cache
    warm): the best of `repeats` runs of each."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = {}
    for name, code in IMPORTS.items():
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True)
            best = min(best, time.perf_counter() - t0)
        out[name] = round(best, 3)
    return out


def ray_fixed_phases(phases: dict[str, float]) -> tuple[float, float]:
    """From a quickstart trial's median phases: Ray's start-up before the worker loop runs, and
    its teardown after the worker's last write — the parts that do not depend on the model."""
    head = sum(
        phases[k]
        for k in (
            "driver_to_controller_up",
            "controller_init",
            "placement_group",
            "worker_actors_start",
            "train_context_init",
            "process_group_and_callbacks",
            "train_fn_launch",
        )
    )
    tail = sum(phases[k] for k in ("finish_detected", "worker_group_shutdown"))
    return head, tail


def thesis_estimate(
    step_s: float,
    eval_s_per_image: float,
    checkpoint_s: float,
    setup: dict[str, float],
    ray_head_s: float,
    ray_tail_s: float,
    threads: int,
) -> dict:
    """The thesis KD trial (seresnet50 -> resnet18, 224 px, batch 16, 20 epochs over 15,407
    train images) extrapolated from a few timed steps here: the fixed part (Ray start-up and
    teardown as measured on the quickstart, plus this shape's worker set-up) against the work
    (steps, per-epoch validation and checkpoint, final metrics on every split)."""
    steps = THESIS_TRAIN_IMAGES // THESIS_BATCH * THESIS_EPOCHS
    train_s = steps * step_s
    valid_s = THESIS_EPOCHS * THESIS_VALID_IMAGES * eval_s_per_image
    final_s = (THESIS_TRAIN_IMAGES + THESIS_VALID_IMAGES + THESIS_TEST_IMAGES) * eval_s_per_image
    ckpt_s = THESIS_EPOCHS * checkpoint_s
    setup_s = sum(setup.values())
    fixed = ray_head_s + setup_s + ray_tail_s
    wall = fixed + train_s + valid_s + final_s + ckpt_s
    return {
        "basis": f"CPU, {threads} torch threads, steps timed at batch {THESIS_BATCH}",
        "step_s": round(step_s, 3),
        "steps": steps,
        "train_steps_s": round(train_s),
        "validation_s": round(valid_s),
        "final_metrics_s": round(final_s),
        "checkpoints_s": round(ckpt_s, 1),
        "worker_setup_s": round(setup_s, 2),
        "ray_startup_s": round(ray_head_s, 2),
        "ray_teardown_s": round(ray_tail_s, 2),
        "fixed_s": round(fixed, 2),
        "wall_s": round(wall),
        "fixed_share": fixed / wall,
    }
