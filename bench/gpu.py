"""`python -m bench --gpu [--quick]`: the GPU path, measured (skipped cleanly without CUDA).

1. The quickstart grid on the GPU through `kdray.grid.run.run_experiment`: with
   `resources.gpus_per_worker: 1` (one trial at a time), with `0.25` and 4 concurrent trials
   (fractional GPUs), and on the CPU as the reference its results are compared with.
2. Mixed precision: the quickstart's KD pair (`resnet10t` <- `seresnet18`) trained in fp32, bf16
   and fp16 (`GradScaler` on), `channels_last` in all three: teacher, no-KD student, KD
   student reading the teacher's soft-label cache, KD student running the teacher online.
3. The thesis trial shape (`resnet18` <- `seresnet50`, 224 px, 3 channels) on synthetic data at
   batch 16 and 64: images/s of a no-KD, a cached-KD and an online-KD student, the share of step
   time spent waiting for the loader, the loader's own rate, and GPU memory per trial.
3b. The thesis shape fed by loader worker processes (`train.loader_workers`) on each
   augmentation path (`train.augment_on`: `loader`, albumentations in the loader, float32
   batches, the path before issue 25; `device`, uint8 batches augmented and normalised on the
   GPU): the same modes at batch 64 with 0, 4 and 8 workers, over longer windows, and how long
   a worker pool takes to start (fork, fork server, spawn).
4. A MedMNIST-shaped grid (28 px, 1 channel, several thousand images, 20 epochs, 8 runs,
   4 trials sharing the GPU): each trial's fixed share (Ray start-up, worker set-up, teardown)
   and the grid's makespan against its trials' busy time.

Parts 2 and 3 are the worker's own pieces without Ray (`kdray.train.session.build_session` and
`train_epoch` on `device`, through `bench.bare`), each in a fresh process (its own CUDA context
and peak memory); parts 1 and 4 are Ray grids in one local Ray (`bench.raygrid`). Every
measurement is a function taking the device (or `use_gpu`), so each can be run on the CPU too.
"""

from __future__ import annotations

import gc
import json
import math
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bench import bare
from bench.bare import CACHED, ONLINE, PLAIN
from bench.common import THESIS_OVERRIDES, in_fresh_process, load_bench_job, log, prepare
from kdray.data.cache import DataInfo, load_split
from kdray.spec.job import Job
from kdray.spec.plan import make_plan
from kdray.train.batches import train_batches
from kdray.train.evaluate import final_metrics
from kdray.train.session import Session, band_stop, build_session, train_epoch

SKIP = {"gpu": "skipped: no CUDA device"}
STUDENT, TEACHER = "resnet10t", "seresnet18"  # the quickstart's normal-KD pair
LARGE_STUDENT, LARGE_TEACHER = "resnet18", "seresnet50"  # the thesis pair
MODE_KEYS = {PLAIN: "no_kd", CACHED: "kd_cached", ONLINE: "kd_online"}
PRECISIONS = ("fp32", "bf16", "fp16")
CPUS_PER_WORKER = 2  # each GPU trial's Train worker: 2 CPUs, 2 torch threads
THESIS_THREADS = 4  # the thesis job's cpus_per_worker

# a MedMNIST-shaped job on the synthetic data: 28 px gray, 2 teachers x 2 students (4 KD runs),
# the 2 teachers and the 2 students' baselines: 8 runs
MEDMNIST_SHAPE = (
    "data.image_size=28",
    "data.native_size=28",
    "data.channels=1",
    "studies={normal: {teachers: [seresnet18, resnet18], students: [resnet10t, resnet14t]}}",
    "baseline=true",
)


