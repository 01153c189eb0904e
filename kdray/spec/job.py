"""The job file: one YAML file describes one grid.

`load_job(path, overrides)` reads the YAML, applies dotted `--set` overrides, and validates the
result against `Job`. Every problem is reported as a `JobError` whose `problems` are one line
each, naming the field path and what is allowed.
"""

from __future__ import annotations

import os
import types
import typing
from itertools import product
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from kdray.data import DATA_KINDS
from kdray.methods import METHODS, MethodParams
from kdray.tasks import DEFAULT_TASK, get_task, weights
from kdray.tasks.weights import (
    DEFAULT,
    IMAGENET,
    KEYWORDS,
    NONE,
    WeightsCaches,
    WeightsError,
    WeightsSource,
    normalise,
    setting_kind,
)

DEFAULT_SPLIT_NAMES = ("train", "valid", "test")


class JobError(Exception):
    """A job file that cannot be used; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# --- data -------------------------------------------------------------------------------------

DataConfig = Annotated[
    Union[tuple(kind.Config for kind in DATA_KINDS.values())],  # noqa: UP007
    Field(discriminator="kind"),
]


# --- training ---------------------------------------------------------------------------------


class TrainConfig(Strict):
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(16, ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-4, gt=0, le=10, description="above 10 every optimizer here diverges")
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd only")
    scheduler: Literal["none", "cosine"] = "none"
    augment: bool | list[dict[str, Any]] = Field(
        True,
        description="true: the default radiograph pipeline; false: none; or a list of "
        "albumentations transforms, e.g. [{name: HorizontalFlip, p: 0.5}]",
    )
    eval_batch_size: int = Field(256, ge=1)
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="bf16/fp16: autocast mixed precision (fp16 adds a GradScaler)"
    )
    channels_last: bool = Field(False, description="channels-last memory format (faster on GPUs)")
    prefetch_batches: int = Field(
        2,
        ge=0,
        le=64,
        description="training batches a background thread prepares ahead of the step "
        "(0: prepare each batch when the step asks for it)",
    )
    loader_workers: int = Field(
        0,
        ge=0,
        description="loader processes augmenting training batches (0: in the training process, "
        "prefetch_batches ahead); each sample's augmentation is then seeded by (seed, epoch, "
        "index), other views than with 0; keep it within resources.cpus_per_worker",
    )
    augment_on: Literal["device", "loader"] = Field(
        "device",
        description="device: batches travel as uint8 and the augmentations with a batched "
        "version (flips, Affine, RandomResizedCrop, RandomBrightnessContrast, GaussNoise) run "
        "per batch on the training device with the normalisation, seeded per sample by (seed, "
        "epoch, index), the same views for any loader_workers; loader: all of it in the loader "
        "with albumentations (the views of kdray before this setting)",
    )

    @field_validator("augment")
    @classmethod
    def _buildable_pipeline(cls, augment):
        from kdray.data.augment import build_transform

        if isinstance(augment, list):
            problems = []
            for i, step in enumerate(augment):
                try:
                    build_transform(step)
                except ValueError as exc:
                    problems.append(f"step {i}: {exc}")
            if problems:
                raise ValueError("; ".join(problems))
        return augment


class DistillConfig(Strict):
    temperature: float = Field(4.0, gt=0, le=1000)
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the KD term")
    kl_reduction: Literal["batchmean", "mean"] = Field(
        "batchmean",
        description="batchmean: sum over classes, mean over batch (Hinton, mdistiller); "
        "mean: element-wise mean, K times smaller (Yuan et al.'s code)",
    )
    teacher_outputs: Literal["cached", "online"] = Field(
        "cached",
        description="cached: each teacher scores its students' augmented views once "
        "(soft-label cache); online: the teacher runs on every student batch",
    )


class LabelBudgets(Strict):
    """Few-label settings, an axis of the whole grid: every run is trained once per budget."""

    fraction: list[float] | None = Field(
        None, description="share of each class's training labels kept, e.g. [0.1, 1.0]"
    )
    per_class: list[int] | None = Field(
        None, description="training labels kept per class, e.g. [10, 50]"
    )

    @model_validator(mode="after")
    def _one_kind(self) -> LabelBudgets:
        values = self.fraction if self.fraction is not None else self.per_class
        if (self.fraction is None) == (self.per_class is None):
            raise ValueError("give either fraction: [...] or per_class: [...], not both")
        if not values or len(set(values)) != len(values):
            raise ValueError(f"a list of distinct values, got {values}")
        if self.fraction is not None and not all(0 < f <= 1 for f in self.fraction):
            raise ValueError(f"fractions are in (0, 1], got {self.fraction}")
        if self.per_class is not None and not all(n >= 1 for n in self.per_class):
            raise ValueError(f"counts per class are at least 1, got {self.per_class}")
        return self

    def budgets(self) -> list[dict | None]:
        """One budget per setting; a fraction of 1 is every label (None)."""
        if self.fraction is not None:
            return [None if f == 1 else {"fraction": f} for f in self.fraction]
        return [{"per_class": n} for n in self.per_class]


STUDY_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
RESERVED_STUDY_NAMES = ("teachers", "baseline", "summary", "unfinished", "labels")  # exports
SELF_TEACHER = "self"

_method_params = tuple(method.Params for method in METHODS.values())
MethodConfig = (
    Annotated[Union[_method_params], Field(discriminator="name")]  # noqa: UP007
    if len(_method_params) > 1
    else _method_params[0]
)


def scalar_field(params_cls: type[BaseModel], key: str) -> bool:
    """Whether a method parameter holds one number or word (so a list of them is a sweep)."""
    field_info = params_cls.model_fields.get(key)
    if field_info is None or key == "name":
        return False
    annotation = field_info.annotation
    kinds = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else ()
    kinds = [k for k in kinds if k is not type(None)] or [annotation]
    return all(k in (int, float, str) or typing.get_origin(k) is Literal for k in kinds)


class Study(Strict):
    teachers: list[str | list[str]] = Field(
        default_factory=list,
        description="per entry, who teaches each student: a timm model; `self` (the student's "
        "own no-KD baseline run); or a list of models (an ensemble). Empty for teacher-free "
        "methods",
    )
    students: list[str] = Field(min_length=1)
    method: MethodConfig | None = Field(
        None, description="the distillation method and its settings (default: kd, Hinton)"
    )
    teacher_val_band: tuple[float, float] | None = Field(
        None, description="defective teachers: keep a teacher when its val accuracy is in [lo, hi]"
    )
    eval_every_steps: int | None = Field(
        None, ge=1, description="defective teachers: evaluate every N steps (default: auto)"
    )
    unlabelled: bool = Field(
        False,
        description="students also train on the unlabelled pool a label budget leaves "
        "(the method's unsupervised terms only there)",
    )
    sweep: dict[str, list[float | int | str]] = Field(
        default_factory=dict,
        description="method parameters given as lists in `method`: every combination is a "
        "setting, each trained for every student, teacher and seed",
    )

    @model_validator(mode="before")
    @classmethod
    def _lists_in_the_method_are_a_sweep(cls, data: Any) -> Any:
        """`method: {name: kd, temperature: [1, 4]}` sweeps temperature: the lists move to
        `sweep`, the method keeps each list's first value (so it validates as usual)."""
        if not isinstance(data, dict) or not isinstance(data.get("method"), dict):
            return data
        method = dict(data["method"])
        params_cls = getattr(METHODS.get(method.get("name")), "Params", None)
        if params_cls is None:
            return data
        swept = {
            key: value
            for key, value in method.items()
            if isinstance(value, list) and value and scalar_field(params_cls, key)
        }
        if not swept:
            return data
        method.update({key: values[0] for key, values in swept.items()})
        return {**data, "method": method, "sweep": {**data.get("sweep", {}), **swept}}

    @field_validator("teacher_val_band")
    @classmethod
    def _ordered_band(cls, band: tuple[float, float] | None) -> tuple[float, float] | None:
        if band is not None and not (0.0 <= band[0] < band[1] <= 1.0):
            raise ValueError("must be [low, high] with 0 <= low < high <= 1")
        return band

    def method_name(self) -> str:
        return self.method.name if self.method is not None else "kd"

    def settings(self) -> list[dict]:
        """Every combination of the swept parameters (`[{}]` without a sweep)."""
        keys = list(self.sweep)
        return [dict(zip(keys, combo, strict=True)) for combo in product(*self.sweep.values())]

    def teacher_groups(self) -> list[list[str]]:
        """Each entry of `teachers` as a list: one model, `self`, or an ensemble's models."""
        return [[t] if isinstance(t, str) else list(t) for t in self.teachers]

    def problems(self, name: str) -> list[str]:
        """What makes this study unusable, one line each (`name`: the study's key)."""
        method = METHODS[self.method_name()]
        where = f"studies.{name}"
        out = []
        if method.needs != "none" and not self.teachers:
            out.append(
                f"{where}.teachers: method {method.name} needs a teacher per student: a timm "
                "model, `self` (the student's own baseline run), or a list of models (ensemble)"
            )
        if method.needs == "none" and self.teachers:
            out.append(f"{where}.teachers: method {method.name} uses no teacher; remove them")
        for group in self.teacher_groups():
            if len(group) > 1 and not method.allows_ensemble:
                out.append(
                    f"{where}.teachers: {group}: method {method.name} takes one teacher per "
                    "student (its features are aligned stage by stage); use a logit method "
                    "(kd, dkd) for an ensemble"
                )
            if len(group) > 1 and (SELF_TEACHER in group or len(set(group)) != len(group)):
                out.append(
                    f"{where}.teachers: {group}: an ensemble lists distinct models, not self"
                )
            if not group:
                out.append(f"{where}.teachers: an empty ensemble")
        if self.teacher_val_band is not None and [SELF_TEACHER] in self.teacher_groups():
            out.append(
                f"{where}.teacher_val_band: a `self` teacher is the student's converged baseline; "
                "a band needs a model name"
            )
        if name == "defective" and self.teacher_val_band is None:
            out.append(f"{where}.teacher_val_band: required for defective KD, e.g. [0.50, 0.65]")
        if self.unlabelled and not method.uses_unlabelled:
            out.append(
                f"{where}.unlabelled: method {method.name} needs a label for every image; "
                f"use one that trains on unlabelled images ({_pool_methods()})"
            )
        if self.teacher_val_band is not None and not self.teachers:
            out.append(f"{where}.teacher_val_band: this study has no teacher to stop early")
        return out + self._sweep_problems(where, method)

    def _sweep_problems(self, where: str, method) -> list[str]:
        out = []
        for key, values in self.sweep.items():
            if key not in method.Params.model_fields or not scalar_field(method.Params, key):
                out.append(f"{where}.method.{key}: not a number or word {method.name} can sweep")
            elif len(set(map(str, values))) != len(values) or not values:
                out.append(f"{where}.method.{key}: a sweep lists distinct values, got {values}")
        if out:
            return out
        base = self.method.model_dump() if self.method is not None else {"name": method.name}
        for setting in self.settings():
            try:
                method.Params.model_validate({**base, **setting})
            except ValidationError as exc:
                for item in exc.errors():
                    key = ".".join(str(p) for p in item["loc"])
                    message = item["msg"].removeprefix("Value error, ")
                    value = setting.get(key)
                    out.append(f"{where}.method.{key}: {value!r} in the sweep: {message}")
        return list(dict.fromkeys(out))


