"""Expand a job into training runs, with no Ray in sight.

A *run* is one training of one model, identified by everything that determines it (model,
data, training settings, loss, teacher, stop rule, seed). Runs with the same identity are the
same run: a teacher that is also a student's no-KD baseline trains once and serves both.

Stage "teacher" holds every run some KD cell needs as a teacher; stage "student" holds the KD
students and the baselines that are not already teacher runs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Literal

from kdray.job import Job
from kdray.strategies import STRATEGIES

Stage = Literal["teacher", "student"]
STAGES: tuple[Stage, ...] = ("teacher", "student")


@dataclass
class RunSpec:
    run_id: str
    stage: Stage
    model: str
    strategy: str  # the loss the run trains with: "none" for teachers and baselines
    seed: int
    teacher_run: str | None = None
    teacher_model: str | None = None
    band: tuple[float, float] | None = None  # stop inside this val-accuracy band (defective)
    eval_every_steps: int | None = None
    roles: list[str] = field(default_factory=list)  # "teacher:<study>", "baseline", "kd"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RunSpec:
        d = dict(d)
        if d.get("band") is not None:
            d["band"] = tuple(d["band"])
        return cls(**d)


@dataclass
class Plan:
    runs: dict[str, RunSpec]

    def stage(self, stage: Stage) -> list[RunSpec]:
        return [r for r in self.runs.values() if r.stage == stage]

    def to_json(self) -> dict:
        return {"runs": [r.to_dict() for r in self.runs.values()]}

    @classmethod
    def from_json(cls, d: dict) -> Plan:
        return cls({r["run_id"]: RunSpec.from_dict(r) for r in d["runs"]})


def _run_id(job: Job, identity: dict) -> str:
    """A readable, stable id: `<model>-<strategy>[-<teacher>]-s<seed>-<hash of the rest>`."""
    determined_by = {
        **identity,
        "data": job.data.model_dump(mode="json"),
        "train": job.train.model_dump(mode="json"),
        "weights": job.pretrained.get(identity["model"]),
    }
    if identity["strategy"] != "none":
        determined_by["distill"] = job.distill.model_dump(mode="json")
    digest = hashlib.sha256(json.dumps(determined_by, sort_keys=True).encode()).hexdigest()[:8]
    parts = [identity["model"], identity["strategy"]]
    if identity.get("band"):
        parts.append("band{:.2f}-{:.2f}".format(*identity["band"]))
    return "-".join(parts + [f"s{identity['seed']}", digest])


def make_plan(job: Job) -> Plan:
    runs: dict[str, RunSpec] = {}

    def add(spec: RunSpec, role: str) -> RunSpec:
        existing = runs.setdefault(spec.run_id, spec)
        if role not in existing.roles:
            existing.roles.append(role)
        return existing

    def training_run(model: str, seed: int, stage: Stage, band=None, eval_every=None) -> RunSpec:
        identity = {"model": model, "strategy": "none", "seed": seed, "band": band}
        if band is not None:
            identity["eval_every_steps"] = eval_every
        return RunSpec(
            run_id=_run_id(job, identity),
            stage=stage,
            model=model,
            strategy="none",
            seed=seed,
            band=band,
            eval_every_steps=eval_every,
        )

    for seed in job.seeds:
        for study_name, study in job.studies.items():
            strategy = STRATEGIES[study_name]
            band = study.teacher_val_band if strategy.teacher_stop == "band" else None
            for teacher in study.teachers:
                teacher_run = add(
                    training_run(teacher, seed, "teacher", band, study.eval_every_steps),
                    f"teacher:{study_name}",
                )
                for student in study.students:
                    identity = {
                        "model": student,
                        "strategy": study_name,
                        "seed": seed,
                        "teacher_run": teacher_run.run_id,
                    }
                    add(
                        RunSpec(
                            run_id=_run_id(job, identity),
                            stage="student",
                            model=student,
                            strategy=study_name,
                            seed=seed,
                            teacher_run=teacher_run.run_id,
                            teacher_model=teacher,
                        ),
                        "kd",
                    )
        if job.baseline:
            students = dict.fromkeys(s for st in job.studies.values() for s in st.students)
            for student in students:
                # the same run as a converged teacher of that model, when there is one
                add(training_run(student, seed, "student"), "baseline")
    return Plan(runs)
