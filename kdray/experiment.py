"""The experiment folder: everything a grid needs and produces lives under `<storage>/<name>/`.

job.json      the validated job (overrides applied)
plan.json     every run of the grid, with its id, stage and roles
data/         the decoded array cache
runs/<id>/    per run: summary.json, epochs.jsonl, model.pt, attempts.json
train/<id>/   Ray Train's storage for the run (per-epoch checkpoints)
tune/<time>/  Ray Tune's experiment state, one per `kdray run`/`resume` of the grid
costs/        each model's measured cost per data shape and device (`kdray.cost`)
versions.json the versions of python and the packages that shape results, at creation
results/      trials.parquet, epochs.parquet
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from kdray import versions
from kdray.job import Job
from kdray.plan import Plan, make_plan


class ExperimentError(Exception):
    pass


@dataclass(frozen=True)
class Experiment:
    root: Path

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def train_dir(self) -> Path:
        return self.root / "train"

    @property
    def tune_dir(self) -> Path:
        return self.root / "tune"

    @property
    def results_dir(self) -> Path:
        return self.root / "results"

    def run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / run_id

    def job(self) -> Job:
        return Job.model_validate_json((self.root / "job.json").read_text())

    def plan(self) -> Plan:
        saved = json.loads((self.root / "plan.json").read_text())
        if any("strategy" in run for run in saved["runs"]):  # written before methods existed
            plan = make_plan(self.job())
            (self.root / "plan.json").write_text(json.dumps(plan.to_json(), indent=2))
            return plan
        return Plan.from_json(saved)

    def summary(self, run_id: str) -> dict | None:
        path = self.run_dir(run_id) / "summary.json"
        return json.loads(path.read_text()) if path.is_file() else None

    @classmethod
    def for_job(cls, job: Job) -> Experiment:
        return cls(Path(job.storage).expanduser().resolve() / job.name)

    @classmethod
    def create(cls, job: Job) -> Experiment:
        """Write the job and its plan; an existing folder must hold the same job."""
        exp = cls.for_job(job)
        job_json = job.model_dump_json(indent=2)
        existing = exp.root / "job.json"
        # compared as jobs, not text: a job.json written by an older kdray lacks newer defaults
        if existing.is_file() and Job.model_validate_json(existing.read_text()) != job:
            raise ExperimentError(
                f"{exp.root} already holds a different job named {job.name!r}: resume it with "
                f"`kdray resume {exp.root}`, or run the new settings under another name "
                f"(--set name={job.name}-2) or storage"
            )
        is_new = not existing.is_file()
        exp.root.mkdir(parents=True, exist_ok=True)
        existing.write_text(job_json)
        (exp.root / "plan.json").write_text(json.dumps(make_plan(job).to_json(), indent=2))
        if is_new:  # what it started with; a resume compares against it (kdray.versions)
            versions.record(exp.root)
        return exp

    @classmethod
    def open(cls, path: str | Path) -> Experiment:
        exp = cls(Path(path).expanduser().resolve())
        for name in ("job.json", "plan.json"):
            if not (exp.root / name).is_file():
                raise ExperimentError(
                    f"{exp.root} is not a kdray experiment folder (no {name}); "
                    "expected <storage>/<job name>/ as created by `kdray run`"
                )
        return exp
