"""`python -m bench --volumes`: P1 for 3D segmentation, a volume step's throughput inside a Ray
Train trial ÷ the same step in a bare loop. One JSON object on stdout, progress on stderr.

The shape of `jobs/volumes.yaml` (phantoms of 48x48x24 voxels, 32x32x16 patches, batch 4, the
flips on, one thread: its `cpus_per_worker`) with fewer validation and test volumes, one seed
and `EPOCHS` epochs. Two steps are measured: the teacher's (`unet3d`, no KD: the job's dearest
step) and the voxel-KD student's with its teacher online (`distill.teacher_outputs: online`: the
teacher's forward on every patch batch, as 2D P1 does). In order, as 2D P1 interleaves its sides
(bench/__main__.py): the bare loop (`bench.bare`: `build_session`, `train_epoch`, the worker's
own code without Ray) in a fresh process, a warm-up epoch of each step and `ROUNDS` rounds of
both interleaved; then the grid (the teacher trial, then the student's, one at a time through
`run_experiment`, as `kdray run` does); then the bare loop again. Each side's images/s is over
its epochs' batches alone (`epoch_s` in results/epochs.parquet, after the first epoch; the bare
loop's `train_s`); the bare reference pools both bare runs (`p1_volumes_*`). On a shared machine
the load can change between the parts, so `p1_volumes_*_fastest` also compares each side's
fastest epoch (the one least slowed by other processes). `/proc/loadavg` is read before each
part.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch

from bench.bare import ONLINE, PLAIN, build_loop, run_epoch
from bench.common import REPO, in_fresh_process, log, prepare
from kdray.data.cache import DataInfo
from kdray.spec.job import Job
from kdray.spec.load import load_job

JOB = REPO / "jobs" / "volumes.yaml"
TEACHER, STUDENT = "unet3d", "unet3d-c4.8.16.32-s2.2.2-r1"
STUDY = "voxel_kd"
EPOCHS = 6  # per Ray trial: the first is not timed (P1 counts epochs after the first)
ROUNDS = 3  # timed rounds of each bare step, after a warm-up epoch each
TRAIN_VOLUMES = 64  # one patch each per epoch: 16 steps of batch 4
STEPS = {"teacher": (TEACHER, STUDENT, PLAIN), "kd_student": (STUDENT, TEACHER, ONLINE)}

OVERRIDES = (
    "name=bench-volumes",
    f"data.train_size={TRAIN_VOLUMES}",
    "data.valid_size=4",
    "data.test_size=4",
    f"train.epochs={EPOCHS}",
    "seeds=[0]",
    "baseline=false",
    f"studies={{{STUDY}: {{teachers: [{TEACHER}], students: [{STUDENT}], "
    "method: {name: pixel_kd}}}",
    "distill.teacher_outputs=online",
    "resources.max_concurrent_trials=1",
    "resources.runs_per_trial=1",
)


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def bench_job(storage: Path) -> Job:
    """jobs/volumes.yaml at the benchmark's size: one teacher, one online voxel-KD student."""
    return load_job(JOB, [f"storage={storage}", *OVERRIDES])


def bare_epochs(job_json: dict, info_json: dict, rounds: int) -> dict:
    """Both steps' epochs in a bare loop (meant for a fresh process): a warm-up epoch each,
    then `rounds` rounds interleaved (teacher, student; student, teacher; ...). Returns each
    step's timed epochs (images, train_s, data_s, teacher_s)."""
    job, info = Job.model_validate(job_json), DataInfo(**info_json)
    torch.set_num_threads(max(1, int(job.resources.cpus_per_worker)))
    timed: dict[str, list[dict]] = {step: [] for step in STEPS}
    with tempfile.TemporaryDirectory(prefix="bench-volumes-") as tmp:
        loops = {
            step: build_loop(job, info, model, other, (mode,), 1 + rounds, Path(tmp) / step,
                             method={"name": "pixel_kd"})
            for step, (model, other, mode) in STEPS.items()
        }  # fmt: skip
        for epoch in range(1 + rounds):
            order = list(STEPS) if epoch % 2 == 0 else list(STEPS)[::-1]
            for step in order:
                timing = run_epoch(loops[step], epoch, STEPS[step][2], validate=False)
                if epoch:  # the first is the warm-up
                    timed[step].append(timing.to_json())
        loops.clear()
    return {"threads": torch.get_num_threads(), "epochs": timed}