@dataclass(frozen=True)
class Sizes:
    """How much each part runs (`FULL`, `QUICK`; a test can make its own)."""

    quickstart: tuple[str, ...]  # overrides of the quickstart grids and the precision pair's data
    precision_epochs: int
    thesis_train_size: int  # at least (steps + prefetch + 2) batches: see thesis_train_size
    thesis_steps: dict[int, int]  # batch size -> timed steps (after `thesis_warmup` steps)
    thesis_warmup: int
    thesis_settings: tuple[tuple[str, bool], ...]  # (precision, channels_last)
    medmnist: tuple[str, ...]  # overrides of the MedMNIST-shaped grid
    # 3b: (loader workers, precision, channels_last, augment_on) per run, and its timed steps
    # per batch size
    loader_runs: tuple[tuple[int, str, bool, str], ...] = (
        (0, "fp32", False, "loader"),
        (0, "fp32", False, "device"),
        (2, "fp32", False, "device"),
    )
    loader_steps: tuple[tuple[int, int], ...] = ((16, 8), (64, 3))
    cpu_reference: bool = True  # run the quickstart on the CPU too (its results: the reference)


FULL = Sizes(
    quickstart=(),  # jobs/quickstart.yaml as it is: 6 runs, 4 epochs, 480 images
    precision_epochs=4,
    thesis_train_size=1152,  # 18 batches of 64, 72 of 16
    thesis_steps={16: 48, 64: 14},
    thesis_warmup=4,
    thesis_settings=(("fp32", False), ("bf16", True)),
    medmnist=(
        *MEDMNIST_SHAPE,
        "data.train_size=4000",
        "data.valid_size=500",
        "data.test_size=500",
        "train.epochs=20",
    ),
    loader_runs=(  # issue 16's best (8 workers, loader path) against the device path
        (8, "fp32", False, "loader"),
        (0, "fp32", False, "device"),
        (4, "fp32", False, "device"),
        (8, "bf16", True, "loader"),
        (0, "bf16", True, "device"),
        (4, "bf16", True, "device"),
    ),
    loader_steps=((64, 40),),  # the thesis batch; ~4.5 minutes in all on an H100
)
QUICK = Sizes(
    quickstart=(
        "train.epochs=2",
        "data.train_size=320",
        "data.valid_size=100",
        "data.test_size=100",
        "studies={normal: {teachers: [seresnet18], students: [resnet10t]}}",
    ),  # bench.common.QUICK_OVERRIDES: 3 runs
    precision_epochs=2,
    thesis_train_size=448,  # 7 batches of 64, 28 of 16
    thesis_steps={16: 8, 64: 3},
    thesis_warmup=2,
    thesis_settings=(("fp32", False),),
    medmnist=(
        *MEDMNIST_SHAPE,
        "data.train_size=1000",
        "data.valid_size=200",
        "data.test_size=200",
        "train.epochs=3",
    ),
    cpu_reference=False,  # a smoke test: the 4-minute budget has no room for a CPU grid
)


def cuda_available() -> bool:
    return torch.cuda.is_available()


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a host timer read next covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_memory(device: torch.device) -> None:
    """Free cached blocks and restart the peak counters (peak = what is allocated now)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def memory(device: torch.device) -> dict:
    """Peak GPU memory since the last `reset_memory`: allocated by tensors, and reserved by
    PyTorch's caching allocator (what the process holds; its CUDA context, ~0.5 GB, comes on
    top of both)."""
    if device.type != "cuda":
        return {"max_memory_mb": None, "max_reserved_mb": None}
    return {
        "max_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20,
        "max_reserved_mb": torch.cuda.max_memory_reserved(device) / 2**20,
    }


def device_info(device: torch.device | str) -> dict:
    """The device and the numeric settings that make its results differ from the CPU's."""
    device = torch.device(device)
    out: dict = {"torch": torch.__version__, "device": device.type}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out |= {
            "gpu_device": props.name,
            "gpu_memory_gb": props.total_memory / 2**30,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            # kdray leaves PyTorch's defaults: TF32 convolutions, fp32 matmuls, no autotuning
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_precision": torch.get_float32_matmul_precision(),
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
        }
    return out


def with_train(job: Job, **train) -> Job:
    """The job with some `train` settings replaced (validated again)."""
    raw = job.model_dump(mode="json")
    raw["train"].update(train)
    return Job.model_validate(raw)


