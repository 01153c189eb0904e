"""The experiment folder's JSON files: read with a message naming a damaged file and what to do."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class ExperimentError(Exception):
    pass


def read_json(path: Path, what_to_do: str) -> Any:
    """A JSON file of the experiment folder; a damaged one raises `ExperimentError` naming the
    file, what is wrong with it and `what_to_do`."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ExperimentError(damaged(path, exc, what_to_do)) from None


def damaged(path: Path, exc: Exception, what_to_do: str) -> str:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"{path} is damaged ({reason[:200]}): {what_to_do}"
