"""A study of the job file: who teaches whom (students, teachers: a model, `self`, an ensemble),
how a teacher is trained (a defective band), the method and its sweep."""

from __future__ import annotations

import types
import typing
from itertools import product
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from kdray.methods import METHODS
from kdray.spec.base import Strict
from kdray.spec.search import TRAIN_KEYS, Search, ends

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
    students: list[str] = Field(
        min_length=1, description="timm models (or segmenters) taught by each teacher entry"
    )
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
    search: Search | None = Field(
        None,
        description="search the method's settings instead of listing them: samples trained on "
        "the first seed with early stopping, the best on validation confirmed on every seed",
    )

    @field_validator("method", mode="before")
    @classmethod
    def _method_by_name_alone(cls, method: Any) -> Any:
        if isinstance(method, str):
            raise ValueError(
                f"write the method as a mapping, {{name: {method}}} (with its settings)"
            )
        return method

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
        return out + self._sweep_problems(where, method) + self._search_problems(where, method)

    def _search_problems(self, where: str, method) -> list[str]:
        """Parameters the method does not have, ranges outside its own bounds."""
        if self.search is None:
            return []
        if self.sweep:
            return [
                f"{where}.search: this study also sweeps {sorted(self.sweep)} (lists in its "
                "method); give those values in search.space as {choice: [...]} instead"
            ]
        out = []
        base = self.method.model_dump() if self.method is not None else {"name": method.name}
        searchable = [k for k in method.Params.model_fields if scalar_field(method.Params, k)]
        for key, dimension in self.search.space.items():
            where_key = f"{where}.search.space.{key}"
            if key in TRAIN_KEYS:
                continue  # checked against TrainConfig by the job
            if key not in searchable:
                out.append(
                    f"{where_key}: not a setting of {method.name} ({', '.join(searchable)}) "
                    f"or of training ({', '.join(TRAIN_KEYS)})"
                )
                continue
            for value in ends(dimension):
                try:
                    method.Params.model_validate({**base, key: value})
                except ValidationError as exc:
                    message = exc.errors()[0]["msg"].removeprefix("Value error, ")
                    out.append(
                        f"{where_key}: {method.name} does not take {key} {value!r}: {message}"
                    )
        return out

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