# --- 2. precision --------------------------------------------------------------------------


def train_run(session: Session, epochs: int) -> dict:
    """Train a session for `epochs` epochs as the worker does (`train_epoch`, then the
    validation), then the worker's final metrics; images/s over the epochs after the first."""
    device = session.device
    session.batches = bare.TimedBatches(session.batches)
    band = band_stop(session)
    rows, counted = [], []
    for epoch in range(epochs):
        session.batches.reset(None)
        sync(device)
        row = train_epoch(session, epoch, band)
        row[session.val_key] = session.val_score()
        rows.append(row)
        counted.append((session.batches.images, row["epoch_s"]))
    final = final_metrics(session.model, session.job, session.info, device)
    timed = counted[1:] or counted
    losses = [v for r in rows for k, v in r.items() if k == "train_loss" or k.startswith("loss_")]
    scaler = session.scaler
    return {
        "train_loss": [r["train_loss"] for r in rows],
        "losses_finite": all(math.isfinite(v) for v in losses),
        "val_acc_per_epoch": [r["val_acc"] for r in rows],
        "val_acc": final["val_acc"],
        "test_acc": final["test_acc"],
        "images_per_s": sum(n for n, _ in timed) / sum(s for _, s in timed),
        "grad_scaler": {
            "enabled": scaler.is_enabled(),
            "scale": scaler.get_scale() if scaler.is_enabled() else None,
        },
    }


def precision_check(
    job_json: dict,
    info_json: dict,
    device: str,
    precisions: tuple[str, ...] = PRECISIONS,
    epochs: int | None = None,
    channels_last: bool = True,
    threads: int = CPUS_PER_WORKER,
    student: str = STUDENT,
    teacher: str = TEACHER,
) -> dict:
    """The pair in each precision: the teacher trained first (its `model.pt` and soft-label
    cache written by `bench.bare.make_teacher`, as a finished teacher run leaves them), then the
    student without KD, with cached KD and with online KD, all from the same seed. Returns each
    run's losses, accuracies and images/s, and the test accuracy against fp32's."""
    job = Job.model_validate(job_json)
    info = DataInfo(**info_json)
    dev = torch.device(device)
    torch.set_num_threads(threads)
    epochs = epochs or job.train.epochs
    out: dict = {
        "device_info": device_info(dev),
        "pair": f"{student} <- {teacher}",
        "epochs": epochs,
        "channels_last": channels_last,
        "train_images": info.counts["train"],
    }
    with tempfile.TemporaryDirectory(prefix="bench-gpu-precision-") as tmp:
        for precision in precisions:
            log(f"precision {precision}: {teacher}, then {student} without KD, cached, online")
            pjob = with_train(job, precision=precision, channels_last=channels_last)
            bench_job = bare.pair_job(pjob, student, teacher, epochs)
            teacher_spec, specs = bare.mode_specs(bench_job)
            folder = Path(tmp) / precision
            session = build_session(bench_job, teacher_spec, info, [], dev)
            runs = {"teacher": train_run(session, epochs)}
            bare.make_teacher(
                bench_job, teacher_spec, info, folder / teacher_spec.run_id, True, dev,
                model=session.core.student,
            )  # fmt: skip
            del session
            for mode in (PLAIN, CACHED, ONLINE):
                spec = specs[mode]
                dirs = [folder / t for t in spec.teacher_runs]
                session = build_session(bench_job, spec, info, dirs, dev)
                if session.teachers.kind != (None if mode == PLAIN else mode):
                    raise RuntimeError(f"{mode} run got teacher outputs {session.teachers.kind!r}")
                runs[MODE_KEYS[mode]] = train_run(session, epochs)
                del session
            out[precision] = runs
            reset_memory(dev)
    if "fp32" in out:
        out["test_acc_diff_vs_fp32"] = {
            p: {run: out[p][run]["test_acc"] - out["fp32"][run]["test_acc"] for run in out[p]}
            for p in precisions
            if p != "fp32"
        }
    return out


