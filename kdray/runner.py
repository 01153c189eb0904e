"""`kdray run` from top to bottom: job -> experiment folder -> data cache -> stage 1 (teachers)
-> stage 2 (students) -> results tables."""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.console import Console

from kdray.data import prepare_data
from kdray.experiment import Experiment
from kdray.grid import check_resources, init_ray, run_stage
from kdray.job import Job
from kdray.plan import STAGES
from kdray.progress import GridProgress
from kdray.results import write_results
from kdray.worker import _write_json_atomic


@dataclass
class RunReport:
    experiment: Experiment
    finished: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed


def run_experiment(
    exp: Experiment,
    job: Job,
    address: str | None = None,
    verbose: bool = False,
    console: Console | None = None,
) -> RunReport:
    """Run every unfinished run of the experiment, stage by stage; finished runs are kept."""
    console = console or Console()
    plan = exp.plan()
    report = RunReport(exp)
    init_ray(job, address, verbose)
    check_resources(job)
    with console.status("decoding data into the array cache"):
        data = prepare_data(job.data, exp.data_dir)
    console.print(
        f"data: {job.data.kind}, {data.num_classes} classes, "
        + ", ".join(f"{k} {v}" for k, v in data.counts.items())
        + f", {data.image_size}px x {data.channels}ch"
    )
    with GridProgress(console) as progress:
        for stage in STAGES:
            runs = plan.stage(stage)
            todo, blocked = [], []
            for run in runs:
                summary = exp.summary(run.run_id)
                if summary and summary["status"] == "finished":
                    report.finished.append(run.run_id)
                elif run.teacher_run and run.teacher_run in report.failed:
                    blocked.append(run)
                else:
                    todo.append(run)
            for run in blocked:
                error = f"teacher run {run.teacher_run} failed"
                report.failed[run.run_id] = error
                exp.run_dir(run.run_id).mkdir(parents=True, exist_ok=True)
                _write_json_atomic(exp.run_dir(run.run_id) / "failure.json", {"error": error})
            progress.add_stage(stage, len(runs), already_done=len(runs) - len(todo))
            outcomes = run_stage(
                exp,
                job,
                stage,
                todo,
                data,
                on_event=lambda kind, _id, s=stage: progress.event(s, kind),
            )
            for outcome in outcomes:
                if outcome.status == "finished":
                    report.finished.append(outcome.run_id)
                else:
                    report.failed[outcome.run_id] = outcome.error or "failed"
            write_results(exp)
    return report
