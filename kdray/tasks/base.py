"""The task contract: what a target is and everything that depends on it.

A task is one small module in this package, registered by name like the methods. It says:
- what a target is: one class index per image (single-label), a 0/1 row of labels per image
  (multi-label), a mask of class indices (segmentation: `pixel_targets`, so the data cache
  resizes targets with nearest neighbour and augmentations move them with their image);
  `UNLABELLED` marks a target nobody may read (a label budget's pool image, an uncertain or
  missing label, a pixel without ground truth);
- how a model for it is built and which names are models of it (`create_model`,
  `model_problem`; timm classifiers for classification, smp segmenters for segmentation);
- its supervised loss (`supervised_loss`), what a prediction is (`probabilities`), what
  evaluation keeps of a batch (`prediction`: the probabilities, or a segmenter's mask) and the
  decision a prediction makes (`decisions`: a class, labels at 0.5, a mask);
- the distribution a teacher hands its student (`log_probs`: dim 1 holds the outcomes, so KL
  divergences and ensembles are written once for every task) and the shape of a teacher's cached
  output per image (`output_shape`);
- its metrics over a whole split (`metrics`, `report`) and the **primary metric** (`primary`):
  the one number that cells, selection on validation, paired statistics, the frontier and the
  summary use;
- the **spatial ranks** its data may have (`ranks`): 2 (images) and, where the task has 3D
  models, 3 (volumes: MONAI networks, `kdray.tasks.volume_models`). One task serves both: the
  rank picks the model family (`create_model(..., rank=3)`; `model_problem` given a volume's
  patch shape) and a volume split's metrics take each volume's spacing (`metrics(...,
  spacings=...)`, in mm).
Methods declare which tasks and ranks they support (`Method.tasks`, `Method.ranks`); the data
says which task and rank it is (`kdray.data`), or the job's `data.task_type`.
"""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

UNLABELLED = -1  # a target (or one label of a multi-label target) nobody may read

TASKS: dict[str, Task] = {}