# --- 3. the thesis shape ---------------------------------------------------------------------


def thesis_train_size(sizes: Sizes, prefetch: int, steps: dict[int, int] | None = None) -> int:
    """Training images enough that every epoch cut short leaves more than `prefetch` batches
    undrawn: `kdray.train.batches.prefetched` hangs when its consumer stops with exactly
    `prefetch` batches left (the producer then blocks putting its end marker in a full queue)."""
    steps = steps or sizes.thesis_steps
    needed = ((max(n, sizes.thesis_warmup) + prefetch + 2) * b for b, n in steps.items())
    return max(sizes.thesis_train_size, *needed)


def check_cut(batches, steps: int, prefetch: int) -> None:
    """Refuse an epoch cut short with 1 to `prefetch` batches left (see `thesis_train_size`)."""
    left = len(batches) - steps
    if 0 < left <= prefetch:
        raise ValueError(
            f"{len(batches)} batches an epoch, {steps} drawn: {left} left, which can hang the "
            f"prefetch thread ({prefetch} ahead); use more training images"
        )


def loader_rate(batches: bare.TimedBatches, epoch: int, steps: int) -> float:
    """Images/s the session's batches arrive at with nothing else to do (the background
    thread's production rate: augmentation, normalisation, pinning)."""
    batches.reset(steps)
    t0 = time.perf_counter()
    for _ in batches.epoch(epoch):
        pass
    return batches.images / (time.perf_counter() - t0)


def thesis_shape(
    job_json: dict,
    info_json: dict,
    device: str,
    steps: dict[int, int],
    warmup_steps: int,
    threads: int = THESIS_THREADS,
    settings: tuple[tuple[str, bool], ...] = (("fp32", False),),
    student: str = LARGE_STUDENT,
    teacher: str = LARGE_TEACHER,
    loader_workers: int = 0,
    augment_on: str = "device",
) -> list[dict]:
    """Per setting (precision, channels_last) and batch size: each mode's run built alone by
    `bench.bare.build_loop` on `device` (the cached mode's soft labels built there first),
    `warmup_steps` steps, then `steps[batch]` timed steps (`bare.run_epoch`, no validation),
    the GPU's peak memory over those (reset after the warm-up: the run's weights, optimizer
    state, teacher and activations), then the run is freed before the next one is built.
    `loader_workers`: the job's `train.loader_workers` (0: the in-process loader);
    `augment_on`: its `train.augment_on` (where the augmentation runs)."""
    base = with_train(
        Job.model_validate(job_json), loader_workers=loader_workers, augment_on=augment_on
    )
    info = DataInfo(**info_json)
    dev = torch.device(device)
    threads = min(threads, os.cpu_count() or 1)
    torch.set_num_threads(threads)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-gpu-thesis-") as tmp:
        for precision, channels_last in settings:
            job = with_train(base, precision=precision, channels_last=channels_last)
            out: dict = {
                "pair": f"{student} <- {teacher}",
                "image_size": info.image_size,
                "channels": info.channels,
                "precision": precision,
                "channels_last": channels_last,
                "threads": threads,
                "loader_workers": loader_workers,
                "augment_on": augment_on,
                "train_images": info.counts["train"],
            }
            for batch, n_steps in steps.items():
                log(f"thesis shape, {precision}, channels_last={channels_last}, batch {batch}")
                bjob = with_train(job, batch_size=batch)
                part: dict = {}
                for mode in (PLAIN, CACHED, ONLINE):
                    folder = Path(tmp) / f"{precision}-{batch}-{mode}"
                    loop = bare.build_loop(bjob, info, student, teacher, (mode,), 2, folder, dev)
                    for cut in (warmup_steps, n_steps):
                        check_cut(loop.sessions[mode].batches, cut, job.train.prefetch_batches)
                    bare.run_epoch(loop, 0, mode, warmup_steps, validate=False)
                    reset_memory(dev)
                    timing = bare.run_epoch(loop, 1, mode, n_steps, validate=False)
                    sync(dev)
                    part[MODE_KEYS[mode]] = {
                        "images_per_s": timing.images / timing.train_s,
                        "data_wait_share": timing.data_s / timing.train_s,
                        "step_ms": 1000 * timing.train_s / timing.steps,
                        "steps": timing.steps,
                        **memory(dev),
                    }
                    if mode == PLAIN:
                        batches = loop.sessions[mode].batches
                        part["loader_images_per_s"] = loader_rate(batches, 2, n_steps)
                    loop.sessions.clear()
                    del loop
                    reset_memory(dev)
                part["no_kd_over_loader"] = (
                    part["no_kd"]["images_per_s"] / part["loader_images_per_s"]
                )
                out[f"batch{batch}"] = part
            results.append(out)
    return results


