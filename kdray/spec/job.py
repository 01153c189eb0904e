"""The job file's schema: one YAML file describes one grid (`Job`), its sections validated with
pydantic; its studies in `kdray.spec.study`, reading the file in `kdray.spec.load`, checks that
need timm or the file system in `kdray.spec.checks`. Every problem is a `JobError` whose
`problems` are one line each, naming the field path and what is allowed.
"""

from __future__ import annotations

from itertools import product
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from kdray.data import DATA_KINDS
from kdray.data.budgets import budget_label
from kdray.methods import METHODS, MethodParams
from kdray.spec.base import JobError, Strict
from kdray.spec.search import TRAIN_KEYS, Search, ends
from kdray.spec.stages import stage_choice_problem
from kdray.spec.study import RESERVED_STUDY_NAMES, SELF_TEACHER, STUDY_NAME, Study
from kdray.tasks import get_task, weights
from kdray.tasks.weights import (
    DEFAULT,
    IMAGENET,
    KEYWORDS,
    NONE,
    WeightsCaches,
    WeightsSource,
    normalise,
)

DEFAULT_SPLIT_NAMES = ("train", "valid", "test")


# --- data -------------------------------------------------------------------------------------

DataConfig = Annotated[
    Union[tuple(kind.Config for kind in DATA_KINDS.values())],  # noqa: UP007
    Field(discriminator="kind"),
]


# --- training ---------------------------------------------------------------------------------


class TrainConfig(Strict):
    epochs: int = Field(20, ge=1, description="training epochs of every run")
    batch_size: int = Field(16, ge=1, description="training batch size per worker")
    optimizer: Literal["adam", "adamw", "sgd"] = Field("adam", description="the torch optimizer")
    lr: float = Field(1e-4, gt=0, le=10, description="above 10 every optimizer here diverges")
    weight_decay: float = Field(0.0, ge=0, description="the optimizer's weight decay")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd only")
    scheduler: Literal["none", "cosine"] = Field(
        "none", description="learning-rate schedule: none (constant) or cosine annealing to 0"
    )
    augment: bool | list[dict[str, Any]] = Field(
        True,
        description="true: the default radiograph pipeline; false: none; or a list of "
        "albumentations transforms, e.g. [{name: HorizontalFlip, p: 0.5}]",
    )
    eval_batch_size: int = Field(
        256, ge=1, description="batch size of evaluation, soft-label replay and throughput"
    )
    f1_threshold: Literal["validation"] | float = Field(
        "validation",
        description="multi-label F1's decision threshold: validation (each label's own, the one "
        "maximising its F1 on the validation split, applied to every split) or one fixed "
        "probability for every label, e.g. 0.5 (rare labels are then rarely predicted)",
    )
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

    @field_validator("f1_threshold", mode="before")
    @classmethod
    def _validation_or_a_probability(cls, value: object) -> object:
        """One line for any other value (not one per branch of the union), `true` included."""
        if value == "validation" or (type(value) in (int, float) and 0 < value < 1):
            return value
        raise ValueError("f1_threshold is validation or a probability between 0 and 1, e.g. 0.5")

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
    temperature: float = Field(4.0, gt=0, le=1000, description="softmax temperature T")
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

    @field_validator("fraction")
    @classmethod
    def _apart(cls, fractions: list[float] | None) -> list[float] | None:
        # tables group runs by their budget's label: two budgets labelled alike would be one
        # cell, averaged as if they were seeds
        seen: dict[str, float] = {}
        for f in dict.fromkeys(fractions or []):
            label = budget_label({"fraction": f} if f != 1 else None)
            if label in seen:
                raise ValueError(
                    f"{seen[label]} and {f} are both labelled {label} in the tables and run ids, "
                    "which would merge them into one cell; drop one or set them further apart"
                )
            seen[label] = f
        return fractions

    @model_validator(mode="after")
    def _one_kind(self) -> LabelBudgets:
        values = self.fraction if self.fraction is not None else self.per_class
        if self.fraction is None and self.per_class is None:
            raise ValueError("give fraction: [...] or per_class: [...], e.g. {fraction: [0.1]}")
        if self.fraction is not None and self.per_class is not None:
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


