"""Expand a job into training runs, with no Ray in sight.

A *run* is one training of one model, identified by everything that determines it (model,
data, training settings, method and its settings, teachers, stop rule, seed) and nothing else:
adding a study does not rename, and so retrain, another study's runs. Runs with the same
identity are the same run: a teacher that is also a student's no-KD baseline trains once and
serves both, and two studies that ask for the same KD training share it.

A run that starts from pretrained weights counts them in its identity: a timm tag by its name and
the sha256 of the file found for it (other weights under the same tag make other runs), a local
file by its path (as before tags existed). Runs without pretrained weights keep their ids.

Stage "teacher" holds every run some KD cell needs as a teacher; stage "student" holds the KD
students and the baselines that are not already teacher runs. Roles say what each run is for:
`teacher:<study>`, `kd:<study>`, `baseline`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Literal

from kdray.data.budgets import budget_id
from kdray.methods import METHODS
from kdray.spec.job import BASELINE, SELF_TEACHER, Job
from kdray.spec.search import TRAIN_KEYS
from kdray.tasks.weights import WeightsError, find_all, missing_line

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
    # pretrained weights the model starts from: {"tag" | "file": ..., "sha256": ...}; None: none
    weights: dict | None = None
    train: dict = field(default_factory=dict)  # searched training settings (lr, ...), if any

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RunSpec:
        d = dict(d)
        if d.get("band") is not None:
            d["band"] = tuple(d["band"])
        return cls(**d)


@dataclass
class SearchCell:
    """One searched cell: a study's student taught by one teacher entry, on one label budget.
    Its samples train on the job's first seed; the best is confirmed on every seed, each seed's
    KD run taught by that seed's `teacher_runs`."""

    key: str
    study: str
    student: str
    teacher_models: list[str]
    teacher_runs: dict[int, list[str]]  # seed -> the teacher run ids of that seed
    labels: dict | None = None
    student_weights: dict | None = None  # the student's pretrained weights (`planned_weights`)

    def to_dict(self) -> dict:
        return {**asdict(self), "teacher_runs": [[s, r] for s, r in self.teacher_runs.items()]}

    @classmethod
    def from_dict(cls, d: dict) -> SearchCell:
        return cls(**{**d, "teacher_runs": {int(s): list(r) for s, r in d["teacher_runs"]}})


@dataclass
class Plan:
    runs: dict[str, RunSpec]
    searches: dict[str, SearchCell] = field(default_factory=dict)

    def stage(self, stage: Stage) -> list[RunSpec]:
        return [r for r in self.runs.values() if r.stage == stage]

    def to_json(self) -> dict:
        out = {"runs": [r.to_dict() for r in self.runs.values()]}
        if self.searches:
            out["searches"] = [c.to_dict() for c in self.searches.values()]
        return out

    @classmethod
    def from_json(cls, d: dict) -> Plan:
        runs = {r["run_id"]: RunSpec.from_dict(r) for r in d["runs"]}
        searches = [SearchCell.from_dict(c) for c in d.get("searches", [])]
        return cls(runs, {c.key: c for c in searches})

    def with_runs(self, extra: list[RunSpec]) -> Plan:
        """This plan and runs made during the grid (a search's samples and confirmations):
        a run already here keeps its spec and gains the other's roles."""
        runs = dict(self.runs)
        for spec in extra:
            existing = runs.setdefault(spec.run_id, spec)
            if existing is not spec:
                roles = existing.roles + [r for r in spec.roles if r not in existing.roles]
                runs[spec.run_id] = RunSpec.from_dict({**existing.to_dict(), "roles": roles})
        return Plan(runs, self.searches)


def train_identity(job: Job) -> dict:
    """The training settings that decide a run. Loader processes draw other views than the
    in-process loader (per-sample seeds) whatever their count, which decides nothing. Where
    the augmentation runs (`augment_on`) is left out, so runs keep the ids they had before the
    setting existed; the soft-label cache's key tells the views apart. So is multi-label F1's
    default threshold rule (`f1_threshold: validation`); a fixed threshold is in."""
    train = job.train.model_dump(mode="json")
    train.pop("augment_on", None)
    if train.get("f1_threshold") == "validation":
        del train["f1_threshold"]
    if train.pop("loader_workers", 0):
        train["views"] = "per-sample seeds"
    return train


def planned_weights(job: Job, checksums: Mapping[str, str]) -> dict[str, dict]:
    """Each pretrained model's weights as its runs record them: the tag (or file) and the
    sha256 of the file (`checksums`, by model; a tag's is required)."""
    out = {}
    for model, source in job.weights_sources().items():
        sha256 = checksums.get(model)
        if source.tag and not sha256:
            raise WeightsError(f"pretrained.{model}: {source.tag} has no checksum to plan with")
        where = {"tag": source.tag} if source.tag else {"file": source.file}
        out[model] = {**where, "sha256": sha256}
    return out


