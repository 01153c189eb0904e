"""`python -m bench.trial_env [--rounds N]`: what kdray's Ray Train settings save per trial.

Starts kdray's local Ray (`kdray.grid.local_ray.init_ray`, the quickstart job) and fits an empty
`TorchTrainer` (1 worker, 1 CPU; the train function reports once) again and again, alternating
Ray Train 2.60's defaults (`RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=1`, `RAY_TRAIN_METRICS_ENABLED=1`)
with kdray's `TRAIN_ENV`, so drift on a shared machine hits both alike. Both use kdray's health
check interval. Per mode: each fit's wall time (the per-trial fixed cost of Ray Train alone:
controller, worker group, its helper actors, teardown) and the actors one fit starts, by class
(from the GCS actor table). One JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections import Counter

import ray
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from bench.common import QUICKSTART, log
from kdray.grid.local_ray import init_ray
from kdray.grid.tune import TRAIN_ENV
from kdray.spec.load import load_job

RAY_DEFAULTS = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "1", "RAY_TRAIN_METRICS_ENABLED": "1"}


def _report_once(config: dict) -> None:
    ray.train.report({"done": 1})


def _actor_classes() -> Counter:
    return Counter(
        a["ActorClassName"].rsplit(".", 1)[-1] for a in ray._private.state.actors().values()
    )


def fit_once(mode: str, storage: str, index: int) -> tuple[float, dict[str, int]]:
    """One empty fit under `mode` ("ray_defaults" or "kdray"): seconds, actors it started."""
    os.environ.update(TRAIN_ENV)
    if mode == "ray_defaults":
        os.environ.update(RAY_DEFAULTS)
    before = _actor_classes()
    started = time.perf_counter()
    TorchTrainer(
        _report_once,
        scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name=f"{mode}-{index}", storage_path=storage),
    ).fit()
    seconds = time.perf_counter() - started
    return seconds, dict(_actor_classes() - before)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.trial_env", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="fits per mode (default 3)")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    init_ray(load_job(QUICKSTART))
    storage = tempfile.mkdtemp(prefix="kdray-trial-env-")
    fit_once("kdray", storage, -1)  # warm-up: Ray's worker pool, imports
    results: dict[str, dict] = {m: {"fit_s": [], "actors": {}} for m in ("ray_defaults", "kdray")}
    for index in range(args.rounds):
        order = ("ray_defaults", "kdray") if index % 2 == 0 else ("kdray", "ray_defaults")
        for mode in order:
            seconds, actors = fit_once(mode, storage, index)
            log(f"{mode}: {seconds:.1f}s, actors {actors}")
            results[mode]["fit_s"].append(round(seconds, 2))
            results[mode]["actors"] = actors
    for r in results.values():
        r["median_s"] = round(statistics.median(r["fit_s"]), 2)
    ray.shutdown()
    print(json.dumps({"load_avg_end": os.getloadavg()[0], **results}, indent=2))


if __name__ == "__main__":
    main()
