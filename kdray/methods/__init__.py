"""Distillation methods, one module each, registered by name.

Every module in this package is imported here, so adding a method is adding one file (and its
test): the job schema, the plan and the worker find it in `METHODS`.
"""

import importlib
import pkgutil

from kdray.methods.base import (
    METHODS,
    Method,
    MethodParams,
    Outputs,
    Shapes,
    class_weights,
    kl_to_student,
    plain_loss,
    register,
    teacher_log_probs,
)
from kdray.tasks import UNLABELLED

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")


def get_method(name: str) -> type[Method]:
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; known: {sorted(METHODS)}") from None


__all__ = [
    "METHODS",
    "UNLABELLED",
    "Method",
    "MethodParams",
    "Outputs",
    "Shapes",
    "class_weights",
    "get_method",
    "kl_to_student",
    "plain_loss",
    "register",
    "teacher_log_probs",
]