def bare_rate(runs: list[dict], step: str) -> dict:
    """Images/s of one step's timed epochs, pooled over bare runs."""
    epochs = [e for r in runs for e in r["epochs"][step]]
    return {
        "images_per_s": sum(e["images"] for e in epochs) / sum(e["train_s"] for e in epochs),
        "epoch_s": [round(e["train_s"], 3) for e in epochs],
        "fastest_images_per_s": max(e["images"] / e["train_s"] for e in epochs),
        "images_per_epoch": epochs[0]["images"],
        "data_wait": sum(e["data_s"] for e in epochs) / sum(e["train_s"] for e in epochs),
    }


def ray_run_id(grid, role: str) -> str:
    """The grid's run with `role` (e.g. `teacher:voxel_kd`)."""
    return next(r["trial_id"] for r in grid.trials if role in (r["roles"] or []))


def volumes_p1(root: Path) -> dict:
    """The bare loop, the two Ray trials, the bare loop again; P1 per step."""
    import ray

    from bench import raygrid

    started = time.perf_counter()
    job = bench_job(root / "runs")
    info = prepare(job, root / "data")
    job_json = job.model_dump(mode="json")
    loads = {"start": loadavg()}

    def bare(tag: str) -> dict:
        log(f"bare loop ({tag}): {TEACHER} no KD, {STUDENT} voxel KD online, {ROUNDS} rounds")
        loads[f"bare_{tag}"] = loadavg()
        return in_fresh_process(bare_epochs, job_json, info, ROUNDS)

    before = bare("before")
    ray_init_s = raygrid.timed_ray_init(job)
    loads["ray"] = loadavg()
    log(f"grid: {TEACHER} teacher trial, then the {STUDENT} KD trial, one at a time")
    grid = raygrid.run_grid(job)
    log(f"grid done in {grid.makespan_s:.1f}s (all finished: {grid.ok})")
    ray.shutdown()
    after = bare("after")
    loads["end"] = loadavg()

    steps = {}
    roles = {"teacher": f"teacher:{STUDY}", "kd_student": f"kd:{STUDY}"}
    for step, role in roles.items():
        reference = bare_rate([before, after], step)
        in_ray = raygrid.epoch_rate(grid, ray_run_id(grid, role), reference["images_per_epoch"])
        fastest_ray = reference["images_per_epoch"] / min(in_ray["epoch_s"])
        steps[step] = {
            "p1": in_ray["images_per_s"] / reference["images_per_s"],
            "p1_fastest": fastest_ray / reference["fastest_images_per_s"],
            "ray_trial": in_ray,
            "bare": reference,
            "bare_images_per_s_before_after": [
                bare_rate([before], step)["images_per_s"],
                bare_rate([after], step)["images_per_s"],
            ],
        }
    return {
        "p1_volumes_teacher": steps["teacher"]["p1"],
        "p1_volumes_kd_student": steps["kd_student"]["p1"],
        "p1_volumes_teacher_fastest": steps["teacher"]["p1_fastest"],
        "p1_volumes_kd_student_fastest": steps["kd_student"]["p1_fastest"],
        "steps": steps,
        "shape": {"volume": list(job.data.shape), "patch": list(job.data.patch),
                  "train_volumes": job.data.train_size, "batch_size": job.train.batch_size,
                  "teacher": TEACHER, "student": STUDENT, "threads": before["threads"],
                  "ray_epochs": EPOCHS, "bare_rounds": ROUNDS},
        "meta": {"grid_all_finished": grid.ok, "grid_makespan_s": grid.makespan_s,
                 "ray_init_s": ray_init_s, "loadavg": loads, "cpus": os.cpu_count(),
                 "total_s": time.perf_counter() - started},
    }  # fmt: skip