def weights_identity(weights: dict | None) -> str | dict | None:
    """What of a run's weights decides it: a tag and its checksum; a file's path (so runs
    planned with files before tags existed keep their ids); None for none."""
    if weights is None:
        return None
    if "file" in weights:
        return weights["file"]
    return {"tag": weights["tag"], "sha256": weights["sha256"]}


def _run_id(job: Job, identity: dict, label: str, weights: dict | None) -> str:
    """A readable, stable id: `<model>-<method>[-band..][-labels..]-s<seed>-<hash>`, the hash
    of the identity. Keys a run without a label budget never has are left out of its identity,
    so runs planned before budgets existed keep their ids; so is a volume's unset
    `patch_augment`."""
    data = job.data.model_dump(mode="json")
    if data.get("patch_augment", 0) is None:
        del data["patch_augment"]
    determined_by = {
        **identity,
        "data": data,
        "train": train_identity(job),
        "weights": weights_identity(weights),
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
    job: Job,
    model: str,
    seed: int,
    stage: Stage,
    band=None,
    eval_every=None,
    labels=None,
    weights: dict | None = None,
    train: dict | None = None,
):
    """A run without a teacher: a teacher (converged, or stopped in `band`) or a baseline,
    trained on the labelled images of `labels`, from `weights` (`planned_weights`), with the
    searched training settings `train` (a searched baseline's)."""
    # the key "strategy" keeps the ids of teachers and baselines what they were before methods
    identity = {"model": model, "strategy": PLAIN, "seed": seed, "band": band}
    if band is not None:
        identity["eval_every_steps"] = eval_every
    if labels:
        identity["labels"] = labels
    if train:
        identity["train_overrides"] = train
    label = "-".join(filter(None, [PLAIN, setting_label(train or {})]))
    return RunSpec(
        run_id=_run_id(job, identity, label, weights),
        stage=stage,
        model=model,
        seed=seed,
        band=band,
        eval_every_steps=eval_every,
        labels=labels,
        weights=weights,
        setting=dict(train or {}),
        train=dict(train or {}),
    )


def split_setting(setting: dict) -> tuple[dict, dict]:
    """A setting's method parameters and its training settings (`TRAIN_KEYS`)."""
    method = {k: v for k, v in setting.items() if k not in TRAIN_KEYS}
    return method, {k: v for k, v in setting.items() if k in TRAIN_KEYS}


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
    weights: dict | None = None,
):
    full_setting = setting or {}
    setting, train = split_setting(full_setting)
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
    if train:  # absent otherwise: runs planned before searches keep their ids
        identity["train_overrides"] = train
    label = "-".join(filter(None, [method.name, setting_label(full_setting)]))
    return RunSpec(
        run_id=_run_id(job, identity, label, weights),
        stage="student",
        model=student,
        seed=seed,
        method=method.name,
        method_params=params,
        setting=full_setting,
        train=train,
        teacher_runs=[t.run_id for t in teachers],
        teacher_models=[t.model for t in teachers],
        teacher_outputs=reads,
        labels=labels,
        unlabelled=pool,
        weights=weights,
    )


def teacher_runs(
    job: Job, study_name: str, group: list[str], student: str, seed: int, labels, weights
) -> list[RunSpec]:
    """The runs of one teacher entry of a study (a model, `self`, an ensemble's models) that
    teach `student` on `seed`."""
    study = job.studies[study_name]
    band, every = study.teacher_val_band, study.eval_every_steps
    return [
        plain_run(job, student, seed, "teacher", labels=labels, weights=weights.get(student))
        if model == SELF_TEACHER
        else plain_run(job, model, seed, "teacher", band, every, labels, weights.get(model))
        for model in group
    ]


def add_study(
    job: Job, study_name: str, seed: int, labels: dict | None, add, weights: dict[str, dict]
) -> None:
    """The study's teacher and KD runs for one seed and label budget (a searched study's KD
    runs are made during the grid: `sample_run`, `confirm_runs`)."""
    study = job.studies[study_name]
    for group in study.teacher_groups() or [[]]:
        for student in study.students:
            teachers = [
                add(t, f"teacher:{study_name}")
                for t in teacher_runs(job, study_name, group, student, seed, labels, weights)
            ]
            settings = [{}] if study.search is not None else study.settings()
            for setting in settings:
                kd = kd_run(
                    job, study_name, student, seed, teachers, setting, labels,
                    weights.get(student),
                )  # fmt: skip
                if study.search is None:
                    kd = add(kd, f"kd:{study_name}")
                if kd.teacher_outputs == "cached":
                    for teacher in teachers:
                        if kd.unlabelled:
                            teacher.soft_labels_pool = True
                        else:
                            teacher.soft_labels = True


