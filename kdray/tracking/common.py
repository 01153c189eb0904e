"""What every tracking backend shares: the warning, the numbers it logs, the protocol."""

from __future__ import annotations

import sys
from typing import Protocol


def warn(message: str) -> None:
    print(f"kdray: warning: {message}", file=sys.stderr, flush=True)


def numbers(values: dict) -> dict[str, float]:
    """The plain numbers of a row or summary (bools, strings, dicts and None left out)."""
    return {
        k: float(v)
        for k, v in values.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def studies(spec) -> list[str]:
    """The studies a run serves, from its roles (`kd:<study>`, `teacher:<study>`)."""
    return list(dict.fromkeys(r.split(":", 1)[1] for r in spec.roles if ":" in r))


def searches(spec) -> list[str]:
    """The studies whose search the run is a sample of (roles `sample:<study>`)."""
    return [r.split(":", 1)[1] for r in spec.roles if r.startswith("sample:")]


class Backend(Protocol):
    name: str

    def log(self, metrics: dict) -> None: ...

    def finish(self, summary: dict) -> None: ...


def reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}".rstrip(": ")
