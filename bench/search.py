"""The search section (`python -m bench --search`): one searched KD cell on BreastMNIST (28 px,
shipped with kdray; resnet18 teaches resnet10t), run twice in one Ray session through the
product's path: 16 samples of (temperature, alpha) with successive halving (`asha`), and the
same 16 settings trained to the end (`early_stop: none`). The sampler is `random`, whose draws
depend only on the seed and the draw's number, so both sides train the same settings.

The teachers (seeds 0-2) are trained once, first, and copied into both sides' experiments, so
each side's makespan is its own wall time from the same start: the samples, then the
confirmations (`teachers_s` is the teachers' grid).

Figures: the samples' epochs, busy time (their runs' `wall_s`), each side's time to its choice
(its start to its last sample's end) and its makespan (the confirmations too), searched ÷ full
(goal <= 0.4); each side's chosen setting and its test score over the
confirmation seeds, and whether the searched side's lies within the full side's seed-to-seed
spread (min..max over its seeds).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

from bench import raygrid
from bench.common import log
from kdray.data import prepare_data
from kdray.grid.tune import run_grid
from kdray.spec.load import parse_job
from kdray.spec.search import EarlyStop
from kdray.store.experiment import Experiment

# successive halving's η: kdray's own default (3) unless `--reduction-factor` (Optuna's is 4)
REDUCTION_FACTOR = EarlyStop.model_fields["reduction_factor"].default


def sides(reduction_factor: int = REDUCTION_FACTOR) -> dict:
    """Each side's `early_stop`: successive halving from epoch 1, and none (trained to the end)."""
    searched = {"rule": "asha", "grace_epochs": 1, "reduction_factor": reduction_factor}
    return {"searched": searched, "full": "none"}


def search_job(
    storage: Path, name: str, early_stop, quick: bool, epochs: int | None = None
) -> dict:
    return {
        "name": name,
        "storage": str(storage),
        "data": {"kind": "medmnist", "name": "breastmnist", "size": 28},
        "train": {"epochs": epochs or (4 if quick else 10), "batch_size": 32, "lr": 0.001},
        "studies": {
            "kd": {
                "teachers": ["resnet18"],
                "students": ["resnet10t"],
                "method": {"name": "kd"},
                "search": {
                    "space": {
                        "temperature": {"loguniform": [1, 16]},
                        "alpha": {"uniform": [0.1, 0.95]},
                    },
                    "samples": 6 if quick else 16,
                    "algorithm": "random",
                    "seed": 0,
                    "early_stop": early_stop,
                },
            }
        },
        "baseline": False,
        "seeds": [0, 1, 2],
        "resources": {"max_concurrent_trials": 2},
    }


def _summary(grid: raygrid.GridRun, row: dict) -> dict:
    return grid.exp.summary(row["trial_id"]) or {}


def _outside_train(grid: raygrid.GridRun, row: dict) -> float:
    summary = _summary(grid, row)
    return max(0.0, (summary.get("wall_s") or 0) - (summary.get("train_s") or 0))


def _sample_rows(grid: raygrid.GridRun, samples: list[dict]) -> list[dict]:
    """Each sample's epochs and where its time went; `end_s` is its summary's write time from
    the grid's start, so `end_s - wall_s` is when its run started."""
    rows = []
    for row in samples:
        summary = _summary(grid, row)
        written = grid.exp.run_dir(row["trial_id"]) / "summary.json"
        end = written.stat().st_mtime - grid.started if written.is_file() else None
        rows.append(
            {
                "epochs": row["epochs"],
                "status": row["status"],
                "wall_s": summary.get("wall_s"),
                "train_s": summary.get("train_s"),
                "setup_s": summary.get("setup_s"),
                "judge_wait_s": summary.get("judge_wait_s"),
                "end_s": round(end, 2) if end is not None else None,
            }
        )
    return sorted(rows, key=lambda r: r["end_s"] or 0)


def _span(rows: list[dict]) -> float | None:
    """From the first sample's start to the last one's end: the search's own wall time."""
    timed = [r for r in rows if r["end_s"] is not None and r["wall_s"] is not None]
    if not timed:
        return None
    return max(r["end_s"] for r in timed) - min(r["end_s"] - r["wall_s"] for r in timed)