def search_cells(job: Job, weights: dict[str, dict]) -> dict[str, SearchCell]:
    """Every searched cell of the job, with each seed's teacher runs."""
    cells = {}
    for labels in job.label_budgets():
        for study_name, study in job.studies.items():
            if study.search is None:
                continue
            for group in study.teacher_groups() or [[]]:
                for student in study.students:
                    runs = {
                        seed: teacher_runs(job, study_name, group, student, seed, labels, weights)
                        for seed in job.seeds
                    }
                    models = [t.model for t in runs[job.seeds[0]]]
                    parts = [study_name, student, "+".join(models) or "no-teacher"]
                    if labels:
                        parts.append(budget_id(labels))
                    key = "/".join(parts)
                    cells[key] = SearchCell(
                        key, study_name, student, models,
                        {seed: [t.run_id for t in ts] for seed, ts in runs.items()}, labels,
                        weights.get(student),
                    )  # fmt: skip
        if job.baseline_search is not None:
            cells.update(baseline_cells(job, labels, weights))
    return cells


def baseline_cells(job: Job, labels: dict | None, weights: dict[str, dict]) -> dict:
    """A searched baseline's cells: each student of the job, on one label budget."""
    cells = {}
    for student in dict.fromkeys(s for st in job.studies.values() for s in st.students):
        key = "/".join(filter(None, [BASELINE, student, labels and budget_id(labels)]))
        no_teachers = {seed: [] for seed in job.seeds}
        cells[key] = SearchCell(
            key, BASELINE, student, [], no_teachers, labels, weights.get(student)
        )
    return cells


def sample_run(job: Job, plan: Plan, cell: SearchCell, setting: dict) -> RunSpec:
    """A searched cell's sample: its KD run for `setting` on the job's first seed."""
    return cell_run(job, plan, cell, setting, job.seeds[0], f"sample:{cell.study}")


def confirm_runs(job: Job, plan: Plan, cell: SearchCell, setting: dict) -> list[RunSpec]:
    """The cell's KD runs for its chosen `setting` on every seed of the job."""
    role = BASELINE if cell.study == BASELINE else f"kd:{cell.study}"
    return [cell_run(job, plan, cell, setting, seed, role) for seed in job.seeds]


def cell_run(
    job: Job, plan: Plan, cell: SearchCell, setting: dict, seed: int, role: str
) -> RunSpec:
    if cell.study == BASELINE:
        run = plain_run(
            job, cell.student, seed, "student", labels=cell.labels,
            weights=cell.student_weights, train=setting,
        )  # fmt: skip
        run.roles = [role]
        return run
    teachers = [plan.runs[r] for r in cell.teacher_runs[seed]]
    run = kd_run(
        job, cell.study, cell.student, seed, teachers, setting, cell.labels, cell.student_weights
    )
    run.roles = [role]
    return run


def make_plan(job: Job, checksums: Mapping[str, str] | None = None) -> Plan:
    """Every run of the job. `checksums`: the sha256 of each pretrained model's weights, by
    model (default: those found in the job's weights caches now; `WeightsError` when some are
    missing)."""
    if checksums is None:
        checksums = find_checksums(job)
    weights = planned_weights(job, checksums)
    runs: dict[str, RunSpec] = {}

    def add(spec: RunSpec, role: str) -> RunSpec:
        existing = runs.setdefault(spec.run_id, spec)
        if role not in existing.roles:
            existing.roles.append(role)
        return existing

    for seed in job.seeds:
        for labels in job.label_budgets():
            for study_name in job.studies:
                add_study(job, study_name, seed, labels, add, weights)
            if job.baseline and job.baseline_search is None:  # searched: made during the grid
                students = dict.fromkeys(s for st in job.studies.values() for s in st.students)
                for student in students:
                    # the same run as a converged teacher of that model, when there is one
                    run = plain_run(
                        job, student, seed, "student", labels=labels, weights=weights.get(student)
                    )
                    add(run, "baseline")
    return Plan(runs, search_cells(job, weights))


def find_checksums(job: Job) -> dict[str, str]:
    """The sha256 of each pretrained model's weights as found here; `WeightsError` if some
    are missing."""
    where = job.weights_caches()
    found, missing = find_all(job.weights_sources(), where)
    if missing:
        raise WeightsError(missing_line(missing, where, "kdray weights JOB_FILE"))
    return {model: local.sha256 for model, local in found.items()}
