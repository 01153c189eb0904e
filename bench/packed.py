"""The packed-grid section: one MedMNIST-shaped grid (BreastMNIST at 28 px, shipped with kdray;
resnet18 teaches resnet10t; 5 seeds: 5 teachers, 5 KD students, 5 baselines), run twice in
one bench run through the product's path: one run per trial (`resources.runs_per_trial=1`,
as before packing) and packed (`auto`).

Per run, `wall_s` runs from its turn (a pack's first run: the trial driver launching the fit,
so it carries the Ray Train start-up) to its summary, and `train_s` from the worker starting it;
P3 is their mean difference: the fixed cost a run pays, start-up amortised over its pack. P2 is
the makespan against the runs' busy time (`wall_s`) spread over the trial slots. Both sides run
in the same Ray session, alternating when `rounds` > 1.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from bench import raygrid
from bench.common import log
from kdray.spec.load import parse_job
from kdray.spec.plan import make_plan

SEEDS = [0, 1, 2, 3, 4]
RUNS_PER_TRIAL = {"unpacked": 1, "packed": "auto"}  # each side's `resources.runs_per_trial`


def grid_job(storage: Path, name: str, runs_per_trial, epochs: int) -> dict:
    return {
        "name": name,
        "storage": str(storage),
        "data": {"kind": "medmnist", "name": "breastmnist", "size": 28},
        "train": {"epochs": epochs, "batch_size": 32, "lr": 0.001},
        "studies": {"normal": {"teachers": ["resnet18"], "students": ["resnet10t"]}},
        "seeds": SEEDS,
        "resources": {"max_concurrent_trials": 2, "runs_per_trial": runs_per_trial},
    }


def figures(grid: raygrid.GridRun, slots: int) -> dict:
    done = [r for r in grid.trials if r["status"] == "finished"]
    fixed = [r["wall_s"] - r["train_s"] for r in done]
    busy = sum(r["wall_s"] for r in done)
    return {
        "runs": len(grid.trials),
        "finished": len(done),
        "fits": len({p.name for p in (grid.exp.root / "train").iterdir() if p.is_dir()}),
        "makespan_s": grid.makespan_s,
        "p2_makespan_over_ideal": grid.makespan_s / (busy / slots),
        "p3_fixed_per_run_s": statistics.mean(fixed),
        "p3_fixed_per_run_max_s": max(fixed),
        "train_s_mean": statistics.mean(r["train_s"] for r in done),
        **grid_edges(grid, done, slots),
    }


def grid_edges(grid: raygrid.GridRun, done: list[dict], slots: int) -> dict:
    """Where the makespan is outside every run: when the first `slots` runs started (each
    slot's first fit, relative to `run_experiment`'s start; a run starts `wall_s` before its
    summary) and how long the grid went on after the last summary."""
    summaries = {r["trial_id"]: grid.exp.run_dir(r["trial_id"]) / "summary.json" for r in done}
    ends = {run: path.stat().st_mtime - grid.started for run, path in summaries.items()}
    starts = sorted(ends[r["trial_id"]] - r["wall_s"] for r in done)
    return {
        "first_runs_start_s": [round(s, 1) for s in starts[:slots]],
        "after_last_run_s": round(grid.makespan_s - max(ends.values()), 1),
    }


def packed_grid(
    root: Path,
    quick: bool,
    rounds: int = 1,
    epochs: int | None = None,
    sides: tuple[str, ...] = ("unpacked", "packed"),
) -> dict:
    """`sides` (unpacked, packed), `rounds` times each, alternating; per side its figures per
    round. `epochs` per run: 3 (1 when `quick`) unless given."""
    import ray

    epochs = epochs or (1 if quick else 3)
    unknown = set(sides) - set(RUNS_PER_TRIAL)
    if unknown:
        raise ValueError(f"unknown sides {sorted(unknown)}: choose from {list(RUNS_PER_TRIAL)}")
    out: dict[str, list] = {side: [] for side in sides}
    for round_ in range(rounds):
        for side in sides if round_ % 2 == 0 else sides[::-1]:
            name = f"{side}-{round_}"
            job = parse_job(grid_job(root / "packed-grid", name, RUNS_PER_TRIAL[side], epochs))
            if not ray.is_initialized():
                raygrid.init_ray(job)
            log(f"packed grid, {side} (round {round_ + 1}): {len(make_plan(job).runs)} runs")
            grid = raygrid.run_grid(job)
            out[side].append(figures(grid, raygrid.slots(job)) | {"epochs": epochs})
            log(f"  makespan {grid.makespan_s:.1f}s, all finished: {grid.ok}")
    ray.shutdown()
    return out