def _pool_methods() -> str:
    return ", ".join(name for name, m in METHODS.items() if m.uses_unlabelled)


class Resources(Strict):
    workers_per_trial: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1, gt=0)
    gpus_per_worker: float = Field(0, ge=0)
    max_concurrent_trials: int = Field(2, ge=1)
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: cuda when the worker has a GPU, else cpu"
    )
    torch_threads: int | None = Field(
        None, ge=1, description="torch threads per worker (default: cpus_per_worker)"
    )
    runs_per_trial: int | Literal["auto"] = Field(
        "auto",
        description="runs trained one after another in one trial (one Ray Train start-up); "
        "auto: several when runs are short against that start-up (kdray.grid.packing)",
    )

    @field_validator("runs_per_trial")
    @classmethod
    def _at_least_one(cls, value: int | str) -> int | str:
        if value != "auto" and value < 1:
            raise ValueError("runs_per_trial is auto or at least 1")
        return value

    @model_validator(mode="after")
    def _gpu_device(self) -> Resources:
        if self.device == "cuda" and self.gpus_per_worker == 0:
            raise ValueError("device: cuda needs gpus_per_worker > 0")
        if 0 < self.gpus_per_worker < 1 and self.workers_per_trial > 1:
            raise ValueError(
                "fractional gpus_per_worker works for single-worker trials only (DDP ranks "
                "sharing a GPU fail in NCCL); use gpus_per_worker: 1 or workers_per_trial: 1"
            )
        return self


