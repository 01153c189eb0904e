"""A study's `search:` block: which settings of its method (and of training) to search, how many
samples, the sampler, early stopping, and how the best sample is confirmed.

```yaml
search:
  space:                                   # the method's own parameter names, and lr, ...
    temperature: {loguniform: [1, 16]}
    alpha: {uniform: [0.1, 0.95]}
    lr: {loguniform: [1.0e-4, 1.0e-2]}
  samples: 16                              # or budget: 40 (epochs a cell may spend), or both
  algorithm: tpe                           # tpe | random | grid (Optuna's samplers)
  seed: 0
  early_stop: {rule: asha, grace_epochs: 2, reduction_factor: 3}   # asha | hyperband | none
```

The checks that need the method (a parameter it does not have, a range outside its bounds) are
`Study.problems`; this module holds the block's shape and the checks of the block alone.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from kdray.spec.base import Strict

# training settings a search may set per sample: the optimizer's, nothing that changes the data
# a run sees or how long it trains (the budget)
TRAIN_KEYS = ("lr", "weight_decay", "momentum")
DEFAULT_SAMPLES = 16
SIGNIFICANT_DIGITS = 3  # sampled floats are rounded: readable run ids, settings a person can type


class Uniform(Strict):
    uniform: tuple[float, float] = Field(description="[low, high], every value equally likely")

    @model_validator(mode="after")
    def _ordered(self) -> Uniform:
        _check_ordered(self.uniform)
        return self


class LogUniform(Strict):
    loguniform: tuple[float, float] = Field(
        description="[low, high], 0 < low: every order of magnitude equally likely"
    )

    @model_validator(mode="after")
    def _ordered_positive(self) -> LogUniform:
        _check_ordered(self.loguniform)
        if self.loguniform[0] <= 0:
            raise ValueError(f"loguniform needs 0 < low, got {list(self.loguniform)}")
        return self


class IntRange(Strict):
    whole: tuple[int, int] = Field(
        alias="int", description="[low, high], whole numbers, both ends included"
    )

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        _check_ordered(self.whole)
        return self


class Choice(Strict):
    choice: list[float | int | str] = Field(min_length=1, description="one of these values")

    @field_validator("choice", mode="before")
    @classmethod
    def _scalars(cls, value: object) -> object:
        # else one error line per type the item is not (float, int, str)
        for number, item in enumerate(value if isinstance(value, list) else []):
            if isinstance(item, bool) or not isinstance(item, int | float | str):
                shown = str(item).lower() if isinstance(item, bool) else repr(item)
                raise ValueError(f"choice lists numbers or words; item {number + 1} is {shown}")
        return value

    @model_validator(mode="after")
    def _distinct(self) -> Choice:
        if len(set(map(str, self.choice))) != len(self.choice):
            raise ValueError(f"choice lists distinct values, got {self.choice}")
        return self


DIMENSION_KINDS = ("uniform", "loguniform", "int", "choice")


def _dimension_kind(value) -> str | None:
    """Which kind a dimension is: its one key (`{uniform: [0, 1]}`), if it is one of them."""
    if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in DIMENSION_KINDS:
        return next(iter(value))
    if isinstance(value, Strict):
        return {Uniform: "uniform", LogUniform: "loguniform", IntRange: "int"}.get(
            type(value), "choice"
        )
    return None


Dimension = Annotated[
    Annotated[Uniform, Tag("uniform")]
    | Annotated[LogUniform, Tag("loguniform")]
    | Annotated[IntRange, Tag("int")]
    | Annotated[Choice, Tag("choice")],
    Discriminator(
        _dimension_kind,
        custom_error_type="dimension",
        custom_error_message="give one of {uniform: [lo, hi]}, {loguniform: [lo, hi]}, "
        "{int: [lo, hi]}, {choice: [...]}",
    ),
]


def _check_ordered(bounds: tuple) -> None:
    if not bounds[0] < bounds[1]:
        raise ValueError(f"a range is [low, high] with low < high, got {list(bounds)}")


def ends(dimension: Dimension) -> list:
    """The values a dimension can take at its extremes (every value of a choice)."""
    if isinstance(dimension, Choice):
        return list(dimension.choice)
    return list(next(iter(dimension.model_dump(by_alias=True).values())))


def grid_values(dimension: Dimension) -> list | None:
    """Every value of a dimension a grid can enumerate; None for a continuous range."""
    if isinstance(dimension, Choice):
        return list(dimension.choice)
    if isinstance(dimension, IntRange):
        return list(range(dimension.whole[0], dimension.whole[1] + 1))
    return None


def rounded(value):
    """A sampled value as runs record it: floats to `SIGNIFICANT_DIGITS` significant digits."""
    if not isinstance(value, float) or value == 0 or not math.isfinite(value):
        return value
    digits = SIGNIFICANT_DIGITS - 1 - math.floor(math.log10(abs(value)))
    return round(value, digits)


class EarlyStop(Strict):
    rule: Literal["asha", "hyperband", "none"] = Field(
        "asha",
        description="asha: Optuna's asynchronous successive halving; hyperband: its Hyperband "
        "(several halving brackets); none: every sample trains every epoch",
    )
    grace_epochs: int = Field(1, ge=1, description="epochs every sample trains before a cut")
    reduction_factor: int = Field(
        3, ge=2, description="each rung keeps about 1 in reduction_factor samples"
    )


class Search(Strict):
    space: dict[str, Dimension] = Field(
        min_length=1,
        description="parameter -> {uniform: [lo, hi]} | {loguniform: [lo, hi]} | "
        "{int: [lo, hi]} | {choice: [...]}; the method's parameter names, and "
        + ", ".join(TRAIN_KEYS),
    )
    samples: int | None = Field(
        None,
        ge=1,
        le=10000,
        description="settings tried per cell at most (default: 16, or as many as `budget` allows)",
    )
    budget: int | None = Field(
        None,
        ge=1,
        description="epochs a cell's samples may train in all (confirmations on other seeds "
        "not counted): the same budget for every searched study compares methods at equal "
        "compute; a sample is drawn only while the epochs it and the samples in flight could "
        "still train fit",
    )
    algorithm: Literal["tpe", "random", "grid"] = Field(
        "tpe", description="Optuna's TPESampler, RandomSampler or GridSampler"
    )
    seed: int = Field(0, ge=0, description="the sampler's seed: the same job, the same samples")
    early_stop: EarlyStop = Field(default_factory=EarlyStop)
    parallel: int = Field(
        4,
        ge=1,
        le=256,
        description="samples of one cell in flight at once; sample k is drawn once samples "
        "up to k - parallel have ended, so the sampler sees the same history whatever the "
        "cluster's size (part of what makes a search repeatable)",
    )

    @model_validator(mode="before")
    @classmethod
    def _early_stop_by_name(cls, data):
        """`early_stop: none` (or `asha`, `hyperband`) for the rule with its defaults."""
        if isinstance(data, dict) and isinstance(data.get("early_stop"), str):
            return {**data, "early_stop": {"rule": data["early_stop"]}}
        return data

    def most_samples(self, epochs: int) -> int:
        """The most samples a cell can draw: `samples`, else as many as the budget allows
        (each stopped at its first rung), else 16."""
        if self.samples is not None:
            return self.samples
        if self.budget is None:  # a finite space: no more samples than it has settings
            return min(DEFAULT_SAMPLES, self.grid_size() or DEFAULT_SAMPLES)
        fewest = epochs if self.early_stop.rule == "none" else self.early_stop.grace_epochs
        limit = self.budget // fewest
        size = self.grid_size()
        return min(limit, size) if size else limit

    def grid_size(self) -> int | None:
        """How many points a grid over the space has; None when some range is continuous."""
        sizes = [grid_values(d) for d in self.space.values()]
        if any(values is None for values in sizes):
            return None
        return math.prod(len(values) for values in sizes)

    def problems(self, where: str, epochs: int) -> list[str]:
        """What the block alone makes unusable (`where`: `studies.<name>.search`)."""
        out = []
        size = self.grid_size()
        if self.algorithm == "grid":
            if size is None:
                out.append(
                    f"{where}.algorithm: grid enumerates values: give every parameter as "
                    "{choice: [...]} or {int: [lo, hi]}, or use tpe or random"
                )
            elif self.samples is not None and self.samples > size:
                out.append(f"{where}.samples: {self.samples} is more than the grid's {size} points")
        elif size is not None and self.samples is not None and self.samples > size:
            out.append(
                f"{where}.samples: {self.samples} is more than the {size} settings "
                f"the space holds ({self.algorithm} would draw some again); lower samples, or "
                "use algorithm: grid to try each once"
            )
        if self.budget is not None and self.budget < epochs:
            out.append(
                f"{where}.budget: {self.budget} epochs is less than one sample trained to "
                f"the end (train.epochs: {epochs}); raise it to at least {epochs}"
            )
        stop = self.early_stop
        if stop.rule != "none" and stop.grace_epochs >= epochs:
            out.append(
                f"{where}.early_stop.grace_epochs: {stop.grace_epochs} is not below "
                f"train.epochs ({epochs}): nothing could be stopped; lower it, or "
                "early_stop: none"
            )
        return out

    def cell_budget(self, epochs: int) -> int:
        """The most epochs a cell's samples can train: `budget`, or every sample to the end."""
        full = self.most_samples(epochs) * epochs
        return full if self.budget is None else min(self.budget, full)