class Resources(Strict):
    workers_per_trial: int = Field(1, ge=1, description=">1: data-parallel (DDP) in a trial")
    cpus_per_worker: float = Field(1, gt=0, description="CPUs Ray reserves per worker")
    gpus_per_worker: float = Field(
        0, ge=0, description="GPUs per worker; below 1 (0.5): single-worker trials share a GPU"
    )
    max_concurrent_trials: int = Field(2, ge=1, description="trials running at once")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: cuda when the worker has a GPU, else cpu"
    )
    torch_threads: int | None = Field(
        None, ge=1, description="torch threads per worker (default: cpus_per_worker)"
    )
    runs_per_trial: int | Literal["auto"] = Field(
        "auto",
        description="runs trained one after another in one trial (one Ray Train start-up), "
        "at most; auto: several when runs are short against that start-up, and a trial then "
        "takes ready runs without a limit (kdray.grid.packing)",
    )

    @field_validator("runs_per_trial", mode="before")
    @classmethod
    def _auto_or_a_count(cls, value: object) -> object:
        """One line for any other value (not one per branch of the union), `true` included."""
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if value == "auto" or (type(value) is int and value >= 1):
            return value
        raise ValueError("runs_per_trial is auto or a whole number of at least 1")

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
    project: str = Field("kdray", description="the W&B project")
    entity: str | None = Field(None, description="the W&B team or user (default: yours)")
    mode: Literal["offline", "online", "disabled"] = Field(
        "offline", description="offline: files under each run folder, nothing uploaded"
    )
    tags: list[str] = Field(default_factory=list, description="tags on every W&B run")


# tracking stores MLflow 3 opens ("postgresql+psycopg2://" counts as postgresql)
MLFLOW_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks")


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

    @field_validator("tracking_uri")
    @classmethod
    def _a_store_mlflow_keeps(cls, uri: str | None) -> str | None:
        """What MLflow 3 would refuse at the first run, refused before anything trains."""
        if uri is None:
            return None
        scheme = uri.split("://")[0].split("+")[0] if "://" in uri else None
        if not uri.strip():
            raise ValueError("is empty: leave it out for the experiment's own SQLite store")
        if scheme is None or scheme == "file":
            raise ValueError(
                "is a file store, which MLflow 3 no longer opens: give a server "
                "(http://host:5000) or a database (sqlite:////abs/path/mlflow.db), or leave "
                "it out for the experiment's own SQLite store"
            )
        if scheme not in MLFLOW_SCHEMES:
            raise ValueError(
                f"MLflow has no {scheme}:// store; use one of "
                + ", ".join(f"{s}://" for s in MLFLOW_SCHEMES)
            )
        return uri

    tags: dict[str, str] = Field(
        default_factory=dict, description="extra tags on the grid's run and every nested run"
    )


class Tracking(Strict):
    wandb: WandbConfig | None = Field(
        None, description="one W&B run per kdray run, grouped by the job's name"
    )
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


BASELINE = "baseline"  # the searched baseline's name where a study's name would be


class SearchedBaseline(Strict):
    search: Search = Field(
        description="the baseline's search: a space over lr, weight_decay and momentum only "
        "(it has no method); its best setting on validation is confirmed on every seed and is "
        "the baseline of the tables"
    )