# --- 3b. loader worker processes -------------------------------------------------------------

START_METHODS = ("fork", "forkserver", "spawn")


def loader_startup(
    job_json: dict, info_json: dict, workers: int, start_method: str, device: str = "cpu"
) -> dict:
    """Seconds from building the training batches (`workers` loader processes started by
    `start_method`; 0: in process) to their first batch, in a fresh process (a fork server's
    own start included), and to the first batch of the next epoch (persistent workers resume)."""
    job, info = Job.model_validate(job_json), DataInfo(**info_json)
    images, labels = load_split(info.path, "train")
    t0 = time.perf_counter()
    batches = train_batches(
        images, labels, job.train.augment, info.mean, info.std, job.train.batch_size, 0,
        prefetch=job.train.prefetch_batches, workers=workers, start_method=start_method,
        augment_on=job.train.augment_on, device=device,
    )  # fmt: skip
    out = {}
    for epoch in (0, 1):
        stream = iter(batches.epoch(epoch))
        next(stream)
        out[f"epoch{epoch}_first_batch_s"] = time.perf_counter() - t0
        stream.close()
        t0 = time.perf_counter()
    del stream, batches  # the pool shuts down here, not while the interpreter exits
    gc.collect()
    return out


def loader_part(root: Path, sizes: Sizes, prefetch: int, device: str) -> dict:
    """The thesis shape (`thesis_shape`) for each of `sizes.loader_runs` (loader workers,
    precision, channels_last, augment_on), each in a fresh process, over `sizes.loader_steps`
    timed steps (a worker pool refills at each epoch's start: longer windows than part 3's); first
    the pool's start-up per start method, at the largest worker count, batch 64."""
    steps = dict(sizes.loader_steps)
    data = ("data.native_size=64", f"data.train_size={thesis_train_size(sizes, prefetch, steps)}")
    job = load_bench_job(root / "runs", [*THESIS_OVERRIDES, *data])
    info = prepare(job, root / "data")
    job_json = job.model_dump(mode="json")
    most = max(run[0] for run in sizes.loader_runs)
    startup_job = with_train(job, batch_size=64).model_dump(mode="json")
    out: dict = {"steps": steps, "warmup_steps": sizes.thesis_warmup, "startup": {}}
    for method in START_METHODS:
        log(f"loader start-up, {most} workers, {method}")
        out["startup"][method] = in_fresh_process(
            loader_startup, startup_job, info, most, method, device
        )
    out["startup"]["in_process"] = in_fresh_process(
        loader_startup, startup_job, info, 0, "", device
    )
    log("loader start-up " + json.dumps(out["startup"]))
    for workers, precision, channels_last, augment_on in sizes.loader_runs:
        [run] = in_fresh_process(
            thesis_shape, job_json, info, device, steps, sizes.thesis_warmup, THESIS_THREADS,
            ((precision, channels_last),), loader_workers=workers, augment_on=augment_on,
        )  # fmt: skip
        key = f"{precision}_{augment_on}_w{workers}"
        out[key] = run
        log(f"{key}: " + json.dumps(run))
    return out


# --- 1 and 4. the Ray grids ----------------------------------------------------------------


