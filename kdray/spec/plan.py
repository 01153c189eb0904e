"""Expand a job into training runs, with no Ray in sight.

A *run* is one training of one model, identified by everything that determines it (model,
data, training settings, method and its settings, teachers, stop rule, seed) and nothing else:
adding a study does not rename, and so retrain, another study's runs. Runs with the same
identity are the same run: a teacher that is also a student's no-KD baseline trains once and
serves both, and two studies that ask for the same KD training share it.

Stage "teacher" holds every run some KD cell needs as a teacher; stage "student" holds the KD
students and the baselines that are not already teacher runs. Roles say what each run is for:
`teacher:<study>`, `kd:<study>`, `baseline`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Literal

from kdray.data.budgets import budget_id
from kdray.methods import METHODS
from kdray.spec.job import SELF_TEACHER, Job

Stage = Literal["teacher", "student"]
STAGES: tuple[Stage, ...] = ("teacher", "student")
PLAIN = "none"  # the method name of a run trained without a teacher: teachers and baselines


@dataclass
class RunSpec:
    run_id: str
    stage: Stage
    model: str
    seed: int
    method: str = PLAIN  # the distillation method the run trains with
    method_params: dict | None = None
    setting: dict = field(default_factory=dict)  # the swept parameters' values, if any
    teacher_runs: list[str] = field(default_factory=list)  # several: an ensemble
    teacher_models: list[str] = field(default_factory=list)
    teacher_outputs: str | None = None  # how a KD run reads its teachers: cached | online
    soft_labels: bool = False  # a teacher run whose students read its soft-label cache
    soft_labels_pool: bool = False  # ... and students that train on the unlabelled pool too
    labels: dict | None = None  # the label budget (kdray.data.budgets); None: every label
    unlabelled: bool = False  # a student that also trains on the budget's unlabelled pool
    band: tuple[float, float] | None = None  # stop inside this val-accuracy band (defective)
    eval_every_steps: int | None = None
    roles: list[str] = field(default_factory=list)

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


def train_identity(job: Job) -> dict:
    """The training settings that decide a run. Loader processes draw other views than the
    in-process loader (per-sample seeds) whatever their count, which decides nothing."""
    train = job.train.model_dump(mode="json")
    if train.pop("loader_workers", 0):
        train["views"] = "per-sample seeds"
    return train


def _run_id(job: Job, identity: dict, label: str) -> str:
    """A readable, stable id: `<model>-<method>[-band..][-labels..]-s<seed>-<hash>`, the hash
    of the identity. Keys a run without a label budget never has are left out of its identity,
    so runs planned before budgets existed keep their ids."""
    determined_by = {
        **identity,
        "data": job.data.model_dump(mode="json"),
        "train": train_identity(job),
        "weights": job.pretrained.get(identity["model"]),
    }
    digest = hashlib.sha256(json.dumps(determined_by, sort_keys=True).encode()).hexdigest()[:8]
    parts = [identity["model"], label]
    if identity.get("band"):
        parts.append("band{:.2f}-{:.2f}".format(*identity["band"]))
    if identity.get("labels"):
        pool = "-pool" if identity.get("unlabelled") else ""
        parts.append(budget_id(identity["labels"]) + pool)
    return "-".join(parts + [f"s{identity['seed']}", digest])


def plain_run(
    job: Job, model: str, seed: int, stage: Stage, band=None, eval_every=None, labels=None
):
    """A run without a teacher: a teacher (converged, or stopped in `band`) or a baseline,
    trained on the labelled images of `labels`."""
    # the key "strategy" keeps the ids of teachers and baselines what they were before methods
    identity = {"model": model, "strategy": PLAIN, "seed": seed, "band": band}
    if band is not None:
        identity["eval_every_steps"] = eval_every
    if labels:
        identity["labels"] = labels
    return RunSpec(
        run_id=_run_id(job, identity, PLAIN),
        stage=stage,
        model=model,
        seed=seed,
        band=band,
        eval_every_steps=eval_every,
        labels=labels,
    )


def setting_label(setting: dict) -> str:
    """A sweep setting as a readable id part: `temperature1-alpha0.5`."""
    return "-".join(f"{key}{value}" for key, value in setting.items())


def kd_run(
    job: Job,
    study_name: str,
    student: str,
    seed: int,
    teachers: list[RunSpec],
    setting: dict | None = None,
    labels: dict | None = None,
):
    setting = setting or {}
    pool = bool(labels) and job.studies[study_name].unlabelled  # no pool without a budget
    method = METHODS[job.studies[study_name].method_name()]
    method_params = job.method_params(study_name, setting)
    params = method_params.model_dump(mode="json")
    reads = None
    if method.needs == "logits":
        reads = job.distill.teacher_outputs
    elif method.needs == "features":
        reads = "online"
    identity = {
        "model": student,
        "method": method.name,
        "method_params": method_params.identity(),
        "seed": seed,
        "teacher_runs": [t.run_id for t in teachers],
        "teacher_outputs": reads,
    }
    if labels:
        identity.update(labels=labels, unlabelled=pool)
    label = "-".join(filter(None, [method.name, setting_label(setting)]))
    return RunSpec(
        run_id=_run_id(job, identity, label),
        stage="student",
        model=student,
        seed=seed,
        method=method.name,
        method_params=params,
        setting=setting,
        teacher_runs=[t.run_id for t in teachers],
        teacher_models=[t.model for t in teachers],
        teacher_outputs=reads,
        labels=labels,
        unlabelled=pool,
    )


def add_study(job: Job, study_name: str, seed: int, labels: dict | None, add) -> None:
    """The study's teacher and KD runs for one seed and label budget."""
    study = job.studies[study_name]
    band, every = study.teacher_val_band, study.eval_every_steps
    for group in study.teacher_groups() or [[]]:
        for student in study.students:
            teachers = [
                add(
                    plain_run(job, student, seed, "teacher", labels=labels)
                    if model == SELF_TEACHER
                    else plain_run(job, model, seed, "teacher", band, every, labels),
                    f"teacher:{study_name}",
                )
                for model in group
            ]
            for setting in study.settings():
                kd = add(
                    kd_run(job, study_name, student, seed, teachers, setting, labels),
                    f"kd:{study_name}",
                )
                if kd.teacher_outputs == "cached":
                    for teacher in teachers:
                        if kd.unlabelled:
                            teacher.soft_labels_pool = True
                        else:
                            teacher.soft_labels = True


def make_plan(job: Job) -> Plan:
    runs: dict[str, RunSpec] = {}

    def add(spec: RunSpec, role: str) -> RunSpec:
        existing = runs.setdefault(spec.run_id, spec)
        if role not in existing.roles:
            existing.roles.append(role)
        return existing

    for seed in job.seeds:
        for labels in job.label_budgets():
            for study_name in job.studies:
                add_study(job, study_name, seed, labels, add)
            if job.baseline:
                students = dict.fromkeys(s for st in job.studies.values() for s in st.students)
                for student in students:
                    # the same run as a converged teacher of that model, when there is one
                    add(plain_run(job, student, seed, "student", labels=labels), "baseline")
    return Plan(runs)
