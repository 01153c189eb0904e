"""Feature methods' stage choices, checked before any run starts: a student and its teacher are
built on the meta device (no memory, no time) and their stages paired as the worker pairs them
(`kdray.methods.features.aligned_pairs`), so an index past the aligned pairs is refused by
`validate` and `run` in one line instead of failing once the run has started."""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn

from kdray.methods import Method, MethodParams
from kdray.methods.features import aligned_pairs
from kdray.tasks import get_task


def stage_choice_problem(
    method: type[Method],
    params: MethodParams,
    student: str,
    teacher: str,
    task: str,
    rank: int,
    channels: int,
) -> str | None:
    """Why `params` choose stages the pair does not have, naming the method's field without
    the method (`stages 7: the two networks have 5 aligned stages (0..4) (student ...)`), or
    None (also when a model cannot be built here: the run says what is wrong)."""
    pairs = _pairs(student, teacher, task, rank, channels)
    if pairs is None:
        return None
    try:
        method.feature_stages(params, len(pairs), tuple(part for _, _, part in pairs))
    except ValueError as exc:
        field = str(exc).removeprefix(f"{method.name}.")
        return f"{field} (student {student}, teacher {teacher})"
    return None


@lru_cache(maxsize=64)
def _pairs(student: str, teacher: str, task: str, rank: int, channels: int) -> list | None:
    s_model = meta_model(student, task, rank, channels)
    t_model = meta_model(teacher, task, rank, channels)
    if not (_has_stages(s_model) and _has_stages(t_model)):
        return None  # a model without stages: the run says so in its own line
    return aligned_pairs(s_model, t_model)


@lru_cache(maxsize=32)
def meta_model(name: str, task: str, rank: int, channels: int) -> nn.Module | None:
    """The model `name` without weights on the meta device, or None where it cannot be built
    there."""
    try:
        with torch.device("meta"):
            return get_task(task).create_model(name, 2, channels, rank=rank)
    except (RuntimeError, ValueError, NotImplementedError, TypeError):
        return None


def _has_stages(model: nn.Module | None) -> bool:
    return model is not None and bool(getattr(model, "feature_info", None))