class WandbConfig(Strict):
    project: str = "kdray"
    entity: str | None = None
    mode: Literal["offline", "online", "disabled"] = Field(
        "offline", description="offline: files under each run folder, nothing uploaded"
    )
    tags: list[str] = Field(default_factory=list)


class MlflowConfig(Strict):
    tracking_uri: str | None = Field(
        None,
        description="the MLflow tracking server (e.g. http://mlflow.hospital.local:5000) or a "
        "store URI; default: sqlite:///<experiment folder>/mlflow/mlflow.db, nothing leaves "
        "the machine (MLFLOW_TRACKING_URI is not read: the job says where results go)",
    )
    experiment: str | None = Field(
        None, description="the MLflow experiment (default: the job's name)"
    )
    tags: dict[str, str] = Field(
        default_factory=dict, description="extra tags on the grid's run and every nested run"
    )


class Tracking(Strict):
    wandb: WandbConfig | None = None
    mlflow: MlflowConfig | None = Field(
        None,
        description="one MLflow run per grid, one nested run per kdray run ({} for the local "
        "default store)",
    )


class Faults(Strict):
    trial_retries: int = Field(2, ge=0, description="automatic retries of a failed trial")
    resource_wait_s: float = Field(
        1800,
        gt=0,
        description="how long a trial may wait for resources no node of the cluster has (a GPU "
        "type, a lost node not replaced) before the grid stops, saying what it waited for; "
        "30 min: Ray's autoscaler gives a cloud request 10 min and a new node 30 min to start",
    )


