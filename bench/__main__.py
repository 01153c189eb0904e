"""`python -m bench [--quick] [--keep] [--gpu] [--packed] [--quickstart] [--search]
[--volumes]`: run every benchmark, print one JSON object to stdout (`--gpu`: only the GPU
benchmarks of bench/gpu.py; `--packed`: only the packed-grid section, bench/packed.py;
`--quickstart`: only `kdray run jobs/quickstart.yaml`, timed, bench/quickstart.py; `--search`:
only the search section, bench/search.py; `--volumes`: only P1 for a 3D segmentation step,
bench/volumes.py).

Progress goes to stderr. The order keeps each ratio's two sides close in time: the bare
quickstart loop runs right before and right after the solo Ray trial (P1's reference is both
runs' online-KD epochs pooled), cached-KD, no-KD and online-KD epochs are interleaved in one
process (P4), and data wait is timed inside the same loops (P6).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.common import QUICK_OVERRIDES, log

STUDENT, TEACHER = "resnet10t", "seresnet18"  # the quickstart's normal-KD pair
LARGE_STUDENT, LARGE_TEACHER = "resnet18", "seresnet50"


P1_OVERRIDES = (
    "studies={normal: {teachers: [seresnet18], students: [resnet10t]}}",
    "baseline=false",
)


def online_kd() -> list[str]:
    """Overrides that make a KD trial run its teacher on every batch, as the bare loop's online
    mode does (P1 compares the two; kdray jobs choose with `distill.teacher_outputs`)."""
    from kdray.spec.job import DistillConfig

    return (
        ["distill.teacher_outputs=online"]
        if "teacher_outputs" in DistillConfig.model_fields
        else []
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: smaller grid, fewer epochs and steps"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the benchmark's experiment folders"
    )
    parser.add_argument(
        "--packed",
        action="store_true",
        help="run only the packed-grid section: one MedMNIST-shaped grid unpacked and packed",
    )
    parser.add_argument(
        "--quickstart",
        action="store_true",
        help="only `kdray run jobs/quickstart.yaml` as a user runs it: wall time (median of "
        "--rounds, default 3) and its parts, the load average before each",
    )
    parser.add_argument(
        "--against",
        type=Path,
        help="with --quickstart: another checkout (a `git archive` of another commit), timed "
        "alternately with this one",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help="with --packed: rounds of each side, alternating (default 1); with --quickstart: "
        "timed runs of each side (default 3)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        help="with --packed: epochs per run (default 3; 1 with --quick); with --search: each "
        "sample's full epochs (default 10; 4 with --quick)",
    )
    parser.add_argument(
        "--sides",
        default="unpacked,packed",
        help="with --packed: which sides, comma-separated (unpacked, packed)",
    )
    parser.add_argument(
        "--search",
        action="store_true",
        help="run only the search section: 16 samples with early stopping against the same 16 "
        "trained to the end (bench/search.py)",
    )
    parser.add_argument(
        "--reduction-factor",
        type=int,
        help="with --search: successive halving's reduction factor η (default: kdray's own, 3; "
        "Optuna's default is 4)",
    )
    parser.add_argument(
        "--volumes",
        action="store_true",
        help="only P1 for 3D segmentation: a volume step in a Ray Train trial against a bare "
        "loop (bench/volumes.py, ~4 minutes)",
    )
    parser.add_argument(
        "--gpu",
        action="store_true",
        help="run only the GPU benchmarks (bench/gpu.py; with --quick: smaller sizes); "
        "skipped, exit 0, without a CUDA device",
    )
    parser.add_argument(
        "--loader",
        action="store_true",
        help="only the loader-alone section (224 px, images/s per core, before and after the "
        "device path; under a minute; bench/loader.py)",
    )
    parser.add_argument(
        "--gpu-parts",
        default="precision,thesis,grids",
        help="with --gpu: which parts, comma-separated (precision, thesis, loader, grids, "
        "medmnist)",
    )
    return parser.parse_args(argv)


# what the worker's `epoch_s` (results/epochs.parquet) covers, so P1's two sides time the same
# thing: since `kdray.train.session.train_epoch` it is the epoch's batches alone (`train_s`);
# before, the worker added its validation pass (then this was "epoch_s", the batches plus
# validation)
WORKER_EPOCH_S = "train_s"


def bare_summary(runs: list[dict]) -> dict:
    """Pool bare loops' timed epochs, per KD mode (`online`, `cached`, when they ran): images/s
    (P1's reference is the online one), mean KD epoch ÷ mean no-KD epoch (P4), the share of
    step time spent getting the teacher's logits (its forward, or the cache read) and in the
    loader's next() (P6); `cache` is the soft-label cache's build, averaged over the runs."""
    epochs = [e for r in runs for e in r["epochs"]]
    plain = [e for e in epochs if e["mode"] == "plain"]

    def total(rows: list[dict], key: str) -> float:
        return sum(e[key] for e in rows)

    def mean(rows: list[dict], key: str) -> float:
        return total(rows, key) / len(rows)

    out: dict = {
        "epochs_timed": {
            m: n
            for m in ("cached", "plain", "online")
            if (n := sum(e["mode"] == m for e in epochs))
        },
        "data_wait_plain": total(plain, "data_s") / total(plain, "train_s"),
        "plain_epoch_s": [round(e["epoch_s"], 3) for e in plain],
    }
    for mode in ("online", "cached"):
        kd = [e for e in epochs if e["mode"] == mode]
        if not kd:
            continue
        out[mode] = {
            "images_per_s": total(kd, "images") / total(kd, WORKER_EPOCH_S),
            "kd_overhead": mean(kd, "epoch_s") / mean(plain, "epoch_s"),
            "kd_overhead_train_only": mean(kd, "train_s") / mean(plain, "train_s"),
            "teacher_share": total(kd, "teacher_s") / total(kd, "train_s"),
            "data_wait": total(kd, "data_s") / total(kd, "train_s"),
            "epoch_s": [round(e["epoch_s"], 3) for e in kd],
        }
    caches = [r["cache"] for r in runs if r.get("cache")]
    if caches:
        out["cache"] = {k: statistics.mean(c[k] for c in caches) for k in caches[0]}
    return out


def p4_pair(summary: dict) -> dict:
    """`p4_detail` for one pair: the ratios of the batches alone (no validation pass), what
    getting the teacher's logits costs in a KD step, and the soft-label cache's build."""
    cached, online, cache = summary["cached"], summary["online"], summary["cache"]
    return {
        "kd_overhead_train_only": cached["kd_overhead_train_only"],
        "kd_overhead_train_only_online": online["kd_overhead_train_only"],
        "teacher_share_online": online["teacher_share"],
        "cache_read_share_cached": cached["teacher_share"],
        "cache_build_s": cache["build_s"],
        "cache_mb": cache["mb"],
        "cache_epochs": cache["epochs"],
        "cache_build_s_job": cache["job_build_s"],
        "cache_mb_job": cache["job_mb"],
        "job_epochs": cache["job_epochs"],
        "epochs_timed": summary["epochs_timed"],
    }


def rnd(value):
    """Floats (recursively) to 4 significant digits, for a readable JSON object."""
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: rnd(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [rnd(v) for v in value]
    return value


def run_all(quick: bool, keep: bool) -> dict:
    """Every measurement, in the order described in the module docstring."""
    import ray

    from bench import bare, fixed, raygrid
    from bench.common import (
        LARGE_OVERRIDES,
        THESIS_OVERRIDES,
        in_fresh_process,
        load_bench_job,
        prepare,
    )
    from kdray.spec.plan import make_plan

    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="kdray-bench-"))
    log(f"working folder {root}")
    size = QUICK_OVERRIDES if quick else ()
    rounds = 1 if quick else 2
    job = load_bench_job(root / "runs", size)
    info = prepare(job, root / "data")
    job_json = job.model_dump(mode="json")
    images_per_epoch = info["counts"]["train"] // job.train.batch_size * job.train.batch_size

    def bare_quickstart(tag: str) -> dict:
        log(
            f"bare loop {STUDENT} <- {TEACHER} ({tag}): soft-label cache, then {rounds} each of "
            "cached-KD, no-KD and online-KD epochs"
        )
        return in_fresh_process(bare.interleaved_epochs, job_json, info, STUDENT, TEACHER, rounds)

    # --- Ray: the quickstart grid (P2, P3, P1 in a busy grid), then one KD trial alone between
    # two bare runs of the same loop (P1), then the rest without Ray
    ray_init_s = raygrid.timed_ray_init(job)
    p1_job = load_bench_job(root / "runs", [*size, *P1_OVERRIDES, *online_kd()], name="bench-p1")
    with raygrid.RssSampler() as rss:
        log(f"quickstart grid: {len(make_plan(job).runs)} runs")
        grid = raygrid.run_grid(job)
        log(f"quickstart grid done in {grid.makespan_s:.1f}s (all finished: {grid.ok})")
        p1_kd = next(r for r in make_plan(p1_job).runs.values() if "kd:normal" in r.roles)
        p1_exp = raygrid.Experiment.create(p1_job)
        raygrid.seed_teachers(grid.exp, p1_exp, p1_kd.teacher_runs)
        bare_before = bare_quickstart("before the solo trial")
        log("one KD trial alone (its teacher copied from the grid)")
        solo = raygrid.run_grid(p1_job)
        log(f"solo trial done in {solo.makespan_s:.1f}s")
        rss.sample()
    bare_after = bare_quickstart("after the solo trial")
    session = raygrid.session_dir()
    events = raygrid.controller_events(session)
    actors = raygrid.actor_table()
    n_slots = raygrid.slots(job)
    ray.shutdown()

    # --- P4's bigger pair, the thesis shape (P3 estimate, P6 at 224 px), set-up parts, imports
    large_job = load_bench_job(root / "runs", LARGE_OVERRIDES)
    large_info = prepare(large_job, root / "data")
    log(f"bare loop {LARGE_STUDENT} <- {LARGE_TEACHER} at 64 px")
    large = in_fresh_process(
        bare.interleaved_epochs,
        large_job.model_dump(mode="json"),
        large_info,
        LARGE_STUDENT,
        LARGE_TEACHER,
        rounds,
        max_steps=4 if quick else None,
    )
    thesis_job = load_bench_job(root / "runs", THESIS_OVERRIDES)
    thesis_info = prepare(thesis_job, root / "data")
    thesis_threads = min(4, os.cpu_count() or 1)  # the thesis job asks 4 CPUs per worker
    log(f"thesis shape: {LARGE_STUDENT} <- {LARGE_TEACHER} at 224 px, batch 16")
    thesis = in_fresh_process(
        bare.thesis_shape,
        thesis_job.model_dump(mode="json"),
        thesis_info,
        LARGE_STUDENT,
        LARGE_TEACHER,
        1 if quick else 3,
        thesis_threads,
        warmup_steps=1 if quick else 2,
    )
    log("worker set-up parts and cold imports")
    parts = in_fresh_process(bare.setup_parts, job_json, info, STUDENT, TEACHER)
    thesis_parts = in_fresh_process(
        bare.setup_parts,
        thesis_job.model_dump(mode="json"),
        thesis_info,
        LARGE_STUDENT,
        LARGE_TEACHER,
    )
    imports = fixed.cold_imports()
    from bench.loader import run_loader

    loader = run_loader(root, quick)

    # --- figures
    both = bare_summary([bare_before, bare_after])
    p1_solo = raygrid.epoch_rate(solo, raygrid.kd_student_run(solo), images_per_epoch)
    p1_grid = raygrid.epoch_rate(grid, raygrid.kd_student_run(grid), images_per_epoch)
    p2 = raygrid.packing(grid, n_slots, ray_init_s)
    timeline = raygrid.trial_timeline(grid, events)
    phases = raygrid.median_phases(timeline)
    finished = [r for r in grid.trials if r["status"] == "finished" and r["wall_s"]]
    fixed_each = [r["wall_s"] - r["train_s"] + r["setup_s"] for r in finished]
    head, tail = fixed.ray_fixed_phases(phases) if phases else (float("nan"),) * 2
    large_sum = bare_summary([large])
    thesis_sum = bare_summary([thesis])
    kd_steps = [e for e in thesis["epochs"] if e["mode"] == "online"]
    step_s = sum(e["train_s"] for e in kd_steps) / sum(e["steps"] for e in kd_steps)
    ckpt = thesis["checkpoint"]
    thesis_est = fixed.thesis_estimate(
        step_s,
        thesis["eval_s_per_image"],
        ckpt["save_s"] + ckpt["persist_copy_s"],
        thesis_parts,
        head,
        tail,
        thesis_threads,
    )
    data_s_per_batch = sum(e["data_s"] for e in thesis["epochs"]) / sum(
        e["steps"] for e in thesis["epochs"]
    )
    result = {
        "p1_worker_efficiency": p1_solo["images_per_s"] / both["online"]["images_per_s"],
        "p2_packing": p2["p2_packing"],
        "p3_fixed_cost_s": statistics.mean(fixed_each),
        "p3_fixed_share": sum(fixed_each) / sum(r["wall_s"] for r in finished),
        "p3_thesis_fixed_share_estimate": thesis_est["fixed_share"],
        "p4_kd_overhead": both["cached"]["kd_overhead"],
        "p4_kd_overhead_online": both["online"]["kd_overhead"],
        "p4_kd_overhead_large": large_sum["cached"]["kd_overhead"],
        "p4_kd_overhead_large_online": large_sum["online"]["kd_overhead"],
        "p6_data_wait": both["online"]["data_wait"],
        "p6_data_wait_224": thesis_sum["online"]["data_wait"],
        "p7_loader_gain_gpu_feed": loader["after_gpu_feed_over_before_per_core_median"],
        "p7_loader_gain_cpu": loader["after_cpu_over_before_per_core_median"],
        "peak_rss_mb": {
            "bare_loop": max(bare_before["peak_rss_mb"], bare_after["peak_rss_mb"]),
            "bare_loop_large_64px": large["peak_rss_mb"],
            "bare_loop_thesis_224px": thesis["peak_rss_mb"],
            "ray_processes": rss.by_role(),
            "ray_one_trial_processes_sum": raygrid.per_trial_rss_mb(rss.by_role()),
        },
        "p1_detail": {
            "ray_solo_trial": p1_solo,
            "ray_in_grid_trial": p1_grid,
            "worker_efficiency_in_grid": p1_grid["images_per_s"] / both["online"]["images_per_s"],
            # like for like: against the bare loop in the grid trial's own teacher_outputs mode
            "worker_efficiency_in_grid_same_mode": p1_grid["images_per_s"]
            / both[p1_grid["teacher_outputs"] or "online"]["images_per_s"],
            "bare_images_per_s": both["online"]["images_per_s"],
            "bare_images_per_s_before_after": [
                bare_summary([bare_before])["online"]["images_per_s"],
                bare_summary([bare_after])["online"]["images_per_s"],
            ],
            "bare_kd_epoch_s": both["online"]["epoch_s"],
            "bare_cached_kd_images_per_s": both["cached"]["images_per_s"],
            "images_per_epoch": images_per_epoch,
            "torch_threads": bare_before["threads"],
        },
        "p2_detail": {k: v for k, v in p2.items() if k != "p2_packing"},
        "p3_launch_to_first_step_s": statistics.median(
            t["launch_to_first_step_s"] for t in timeline.values()
        )
        if timeline
        else None,
        "p3_breakdown": {
            "trial_phases_median_s": phases,
            "ray_startup_s": head,
            "ray_teardown_s": tail,
            "ray_init_per_grid_s": ray_init_s,
            "fresh_process_imports_s": imports,
            "worker_setup_parts_s": parts,
            "checkpoint_per_epoch": bare_after["checkpoint"],
            "ray_actors_started": raygrid.actor_counts(actors),
            "tune_driver_actor_start_to_wall_s_start": raygrid.driver_actor_lead(grid, actors),
            "trials_in_timeline": len(timeline),
            "fixed_cost_each_s": fixed_each,
        },
        "p3_thesis_estimate": thesis_est
        | {
            "kd_step_s_per_timed_epoch": [e["train_s"] / e["steps"] for e in kd_steps],
            "worker_setup_parts_s": thesis_parts,
        },
        "p4_detail": {
            "quickstart": p4_pair(both),
            "large_64px": p4_pair(large_sum),
            "thesis_224px_train_only_online": thesis_sum["online"]["kd_overhead_train_only"],
        },
        "p6_detail": {
            "quickstart_no_kd": both["data_wait_plain"],
            "quickstart_kd_cached": both["cached"]["data_wait"],
            "thesis_224px_no_kd": thesis_sum["data_wait_plain"],
            "thesis_224px_data_s_per_batch": data_s_per_batch,
            "thesis_224px_loader_images_per_s": thesis_job.train.batch_size / data_s_per_batch,
        },
        "p7_loader_224": loader,
        "meta": {
            "quick": quick,
            "cpus": os.cpu_count(),
            "total_s": time.perf_counter() - started,
            "grid_runs": len(grid.trials),
            "grid_all_finished": grid.ok,
            "load_avg_at_end": os.getloadavg(),
        },
    }
    from bench.packed import packed_grid

    result["packed_grid"] = packed_grid(root, quick)
    if keep:
        log(f"kept {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return rnd(result)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["RAY_AUTH_MODE"] = "disabled"
    # a fresh local Ray even when another one (`ray start`) runs on this machine: ray.init()
    # would otherwise join it (and refuse the product's custom `trial_driver` resource)
    os.environ["RAY_ADDRESS"] = "local"
    stdout = os.dup(1)
    os.dup2(2, 1)  # anything printed by Ray, Tune or child processes lands on stderr
    if args.gpu:
        result = run_gpu(args.quick, args.keep, tuple(args.gpu_parts.split(",")))
    elif args.packed:
        sides = tuple(args.sides.split(","))
        result = run_packed(args.quick, args.keep, args.rounds or 1, args.epochs, sides)
    elif args.quickstart:
        result = run_quickstart(args.keep, args.rounds or 3, args.against)
    elif args.loader:
        result = run_loader_only(args.quick, args.keep)
    elif args.search:
        result = run_search(args.quick, args.keep, args.reduction_factor, args.epochs)
    elif args.volumes:
        result = run_volumes(args.keep)
    else:
        result = run_all(args.quick, args.keep)
    indent = None if "gpu" in result else 2  # the skip object: one line
    os.write(stdout, (json.dumps(result, indent=indent) + "\n").encode())
    return 0


def run_packed(
    quick: bool, keep: bool, rounds: int, epochs: int | None, sides: tuple[str, ...]
) -> dict:
    """`--packed`: the packed-grid section alone (bench/packed.py)."""
    from bench.packed import packed_grid

    root = Path(tempfile.mkdtemp(prefix="kdray-bench-packed-"))
    try:
        return rnd({"packed_grid": packed_grid(root, quick, rounds, epochs, sides)})
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def run_search(
    quick: bool, keep: bool, reduction_factor: int | None = None, epochs: int | None = None
) -> dict:
    """`--search`: the search section alone (bench/search.py)."""
    from bench.search import REDUCTION_FACTOR, search_section

    root = Path(tempfile.mkdtemp(prefix="kdray-bench-search-"))
    try:
        factor = reduction_factor or REDUCTION_FACTOR
        return rnd({"search": search_section(root, quick, factor, epochs)})
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def run_volumes(keep: bool) -> dict:
    """`--volumes`: P1 for a 3D segmentation step (bench/volumes.py)."""
    from bench.volumes import volumes_p1

    root = Path(tempfile.mkdtemp(prefix="kdray-bench-volumes-"))
    try:
        return rnd(volumes_p1(root))
    finally:
        if keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def run_quickstart(keep: bool, rounds: int, against: Path | None) -> dict:
    """`--quickstart`: the quickstart as a user runs it (bench/quickstart.py)."""
    from bench.quickstart import quickstart

    root = Path(tempfile.mkdtemp(prefix="kdray-bench-quickstart-"))
    try:
        return rnd(quickstart(root, rounds, against))
    finally:
        if keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def run_loader_only(quick: bool, keep: bool) -> dict:
    """`--loader`: the loader-alone section (bench/loader.py) without the grids."""
    from bench.loader import run_loader

    root = Path(tempfile.mkdtemp(prefix="kdray-bench-loader-"))
    started = time.perf_counter()
    try:
        result = {"p7_loader_224": run_loader(root, quick)}
    finally:
        if keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    loader = result["p7_loader_224"]
    result = {
        "p7_loader_gain_gpu_feed": loader["after_gpu_feed_over_before_per_core_median"],
        "p7_loader_gain_cpu": loader["after_cpu_over_before_per_core_median"],
        **result,
        "meta": {"quick": quick, "cpus": os.cpu_count(), "total_s": time.perf_counter() - started,
                 "load_avg_at_end": os.getloadavg()},
    }  # fmt: skip
    return rnd(result)


def run_gpu(quick: bool, keep: bool, parts: tuple[str, ...]) -> dict:
    """`--gpu`: the GPU benchmarks (bench/gpu.py), or the skip object without CUDA."""
    import torch

    if not torch.cuda.is_available():
        log("--gpu: no CUDA device (torch.cuda.is_available() is false): GPU benchmarks skipped")
        return {"gpu": "skipped: no CUDA device"}
    from bench import gpu

    unknown = set(parts) - set(gpu.PARTS)
    if unknown:
        raise SystemExit(f"--gpu-parts: unknown {sorted(unknown)}; choose from {gpu.PARTS}")
    return rnd(gpu.run_gpu(quick, keep, parts=parts))


if __name__ == "__main__":
    sys.exit(main())