def side_figures(grid: raygrid.GridRun) -> dict:
    samples = [r for r in grid.trials if "sample:kd" in r["roles"]]
    confirmed = [r for r in grid.trials if "kd:kd" in r["roles"]]
    tests = [r["test_score"] for r in confirmed if r["test_score"] is not None]
    rows = _sample_rows(grid, samples)
    ends = [r["end_s"] for r in rows if r["end_s"] is not None]
    return {
        "makespan_s": grid.makespan_s,
        # from the side's start to its last sample's end: when its search has chosen (the
        # confirmations after it are the same runs on both sides)
        "to_choice_s": max(ends) if ends else None,
        "samples_span_s": _span(rows),
        "samples": len(samples),
        "stopped": sum(r["status"] == "stopped" for r in samples),
        "sample_epochs": sum(r["epochs"] or 0 for r in samples),
        "sample_busy_s": sum(r["wall_s"] or 0 for r in samples),
        # of which waiting on the search's judgement (earlier samples reaching a rung)
        "sample_judge_wait_s": sum(_summary(grid, r).get("judge_wait_s") or 0 for r in samples),
        # ... outside `train_s`: a fit's start-up (a sample a new fit began with) and, for one
        # trained to its end, its finish (final evaluation, model file, cost)
        "sample_outside_train_s": sum(_outside_train(grid, r) for r in samples),
        # ... from `train_run`'s start to the first step (session: models, data, teachers)
        "sample_to_first_step_s": sum(_summary(grid, r).get("setup_s") or 0 for r in samples),
        "settings": sorted(json.loads(r["setting"])["temperature"] for r in samples),
        "chosen": json.loads(confirmed[0]["setting"]) if confirmed else None,
        "chosen_test": tests,
        "chosen_test_mean": statistics.mean(tests) if tests else None,
        "per_sample": rows,
    }


def train_teachers(root: Path, quick: bool, epochs: int | None) -> tuple[Experiment, list[str]]:
    """The cell's teachers on every seed, through the product's grid given those runs alone
    (the same job without its search: the same teacher runs)."""
    raw = search_job(root / "search", "teachers", "none", quick, epochs)
    del raw["studies"]["kd"]["search"]
    job = parse_job(raw)
    exp = Experiment.create(job)
    teachers = exp.plan().stage("teacher")
    list(run_grid(exp, job, teachers, prepare_data(job.data, exp.data_dir)))
    assert all(exp.summary(t.run_id)["status"] == "finished" for t in teachers)
    return exp, [t.run_id for t in teachers]


def search_section(
    root: Path, quick: bool, reduction_factor: int = REDUCTION_FACTOR, epochs: int | None = None
) -> dict:
    import ray

    out = {"load_before": os.getloadavg()[0], "reduction_factor": reduction_factor}
    for side, early_stop in sides(reduction_factor).items():
        job = parse_job(search_job(root / "search", side, early_stop, quick, epochs))
        out["epochs"] = job.train.epochs
        if not ray.is_initialized():
            raygrid.init_ray(job)
            started = time.time()
            teachers_exp, teacher_runs = train_teachers(root, quick, epochs)
            out["teachers_s"] = time.time() - started
            log(f"search: {len(teacher_runs)} teachers trained in {out['teachers_s']:.1f}s")
        exp = Experiment.create(job)
        assert [t.run_id for t in exp.plan().stage("teacher")] == teacher_runs
        raygrid.seed_teachers(teachers_exp, exp, teacher_runs)
        log(f"search, {side}: {job.studies['kd'].search.samples} samples")
        out[side] = side_figures(raygrid.run_grid(job))
        log(f"  makespan {out[side]['makespan_s']:.1f}s, {out[side]['stopped']} stopped")
    ray.shutdown()
    searched, full = out["searched"], out["full"]
    out["same_settings"] = searched["settings"] == full["settings"]
    out["epochs_searched_over_full"] = searched["sample_epochs"] / full["sample_epochs"]
    out["busy_searched_over_full"] = searched["sample_busy_s"] / full["sample_busy_s"]
    out["makespan_searched_over_full"] = searched["makespan_s"] / full["makespan_s"]
    if searched["to_choice_s"] and full["to_choice_s"]:
        out["to_choice_searched_over_full"] = searched["to_choice_s"] / full["to_choice_s"]
    if searched["samples_span_s"] and full["samples_span_s"]:
        out["span_searched_over_full"] = searched["samples_span_s"] / full["samples_span_s"]
    working = searched["sample_busy_s"] - searched["sample_judge_wait_s"]
    out["busy_less_judge_waits_searched_over_full"] = working / full["sample_busy_s"]
    if searched["chosen_test_mean"] is not None and full["chosen_test"]:
        low, high = min(full["chosen_test"]), max(full["chosen_test"])
        out["chosen_within_full_spread"] = low <= searched["chosen_test_mean"] <= high
    return out