class Job(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=80)
    storage: str = Field("kdray-runs", pattern=r"\S", description="a folder for experiments")
    data: DataConfig = Field(default_factory=lambda: DATA_KINDS["synthetic"].Config())
    train: TrainConfig = Field(default_factory=TrainConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    studies: dict[str, Study] = Field(min_length=1)
    baseline: bool = True
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    labelled: LabelBudgets | None = Field(
        None, description="few labels: train every run once per label budget (default: all)"
    )
    pretrained: dict[str, str] = Field(
        default_factory=dict,
        description="the weights models start from: `imagenet` (every model: timm's default "
        "pretrained tag), or per model {default: imagenet | none, <model>: imagenet | none | "
        "<model>.<tag> | /path/to/weights.pth}; models without an entry start from scratch",
    )
    weights_cache: str | None = Field(
        None,
        description="the folder holding downloaded weights (laid out as HF_HOME and TORCH_HOME: "
        "<it>/hub, <it>/hub/checkpoints), e.g. a shared /mnt/kdray/weights; default: "
        "$KDRAY_WEIGHTS_CACHE, else huggingface_hub's and torch's caches (HF_HOME, TORCH_HOME)",
    )
    resources: Resources = Field(default_factory=Resources)
    faults: Faults = Field(default_factory=Faults)
    tracking: Tracking = Field(default_factory=Tracking)

    @field_validator("pretrained", mode="before")
    @classmethod
    def _as_mapping(cls, pretrained: Any) -> Any:
        """`pretrained: imagenet` is `{default: imagenet}`; absent, null or `none`: `{}`."""
        if pretrained is None:
            return {}
        if isinstance(pretrained, str):
            return {} if pretrained.strip().lower() == NONE else {DEFAULT: pretrained}
        if isinstance(pretrained, dict):
            return {model: NONE if value is None else value for model, value in pretrained.items()}
        return pretrained

    @field_validator("pretrained")
    @classmethod
    def _absolute_weights(cls, pretrained: dict[str, str]) -> dict[str, str]:
        # files become absolute: Ray workers do not share the CLI's working directory
        out = {model: normalise(value) for model, value in pretrained.items()}
        if out.get(DEFAULT, IMAGENET) not in KEYWORDS:
            raise ValueError(
                f"the `default` entry (every model) is imagenet or none, not "
                f"{pretrained[DEFAULT]!r}; name tags and files per model, e.g. "
                "{default: imagenet, resnet18: resnet18.tv_in1k, vgg11: /w/vgg11.pth}"
            )
        return out

    @field_validator("weights_cache")
    @classmethod
    def _absolute_cache(cls, folder: str | None) -> str | None:
        return str(Path(folder).expanduser().resolve()) if folder else None

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError("seeds must be distinct")
        if not all(0 <= s < 2**32 for s in seeds):  # numpy's generators take 0 .. 2**32 - 1
            raise ValueError(f"seeds are integers from 0 to {2**32 - 1}, got {seeds}")
        return seeds

    @field_validator("studies")
    @classmethod
    def _file_safe_study_names(cls, studies: dict[str, Study]) -> dict[str, Study]:
        import re

        for name in studies:
            if not re.match(STUDY_NAME, name) or name in RESERVED_STUDY_NAMES:
                raise ValueError(
                    f"{name!r}: a study name is letters, digits, '_', '.', '-' (it names the "
                    f"study's table file) and not one of {list(RESERVED_STUDY_NAMES)}"
                )
        return studies

    @model_validator(mode="after")
    def _usable_studies(self) -> Job:
        problems = [line for name, study in self.studies.items() for line in study.problems(name)]
        declared = self.data.task_type or self.data.declared_task()  # else known once data is read
        if declared is not None:
            problems += task_problems(self, declared)
        if self.labelled is None or self.label_budgets() == [None]:
            problems += [
                f"studies.{name}.unlabelled: the job keeps every training label, so there is "
                "no unlabelled pool; add e.g. `labelled: {fraction: [0.1, 1.0]}`"
                for name, study in self.studies.items()
                if study.unlabelled
            ]
        if problems:
            raise JobError(problems)
        return self

    def method_params(self, study_name: str, setting: dict | None = None) -> MethodParams:
        """The study's method parameters (for one `setting` of its sweep; default: the first);
        Hinton parameters it leaves unset come from `distill`."""
        study = self.studies[study_name]
        method = METHODS[study.method_name()]
        params = study.method if study.method is not None else method.Params()
        setting = study.settings()[0] if setting is None else setting
        inherited = {
            key: getattr(self.distill, key)
            for key in method.distill_defaults
            if key not in params.model_fields_set and key not in setting
        }
        return method.Params.model_validate({**params.model_dump(), **inherited, **setting})

    def label_budgets(self) -> list[dict | None]:
        """Every label budget of the grid (`[None]`: every label)."""
        return self.labelled.budgets() if self.labelled is not None else [None]

    def models(self) -> set[str]:
        return {
            m
            for s in self.studies.values()
            for m in (*(t for g in s.teacher_groups() for t in g), *s.students)
            if m != SELF_TEACHER
        }

    def weights_sources(self) -> dict[str, WeightsSource]:
        """Each pretrained model's weights (models that start from scratch are left out)."""
        return weights.sources(self.pretrained, self.models())

    def weights_caches(self) -> WeightsCaches:
        """Where this machine keeps downloaded weights, for this job."""
        return weights.caches(self.weights_cache)


def task_problems(job: Job, task: str) -> list[str]:
    """What the job asks that data of `task` (kdray.tasks) cannot give, one line each: a method
    defined for other targets (DKD's decoupling assumes mutually exclusive classes), a label
    budget per class where an image has no one class."""
    problems = []
    for name, study in job.studies.items():
        method = METHODS[study.method_name()]
        if task not in method.tasks:
            fits = [n for n, m in METHODS.items() if task in m.tasks]
            problems.append(
                f"studies.{name}.method: {method.name} is defined for {_tasks(method.tasks)} "
                f"data, and this data is {task.replace('_', '-')}; use one of {fits}"
            )
    if not get_task(task).one_class_per_image and job.labelled and job.labelled.per_class:
        problems.append(
            f"labelled.per_class: a {task.replace('_', '-')} image has no one class to count "
            "it under; give labelled.fraction instead"
        )
    return problems


def _tasks(names: tuple[str, ...]) -> str:
    return " or ".join(n.replace("_", "-") for n in names)


# --- loading ----------------------------------------------------------------------------------


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one `a.b.c=value` override; the value is parsed as YAML (`1`, `true`, `[1, 2]`)."""
    if "=" not in assignment:
        raise JobError([f"--set {assignment}: expected FIELD.PATH=VALUE, e.g. train.epochs=1"])
    path, _, text = assignment.partition("=")
    keys = [k for k in path.strip().split(".") if k]
    if not keys:
        raise JobError([f"--set {assignment}: empty field path"])
    try:
        value = read_yaml(text)
    except yaml.YAMLError as exc:
        raise JobError([f"--set {assignment}: value is not valid YAML ({exc})"]) from None
    node = raw
    for depth, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            where = ".".join(keys[: depth + 1])
            raise JobError([f"--set {assignment}: {where} is not a section"])
        node = child
    node[keys[-1]] = value


def _format_validation_error(error: ValidationError) -> list[str]:
    lines = []
    for item in error.errors():
        loc = ".".join(str(p) for p in item["loc"] if p not in DATA_KINDS)
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field (check the spelling; see the README's job file reference)"
        elif "input" in item and not isinstance(item["input"], dict | list):
            message = f"{message} (got {item['input']!r})"
        lines.append(f"{loc or '<job>'}: {message}")
    return lines


def parse_job(raw: Any, overrides: list[str] | tuple[str, ...] = ()) -> Job:
    if not isinstance(raw, dict):
        raise JobError(["<job>: the job file must be a YAML mapping (name:, data:, studies:, ...)"])
    for assignment in overrides:
        apply_override(raw, assignment)
    try:
        job = Job.model_validate(raw)
    except ValidationError as exc:
        raise JobError(_format_validation_error(exc)) from None
    problems = model_problems(job)
    if problems:
        raise JobError(problems)
    return job


def model_problems(job: Job) -> list[str]:
    """Checks that need timm or the file system: model names and local weight files. Names
    are checked against the data's task when the job declares it (else single-label: timm)."""
    task = get_task(job.data.task_type or job.data.declared_task() or DEFAULT_TASK)
    problems, checked = [], set()
    for name, study in job.studies.items():
        for role, models in (
            ("teachers", [t for group in study.teacher_groups() for t in group]),
            ("students", study.students),
        ):
            for model in models:
                if (model == SELF_TEACHER and role == "teachers") or model in checked:
                    continue  # a bad model is named once, where it first appears
                checked.add(model)
                problem = task.model_problem(model, job.data.image_size)
                if problem:
                    problems.append(f"studies.{name}.{role}: {problem}")
    return problems + weights_problems(job)


def weights_problems(job: Job) -> list[str]:
    """Entries of `pretrained` for no model, tags timm does not have, unusable files."""
    import timm

    from kdray.tasks.models import weights_problem

    problems = [
        f"pretrained.{model}: not a model of any study"
        for model in job.pretrained
        if model != DEFAULT and model not in job.models()
    ]
    for model, value in job.pretrained.items():
        if model not in job.models() and model != DEFAULT and setting_kind(value) == "file":
            problem = weights_problem(Path(value))  # a stranger's file: still say what is wrong
            problems += [f"pretrained.{model}: {problem}"] if problem else []
    for model in sorted(m for m in job.models() if timm.is_model(m)):  # others: said above
        try:
            source = weights.sources(job.pretrained, [model]).get(model)
        except WeightsError as exc:
            problems.append(str(exc))
            continue
        problem = weights_problem(Path(source.file)) if source and source.file else None
        if problem:
            problems.append(f"pretrained.{model}: {problem}")
    return problems


VIRTUAL_FILE_SYSTEMS = ("/proc", "/sys", "/dev")


def storage_problems(storage: str) -> list[str]:
    """Whether experiment folders can be created under `storage` (nothing is created here).
    Checked where the grid runs (`validate`, `run`), not by `submit`: a cluster's storage
    need not exist on the submitting machine."""
    path = Path(storage).expanduser().resolve()
    if any(path == Path(v) or Path(v) in path.parents for v in VIRTUAL_FILE_SYSTEMS):
        return [f"storage: {path} is in a virtual file system; give a folder on disk"]
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        return [f"storage: {existing} is a file, not a folder; give a folder for experiments"]
    if not os.access(existing, os.W_OK | os.X_OK):
        return [f"storage: {existing} is not writable; give a folder you can write to"]
    return []


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping: plain YAML keeps the last one, which
    silently drops a whole section written twice."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`, overridable
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (also on line {seen[key]}): YAML would keep only "
                    "the last one; merge them into one",
                    key_node.start_mark,
                )
            if isinstance(key, typing.Hashable):
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def read_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)


def load_job(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Job:
    path = Path(path)
    if path.is_dir():
        raise JobError([f"{path}: is a folder; give the job's YAML file"])
    if not path.is_file():
        raise JobError([f"{path}: no such job file"])
    try:
        raw = read_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise JobError(
            [f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8"]
        ) from None
    except yaml.YAMLError as exc:
        raise JobError([f"{path}: not valid YAML: {exc}".replace("\n", " ")]) from None
    return parse_job(raw, overrides)