class Task(ABC):
    """Base of every task; see the module docstring for the contract."""

    name: ClassVar[str]
    primary: ClassVar[str]  # the primary metric's key in `metrics` (`acc`, `auroc`)
    primary_title: ClassVar[str]  # how tables name it ("accuracy", "mean AUROC")
    outputs: ClassVar[str]  # what one output means, for the README and errors ("classes")
    loss_name: ClassVar[str]  # the supervised loss's term in epochs.parquet (`loss_ce`)
    #: a target is a map over the image's pixels (a mask), moved and resized with its image
    pixel_targets: ClassVar[bool] = False
    #: every image has exactly one class (label budgets may count images per class)
    one_class_per_image: ClassVar[bool] = False
    #: the spatial ranks of the data it is defined on: 2 (images), 3 (volumes)
    ranks: ClassVar[tuple[int, ...]] = (2,)

    @abstractmethod
    def create_model(
        self,
        name: str,
        num_classes: int,
        channels: int,
        weights=None,
        rank: int = 2,
        image_size: int | None = None,
    ) -> nn.Module:
        """A model for this task by name, `num_classes` outputs, `channels` input channels,
        for inputs of spatial rank `rank` (3: a MONAI network for volumes); `image_size`: the
        images' side, for a model built for one input size (a ViT)."""

    def model_problem(self, name: str, image_size: int | tuple[int, ...]) -> str | None:
        """Why `name` is no model of this task for `image_size` pixel images (a tuple: a
        volume's training patch), or None."""
        from kdray.tasks.models import classifier_problem

        return classifier_problem(name, image_size if isinstance(image_size, int) else None)

    @abstractmethod
    def supervised_loss(
        self, logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The loss on the labelled targets of a batch (0, keeping the graph, when there are
        none); `weight`: one weight per class or label (class-balanced training)."""

    @abstractmethod
    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """What a prediction is: per-class (softmax) or per-label (sigmoid) probabilities."""

    def prediction(self, logits: torch.Tensor) -> torch.Tensor:
        """What evaluation keeps of a batch's outputs (`metrics`' input): the probabilities."""
        return self.probabilities(logits)

    @abstractmethod
    def decisions(self, probs: torch.Tensor) -> torch.Tensor:
        """The decision each prediction makes (a class, each label at 0.5, a mask): what two
        runtimes of one model must agree on (`kdray.export.onnx`)."""

    @abstractmethod
    def log_probs(self, logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """The output distribution at `temperature`, its outcomes along dim 1 (summing to one
        there): what KD compares between teacher and student."""

    @abstractmethod
    def item_weights(
        self, weight: torch.Tensor, targets: torch.Tensor, teacher_log_probs: torch.Tensor
    ) -> torch.Tensor:
        """Per-class weights spread over the items of `log_probs` (dim 1 summed out): an image
        its class's weight (the teacher's class when unlabelled), a label its own weight."""

    @abstractmethod
    def correct(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(right, counted): the training accuracy's numerator and denominator for a batch."""

    @abstractmethod
    def class_counts(self, targets: np.ndarray, num_classes: int) -> tuple[int, ...]:
        """Labelled training images per class, or positives per label (class weights)."""

    @abstractmethod
    def count_line(self, targets: np.ndarray, names: list[str], samples: str = "images") -> str:
        """A split's targets in one line for people: images (or `samples`: volumes) per class,
        positives per label."""

    def train_problems(self, targets, names: list[str], samples: str = "images") -> list[str]:
        """Why the train split's targets leave nothing to learn, one line each (none: fine)."""
        return []

    @abstractmethod
    def no_skill(self, targets: np.ndarray, names: list[str]) -> tuple[float, str]:
        """The primary metric a model that learned nothing scores on `targets`, and what such
        a model does (a defective teacher's band should start above it)."""

    @abstractmethod
    def metrics(
        self, probs: np.ndarray, targets: np.ndarray, num_classes: int | None = None
    ) -> dict[str, float | None]:
        """Every metric of a whole split, the primary one included, from `prediction`s;
        `num_classes` where the predictions do not show it (a segmenter's masks)."""

    @abstractmethod
    def report(self, probs: np.ndarray, targets: np.ndarray, names: list[str]) -> dict:
        """The per-class or per-label detail of a split (`<split>_report` in a summary)."""

    def chosen_on_validation(
        self, probs: np.ndarray, targets: np.ndarray, fixed_threshold: float | None = None
    ) -> dict:
        """What the task picks on the validation split alone and applies to every split, as
        keyword arguments of `metrics` and `report` (multi-label: each label's threshold, or
        `fixed_threshold` for all where the job asks for one); nothing for tasks that pick
        nothing."""
        return {}

    def group_metrics(self, probs: np.ndarray, targets: np.ndarray, groups, category) -> dict:
        """Metrics over groups of images (MURA's studies), where the task defines them."""
        return {}

    def output_shape(self, num_classes: int, image_size: int | tuple[int, ...]) -> tuple[int, ...]:
        """The shape of one image's (a tuple `image_size`: one volume patch's) output: what a
        teacher's soft-label cache stores."""
        return (num_classes,)

    def primary_score(
        self, probs: np.ndarray, targets: np.ndarray, num_classes: int | None = None
    ) -> float:
        """The primary metric alone (validation during training, defective teachers' band)."""
        value = self.metrics(probs, targets, num_classes)[self.primary]
        return float("nan") if value is None else float(value)


def register(task_cls: type[Task]) -> type[Task]:
    """Class decorator: make a task available by its name."""
    if task_cls.name in TASKS:
        raise ValueError(f"task {task_cls.name!r} is registered twice")
    TASKS[task_cls.name] = task_cls()
    return task_cls


def get_task(name: str) -> Task:
    load_tasks()
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known: {sorted(TASKS)}") from None


def task_names() -> list[str]:
    load_tasks()
    return sorted(TASKS)


_LOADED: list[bool] = []  # every task module imported (`load_tasks`)


def load_tasks() -> None:
    """Import every module of this package once: each task registers itself. Done on first
    use, not at import, so that what only needs the target conventions (the job schema, the
    data kinds) does not load every task's metrics (scikit-learn). A task module imported by
    name before (its registry entry alone) does not count as all of them."""
    if _LOADED:
        return
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        importlib.import_module(f"{__package__}.{module.name}")
    _LOADED.append(True)