def grid_overrides(use_gpu: bool, gpus: float, concurrent: int, cpus: int) -> list[str]:
    """`resources` of a benchmark grid: on the GPU (`gpus` per worker) or, without one, on
    the CPU (the same grid, proving the code path)."""
    return [
        f"resources.gpus_per_worker={gpus if use_gpu else 0}",
        f"resources.cpus_per_worker={cpus}",
        f"resources.device={'cuda' if use_gpu else 'cpu'}",
        f"resources.max_concurrent_trials={concurrent}",
    ]


def grid_slots(job: Job) -> int:
    """Trials that can run at once: the concurrency cap, or what the CPUs (and GPUs) hold."""
    import ray

    r, have = job.resources, ray.cluster_resources()
    per_trial = r.cpus_per_worker * r.workers_per_trial
    n = min(r.max_concurrent_trials, int(have.get("CPU", 1) // per_trial))
    if r.gpus_per_worker:
        n = min(n, int(have.get("GPU", 0) / (r.gpus_per_worker * r.workers_per_trial) + 1e-9))
    return max(1, n)


def observed_concurrency(grid) -> int:
    """The most trials that were running at once (from their start and `wall_s`)."""
    edges = []
    for row in grid.trials:
        start = grid.driver_start.get(row["trial_id"])
        if start is not None and row["wall_s"] is not None:
            edges += [(start, 1), (start + row["wall_s"], -1)]
    running = peak = 0
    for _, step in sorted(edges):  # an end sorts before a start at the same instant
        running += step
        peak = max(peak, running)
    return peak


def grid_summary(grid, n_slots: int) -> dict:
    """Makespan, whether every run finished, each run's accuracies."""
    failed = {r["trial_id"]: r["error"] for r in grid.trials if r["status"] != "finished"}
    res = grid.job.resources
    return {
        "wall_s": grid.makespan_s,
        "runs": len(grid.trials),
        "all_finished": grid.ok and not failed,
        "failed": failed,
        "gpus_per_worker": res.gpus_per_worker,
        "device": res.device,
        "slots": n_slots,
        "concurrent": observed_concurrency(grid),
        "busy_s": sum(r["wall_s"] or 0.0 for r in grid.trials),
        "test_acc": {r["trial_id"]: r["test_acc"] for r in grid.trials},
        "val_acc": {r["trial_id"]: r["val_acc"] for r in grid.trials},
    }


def versus(summary: dict, reference: dict) -> dict:
    """Test accuracy of each run minus the reference grid's (the same run ids)."""
    diffs = {
        run: acc - reference["test_acc"][run]
        for run, acc in summary["test_acc"].items()
        if acc is not None and reference["test_acc"].get(run) is not None
    }
    if not diffs:
        return {}
    return {
        "test_acc_diff": diffs,
        "max_abs_test_acc_diff": max(abs(d) for d in diffs.values()),
        "mean_abs_test_acc_diff": statistics.mean(abs(d) for d in diffs.values()),
        "identical_runs": sum(d == 0 for d in diffs.values()),
    }


def fixed_costs(grid, events: dict, n_slots: int, ray_init_s: float) -> dict:
    """P2 and P3 for a grid: packing (makespan against busy time / slots) and, per trial, the
    share of `wall_s` that is not training (`wall_s - train_s + setup_s`) and the share that is
    Ray's start-up before the worker loop runs (from the controller's log timeline)."""
    from bench import fixed, raygrid

    pack = raygrid.packing(grid, n_slots, ray_init_s)
    timeline = raygrid.trial_timeline(grid, events)
    phases = raygrid.median_phases(timeline)
    head, tail = fixed.ray_fixed_phases(phases) if phases else (None, None)
    done = [r for r in grid.trials if r["status"] == "finished" and r["wall_s"]]
    fixed_share = {
        r["trial_id"]: (r["wall_s"] - r["train_s"] + r["setup_s"]) / r["wall_s"] for r in done
    }
    startup_share = {
        run: fixed.ray_fixed_phases(t["phases"])[0] / t["wall_s"] for run, t in timeline.items()
    }

    def median(values):
        values = list(values)
        return statistics.median(values) if values else None

    return {
        "packing": pack.pop("p2_packing"),
        "makespan_s": pack.pop("makespan_s"),
        "busy_s": pack.pop("busy_s"),
        "slots": n_slots,
        "concurrent": observed_concurrency(grid),
        "fixed_share_median": median(fixed_share.values()),
        "fixed_share_each": fixed_share,
        "fixed_s_median": median(r["wall_s"] - r["train_s"] + r["setup_s"] for r in done),
        "ray_startup_share_median": median(startup_share.values()),
        "ray_startup_s_median": head,
        "ray_teardown_s_median": tail,
        "worker_setup_s_median": median(r["setup_s"] for r in done),
        "wall_s_median": median(r["wall_s"] for r in done),
        "launch_to_first_step_s_median": median(
            t["launch_to_first_step_s"] for t in timeline.values()
        ),
        "trial_phases_median_s": phases,
        "trials_in_timeline": len(timeline),
        "packing_detail": pack,
    }


def ray_grids(root: Path, sizes: Sizes, use_gpu: bool = True, quickstarts_too: bool = True) -> dict:
    """One local Ray (`kdray.grid.local_ray.init_ray`, 4 trial drivers), then the MedMNIST-shaped
    grid (first: the controller logs read for its timeline hold only its trials), the quickstart on
    one whole GPU per trial, on a quarter GPU per trial with 4 at a time, and on the CPU."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from bench import raygrid

    cpus = CPUS_PER_WORKER if use_gpu else 1  # the 2-core CI machine: 1 CPU per trial
    runs = root / "runs"
    medmnist = load_bench_job(
        runs, [*sizes.medmnist, *grid_overrides(use_gpu, 0.25, 4, cpus)], "bench-gpu-medmnist"
    )
    gpu1 = load_bench_job(
        runs, [*sizes.quickstart, *grid_overrides(use_gpu, 1, 1, cpus)], "bench-gpu-quickstart-1"
    )
    quarter = load_bench_job(
        runs, [*sizes.quickstart, *grid_overrides(use_gpu, 0.25, 4, cpus)], "bench-gpu-quickstart-q"
    )
    cpu = load_bench_job(
        runs, [*sizes.quickstart, *grid_overrides(False, 0, 4, cpus)], "bench-gpu-quickstart-cpu"
    )
    quickstarts = [("quickstart_gpu1", gpu1), ("quickstart_gpu_quarter", quarter)]
    if not quickstarts_too:
        quickstarts = []
    elif sizes.cpu_reference:
        quickstarts.append(("quickstart_cpu", cpu))
    ray_init_s = raygrid.timed_ray_init(medmnist)  # trial drivers: 4, the most any grid runs
    try:
        log(f"MedMNIST-shaped grid: {len(make_plan(medmnist).runs)} runs")
        mm = raygrid.run_grid(medmnist)
        events = raygrid.controller_events(raygrid.session_dir())
        log(f"MedMNIST-shaped grid done in {mm.makespan_s:.1f}s (all finished: {mm.ok})")
        out = {"ray_init_s": ray_init_s}
        out["medmnist_grid"] = {
            "runs": len(mm.trials),
            "all_finished": mm.ok,
            "epochs": medmnist.train.epochs,
            "train_images": medmnist.data.train_size,
            "image_size": medmnist.data.image_size,
            "gpus_per_worker": medmnist.resources.gpus_per_worker,
            **fixed_costs(mm, events, grid_slots(medmnist), ray_init_s),
            "test_acc": {r["trial_id"]: r["test_acc"] for r in mm.trials},
        }
        log("medmnist_grid " + json.dumps(out["medmnist_grid"]))  # kept if a later part dies
        grids = {}
        for key, job in quickstarts:
            log(f"{key}: the quickstart, {job.resources.gpus_per_worker} GPU per trial")
            grid = raygrid.run_grid(job)
            log(f"{key} done in {grid.makespan_s:.1f}s (all finished: {grid.ok})")
            grids[key] = grid_summary(grid, grid_slots(job))
            log(f"{key} " + json.dumps(grids[key]))
    finally:
        ray.shutdown()
    reference = grids.get("quickstart_cpu")
    for key in [k for k in ("quickstart_gpu1", "quickstart_gpu_quarter") if k in grids]:
        grids[key]["vs_cpu"] = versus(grids[key], reference) if reference else "no CPU grid"
    if reference is None:
        grids["quickstart_cpu"] = "skipped (--quick, or --gpu-parts medmnist)"
    return out | grids


# --- all of it -------------------------------------------------------------------------------


PARTS = ("precision", "thesis", "loader", "grids", "medmnist")  # medmnist: that grid alone


def run_gpu(
    quick: bool, keep: bool, device: str = "cuda", parts: tuple[str, ...] = PARTS,
    sizes: Sizes | None = None,
) -> dict:  # fmt: skip
    """The GPU measurements in `parts` (all by default; one device call may not hold them all):
    the bare parts first (fresh processes, nothing else on the GPU), then the Ray grids.
    `sizes`: instead of `QUICK` / `FULL` (a CPU dry run of the code path)."""
    sizes = sizes or (QUICK if quick else FULL)
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="kdray-bench-gpu-"))
    log(f"working folder {root}")
    parts_s: dict[str, float] = {}
    result: dict = {}
    pjob = load_bench_job(root / "runs", sizes.quickstart)
    pinfo = prepare(pjob, root / "data")
    info = in_fresh_process(device_info, device)
    result.update(gpu_device=info.get("gpu_device"), torch=info["torch"], device_info=info)

    if "precision" in parts:
        t0 = time.perf_counter()
        precision = in_fresh_process(
            precision_check, pjob.model_dump(mode="json"), pinfo, device, PRECISIONS,
            sizes.precision_epochs,
        )  # fmt: skip
        precision.pop("device_info", None)
        result["precision"] = precision
        parts_s["precision"] = time.perf_counter() - t0

    if "thesis" in parts:
        t0 = time.perf_counter()
        thesis_data = (
            "data.native_size=64",  # drawn small, resized to 224 px: the loader's cost is alike
            f"data.train_size={thesis_train_size(sizes, pjob.train.prefetch_batches)}",
        )
        tjob = load_bench_job(root / "runs", [*THESIS_OVERRIDES, *thesis_data])
        tinfo = prepare(tjob, root / "data")
        thesis = in_fresh_process(
            thesis_shape, tjob.model_dump(mode="json"), tinfo, device, sizes.thesis_steps,
            sizes.thesis_warmup, THESIS_THREADS, sizes.thesis_settings,
        )  # fmt: skip
        result["thesis_shape"] = thesis[0]
        for setting in thesis[1:]:
            key = f"thesis_shape_{setting['precision']}"
            result[key] = setting
        parts_s["thesis_shape"] = time.perf_counter() - t0

    if "loader" in parts:
        t0 = time.perf_counter()
        result["thesis_loader_workers"] = loader_part(
            root, sizes, pjob.train.prefetch_batches, device
        )
        parts_s["loader"] = time.perf_counter() - t0

    if "grids" in parts or "medmnist" in parts:
        t0 = time.perf_counter()
        grids = ray_grids(root, sizes, device == "cuda", quickstarts_too="grids" in parts)
        for key in ("quickstart_gpu1", "quickstart_gpu_quarter", "quickstart_cpu", "medmnist_grid"):
            if key in grids:
                result[key] = grids[key]
        parts_s["ray_grids"] = time.perf_counter() - t0
        parts_s["ray_init_s"] = grids["ray_init_s"]

    result["meta"] = {
        "quick": quick,
        "parts": list(parts),
        "cpus": os.cpu_count(),
        "parts_s": parts_s,
        "total_s": time.perf_counter() - started,
        "load_avg_at_end": os.getloadavg(),
    }
    if keep:
        log(f"kept {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return result
