"""Processes below a process, from Linux's /proc (psutil is not a dependency): what
`kdray.grid.local_ray` kills with Ray's own processes, and what `bench` samples. Standard
library only, so that a benchmark's sampler imports nothing heavy."""

from __future__ import annotations

import contextlib
from pathlib import Path


def descendants(root: int) -> list[int]:
    """The process ids below `root` (Linux's /proc; none elsewhere)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            parent = int(entry.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.parent.name))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out