class Job(Strict):
    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        max_length=80,
        description="the experiment's name: its folder is <storage>/<name>/",
    )
    storage: str = Field(
        "kdray-runs",
        pattern=r"\S",
        description="a folder for experiments; on a cluster, a path every node sees (NFS)",
    )
    data: DataConfig = Field(
        default_factory=lambda: DATA_KINDS["synthetic"].Config(),
        description="the data set: its kind and that kind's fields",
    )
    train: TrainConfig = Field(
        default_factory=TrainConfig, description="training settings shared by every run"
    )
    distill: DistillConfig = Field(
        default_factory=DistillConfig,
        description="Hinton KD's defaults (studies without a method, or leaving them unset)",
    )
    studies: dict[str, Study] = Field(
        min_length=1, description="the studies, named freely: each name names its table"
    )
    baseline: bool | SearchedBaseline = Field(
        True,
        description="also train each student without KD; `{search: {...}}`: search its "
        "training settings too, so that the KD gain of a study that searches lr (or "
        "weight_decay, momentum) compares tuned with tuned",
    )
    seeds: list[int] = Field(
        default_factory=lambda: [0], min_length=1, description="every run is trained once per seed"
    )
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
    resources: Resources = Field(
        default_factory=Resources, description="what each trial asks of Ray"
    )
    faults: Faults = Field(default_factory=Faults, description="retries and waits")
    tracking: Tracking = Field(
        default_factory=Tracking, description="W&B and MLflow logging (default: none)"
    )

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
    def _usable_studies(self, info: ValidationInfo) -> Job:
        problems = [line for name, study in self.studies.items() for line in study.problems(name)]
        problems += self._search_problems()
        declared = self.data.task_type or self.data.declared_task()  # else known once data is read
        misfit = self.data.task_type_problem()
        if misfit is not None:  # named first: what the methods and models are checked against
            problems.insert(0, misfit)
        elif declared is not None and not (info.context or {}).get(STORED):
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

    def _search_problems(self) -> list[str]:
        """Search blocks checked against the training settings they search or stop early."""
        out = []
        searches = {f"studies.{n}.search": s.search for n, s in self.studies.items()}
        searches[f"{BASELINE}.search"] = self.baseline_search
        for where, search in searches.items():
            if search is None:
                continue
            out += search.problems(where, self.train.epochs)
            for key in search.space:
                if key in TRAIN_KEYS:
                    out += self._train_range_problems(f"{where}.space.{key}", key, search)
                elif where.startswith(BASELINE):
                    out.append(
                        f"{where}.space.{key}: the baseline has no method; it can search "
                        + ", ".join(TRAIN_KEYS)
                    )
        return out

    def _train_range_problems(self, where: str, key: str, search: Search) -> list[str]:
        out = []
        for value in ends(search.space[key]):
            try:
                TrainConfig.model_validate({**self.train.model_dump(), key: value})
            except ValidationError as exc:
                message = exc.errors()[0]["msg"].removeprefix("Value error, ")
                out.append(f"{where}: train.{key} cannot be {value!r}: {message}")
        return out

    @property
    def baseline_search(self) -> Search | None:
        """The baseline's search, when it is searched."""
        return self.baseline.search if isinstance(self.baseline, SearchedBaseline) else None

    def search_of(self, study: str) -> Search | None:
        """A searched cell's search: its study's, or the baseline's (`BASELINE`)."""
        return self.baseline_search if study == BASELINE else self.studies[study].search

    def train_for(self, overrides: dict | None) -> Job:
        """This job with a run's searched training settings (`RunSpec.train`) applied."""
        if not overrides:
            return self
        return self.model_copy(update={"train": self.train.model_copy(update=overrides)})

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


# validation context of a job read back from its experiment folder (`Experiment.job`) in a
# grid's light processes: the checks against every task's models and methods are skipped (they
# import timm and MONAI, ~5 s of a core; the job passed them when its experiment was made)
STORED = "stored"


