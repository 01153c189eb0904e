"""`kdray run` / `kdray resume` from top to bottom: job -> experiment folder -> data cache ->
the grid (each KD student as soon as its teacher finished) -> results tables.

Running an experiment that already exists resumes it: finished runs are kept, unfinished ones
continue from their last checkpoint. That makes `kdray run` safe to repeat (Ray Jobs never retry
an entrypoint; a user can just submit it again).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from rich.console import Console

from kdray.data import prepare_data
from kdray.data.cache import DataInfo, load_targets
from kdray.grid.local_ray import init_ray
from kdray.grid.progress import GridProgress, fitted_lines
from kdray.grid.progress_log import GridLog
from kdray.results.tables import write_results
from kdray.spec.describe import band_warnings, job_warnings
from kdray.spec.fit import batch_problems
from kdray.spec.job import Job, JobError, task_problems
from kdray.spec.plan import Plan
from kdray.store.experiment import Experiment, ExperimentError
from kdray.store.lock import hold_driver
from kdray.tasks import get_task
from kdray.tasks.weights import WeightsError, find_all, missing_line
from kdray.tracking.tracker import GridTracker


@dataclass
class RunReport:
    experiment: Experiment
    finished: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)  # searched samples their search ended
    failed: dict[str, str] = field(default_factory=dict)
    data: DataInfo | None = None  # the decoded data the runs trained on

    @property
    def ok(self) -> bool:
        return not self.failed


def check_weights(exp: Experiment, job: Job, plan: Plan) -> None:
    """Every pretrained weight the runs start from is here, the same file they were planned
    with (its sha256 is in their ids); `WeightsError` with one line otherwise."""
    where = job.weights_caches()
    found, missing = find_all(job.weights_sources(), where)
    if missing:
        raise WeightsError(missing_line(missing, where, f"kdray weights {exp.root / 'job.json'}"))
    for run in plan.runs.values():
        planned = (run.weights or {}).get("sha256")
        local = found.get(run.model)
        if planned and local is not None and local.sha256 != planned:
            raise WeightsError(
                f"pretrained weights of {run.model} ({local.source.label}) at {local.path} have "
                f"sha256 {local.sha256}, but {exp.root.name}'s runs were planned with {planned} "
                f"({exp.root / 'versions.json'}): restore those weights, or run the job under "
                "another name"
            )


def run_experiment(
    exp: Experiment,
    job: Job,
    address: str | None = None,
    verbose: bool = False,
    console: Console | None = None,
) -> RunReport:
    """Run (or resume) the experiment's grid, then write its results tables; as the folder's
    one driver (`GridBusy` if another `kdray run`/`resume` drives it)."""
    with hold_driver(exp.root):
        return _run_experiment(exp, job, address, verbose, console or Console())


def _prepare(exp: Experiment, job: Job, console: Console) -> DataInfo:
    """Decode the data (bad data is refused before Ray starts) and say what it holds."""
    with console.status("decoding data into the array cache"):
        data = prepare_data(job.data, exp.data_dir)
    train_labels = load_targets(data.path, "train")
    samples = "images" if data.rank == 2 else "volumes"
    task = get_task(data.task)
    problems = task_problems(job, data.task) + batch_problems(job, train_labels, task=data.task)
    problems += task.train_problems(train_labels, data.classes, samples)
    if problems:
        raise JobError(problems)
    skipped = sum(data.extra.get("skipped", {}).values())
    skipped += sum(data.extra.get("dropped_rows", {}).values())
    described = (
        f"data: {job.data.kind}, {task.name.replace('_', '-')}, {data.num_classes} {task.outputs}, "
        + ", ".join(f"{k} {v}" for k, v in data.counts.items())
        + (
            f", {data.image_size}px"
            if data.rank == 2
            else ", patch " + "x".join(map(str, data.spatial))
        )
        + f" x {data.channels}ch"
        + (f", {skipped} bad images skipped" if skipped else "")
    )
    counted = task.count_line(train_labels, data.classes, samples)
    for text in (described, f"train {counted}"):
        for line in fitted_lines(text, console.width):
            console.print(line, highlight=False, soft_wrap=True)
    for note in data.extra.get("notes", []):
        for line in fitted_lines(f"data: {note}", console.width):
            console.print(line, highlight=False, soft_wrap=True)
    data_lines = [f"data: {line}" for line in data.extra.get("warnings", [])]
    warnings = data_lines + band_warnings(job, data)
    for warning in warnings + job_warnings(job, data.num_classes, train_labels):
        console.print(f"[yellow]warning[/yellow]: {warning}", highlight=False)
    return data


def grid_view(console: Console) -> GridProgress | GridLog:
    """Live bars on a terminal; elsewhere (a log file, Slurm, `ray job submit`) a line per run
    that starts, finishes or fails, and a stage summary every few minutes."""
    return GridProgress(console) if console.is_terminal else GridLog(console)


def _run_experiment(
    exp: Experiment, job: Job, address: str | None, verbose: bool, console: Console
) -> RunReport:
    plan = exp.plan()
    check_weights(exp, job, plan)  # before anything decodes, starts or trains
    if plan.searches:
        exp.check_search_journal()
    report = RunReport(exp)
    data = report.data = _prepare(exp, job, console)
    # imported once the data's checks passed: a refused job pays neither them nor Ray's start
    from kdray.grid.resources import check_resources, driver_warning
    from kdray.grid.tune import check_storage, run_grid

    init_ray(job, address, verbose)
    cluster_warnings = check_resources(job, local=address is None)
    cluster_warnings += [w for w in [driver_warning()] if w]
    for warning in cluster_warnings:
        console.print(f"[yellow]warning[/yellow]: {warning}", highlight=False)
    check_storage(exp.root)
    tracking = GridTracker.start(exp, job, data)  # MLflow: the grid's run, before its trials
    complete = False
    stop_polling = threading.Event()
    try:
        with grid_view(console) as progress:
            progress.refresh(exp)  # before any trial: what a resumed grid had already
            poller = threading.Thread(target=progress.follow, args=(exp, stop_polling), daemon=True)
            poller.start()
            try:
                for outcome in run_grid(exp, job, list(plan.runs.values()), data):
                    if outcome.status == "finished":
                        report.finished.append(outcome.run_id)
                    elif outcome.status == "stopped":
                        report.stopped.append(outcome.run_id)
                    else:
                        report.failed[outcome.run_id] = outcome.error or "failed"
                complete = True
            finally:  # the last frame shows cut-short runs as interrupted, not running
                stop_polling.set()
                poller.join()
                progress.refresh(exp, final=True)
    finally:
        stop_polling.set()
        write_results(exp)
        tracking.finish(report.finished, report.failed, complete)
    ran = [*report.finished, *report.stopped, *report.failed]
    for warning in tracking_lost(exp, ran):
        console.print(f"[yellow]warning[/yellow]: {warning}", highlight=False)
    return report


def tracking_lost(exp: Experiment, run_ids: list[str]) -> list[str]:
    """A line per backend and reason that dropped some runs' tracking: a worker warns in its
    Ray log, which the user does not read, and the run's summary keeps the reason."""
    lost: dict[tuple[str, str], list[str]] = {}
    for run_id in run_ids:
        try:
            off = (exp.summary(run_id) or {}).get("tracking_off") or []
        except ExperimentError:
            continue  # named by the export
        for line in off:
            backend, _, why = line.partition(": ")
            lost.setdefault((backend, why), []).append(run_id)
    return [
        f"{backend} tracking was off for {len(runs)} run(s) ({runs[0]}"
        + (f" and {len(runs) - 1} more" if len(runs) > 1 else "")
        + f"): {why}; they trained, and their numbers are in the tables"
        for (backend, why), runs in lost.items()
    ]
