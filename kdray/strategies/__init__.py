"""Distillation strategies, one module each, registered by name.

Every module in this package is imported here, so adding a strategy is adding one file.
"""

import importlib
import pkgutil

from kdray.strategies.base import STRATEGIES, Strategy, hinton_kd_loss, register

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")


def get_strategy(name: str) -> type[Strategy]:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise KeyError(f"unknown strategy {name!r}; known: {sorted(STRATEGIES)}") from None


__all__ = ["STRATEGIES", "Strategy", "get_strategy", "hinton_kd_loss", "register"]