def task_problems(job: Job, task: str) -> list[str]:
    """What the job asks that data of `task` (kdray.tasks) cannot give, one line each: a task or
    method not defined at the data's spatial rank (volumes), a method defined for other
    targets (DKD's decoupling assumes mutually exclusive classes), a label budget per class
    where an image has no one class; then a feature method's stages past the aligned pairs."""
    rank = job.data.spatial_rank
    if rank not in get_task(task).ranks:
        return [
            f"data: {job.data.kind} holds {rank}D {task.replace('_', '-')} data, and kdray "
            f"trains {task.replace('_', '-')} on {_ranks(get_task(task).ranks)} data only"
        ]
    problems = []
    if rank == 3:
        problems += volume_problems(job)
    elif getattr(job.data, "image_size", None):
        from kdray.data.augment import augment_problems

        problems += augment_problems(job.train.augment, job.data.image_size, job.data.channels)
    for name, study in job.studies.items():
        method = METHODS[study.method_name()]
        if rank not in method.ranks and task in method.tasks:
            fits = [n for n, m in METHODS.items() if task in m.tasks and rank in m.ranks]
            problems.append(
                f"studies.{name}.method: {method.name} is written for {_ranks(method.ranks)} "
                f"data, and this data is {rank}D; use one of {fits}"
            )
        elif task not in method.tasks:
            fits = [n for n, m in METHODS.items() if task in m.tasks and rank in m.ranks]
            problems.append(
                f"studies.{name}.method: {method.name} is defined for {_tasks(method.tasks)} "
                f"data, and this data is {task.replace('_', '-')}; use one of {fits}"
            )
    if job.train.f1_threshold != "validation" and task != "multi_label":
        problems.append(
            f"train.f1_threshold: F1 thresholds are for multi-label data, and this data is "
            f"{task.replace('_', '-')}; drop train.f1_threshold"
        )
    if not get_task(task).one_class_per_image and job.labelled and job.labelled.per_class:
        problems.append(
            f"labelled.per_class: a {task.replace('_', '-')} image has no one class to count "
            "it under; give labelled.fraction instead"
        )
    return problems or stage_problems(job, task)  # models fit the data: count their stages


def _chooses_stages(params: MethodParams) -> bool:
    """Whether a feature method's settings name stages (`stages`, FitNets' `stage`): only then
    are the models built to count their pairs (timm's import, ~2 s, on the driver)."""
    return any(getattr(params, key, None) is not None for key in ("stages", "stage"))


def stage_problems(job: Job, task: str) -> list[str]:
    """One line per feature-method study whose stage settings (any sweep setting) do not fit
    the aligned stage pairs of one of its students and single-model teachers (`self`: the
    student itself; ensembles are refused for feature methods elsewhere)."""
    problems: list[str] = []
    for name, study in job.studies.items():
        method = METHODS[study.method_name()]
        if method.needs != "features":
            continue
        teachers = [group[0] for group in study.teacher_groups() if len(group) == 1]
        for setting, student, teacher in product(study.settings(), study.students, teachers):
            params = job.method_params(name, setting)
            if not _chooses_stages(params):  # the default pairs every stage there is
                continue
            teacher = student if teacher == SELF_TEACHER else teacher
            problem = stage_choice_problem(
                method, params, student, teacher, task,
                job.data.spatial_rank, getattr(job.data, "channels", 1),
            )  # fmt: skip
            line = f"studies.{name}.method.{problem}"
            problems += [line] if problem and line not in problems else []
    return problems


def volume_problems(job: Job) -> list[str]:
    """Settings written for images that volumes do not take, one line each."""
    problems = []
    if job.labelled is not None:
        problems.append("labelled: label budgets are for 2D data; drop labelled for volumes")
    if isinstance(job.train.augment, list):
        problems.append(
            "train.augment: a list of albumentations steps is for 2D images; volumes take "
            "true (patches flipped per axis) or false"
        )
    if job.train.channels_last:
        problems.append("train.channels_last: 2D layouts only; set it false for volumes")
    if getattr(job.data, "patch_augment", None) is not None and job.train.augment is not True:
        problems.append(
            "data.patch_augment: augments after train.augment's flips, which are off; set "
            "train.augment: true or drop data.patch_augment"
        )
    return problems


def _ranks(ranks: tuple[int, ...]) -> str:
    return " or ".join(f"{r}D" for r in ranks)


def _tasks(names: tuple[str, ...]) -> str:
    return " or ".join(n.replace("_", "-") for n in names)
