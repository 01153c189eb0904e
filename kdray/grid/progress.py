"""A live view of a grid: one bar per stage with done / running / failed counts, read from the
experiment folder (so it is the same view `kdray status` gives)."""

from __future__ import annotations

import contextlib
import threading

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from kdray.spec.plan import STAGES
from kdray.store.experiment import Experiment
from kdray.store.status import stage_counts, status_rows


def fitted_lines(text: str, width: int, indent: str = "  ") -> list[str]:
    """`text` cut into lines of at most `width` columns at its ", " separators only, so a name
    and its number (`WRIST 160`, `32px x 1ch`) never land on two lines; continuation lines are
    indented. A single part longer than `width` keeps its own line whole, and so does a list
    or a parenthesis: a ", " inside brackets is no separator (`values [0, 100, 255]`)."""
    parts = _top_level_parts(text)
    lines = [parts[0]]
    for part in parts[1:]:
        if len(lines[-1]) + 2 + len(part) < width:  # the ',' a cut line keeps counts too
            lines[-1] += ", " + part
        else:
            lines[-1] += ","
            lines.append(indent + part)
    return lines


def _top_level_parts(text: str) -> list[str]:
    """`text` split at the ", " outside (), [] and {}."""
    parts, start, depth = [], 0, 0
    for i, char in enumerate(text):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth = max(depth - 1, 0)
        elif depth == 0 and text.startswith(", ", i):
            parts.append(text[start:i])
            start = i + 2
    return [*parts, text[start:]]


class GridProgress:
    def __init__(self, console: Console | None = None):
        self.progress = Progress(
            TextColumn("[bold]{task.fields[stage]:<8}"),
            BarColumn(),
            TextColumn("{task.fields[finished]}/{task.total} finished{task.fields[stopped]}"),
            TextColumn("[cyan]{task.fields[running]} running"),
            TextColumn("[red]{task.fields[failed]} failed"),
            TimeElapsedColumn(),
            console=console,
        )
        self._tasks: dict[str, int] = {}

    def __enter__(self) -> GridProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def refresh(self, exp: Experiment, final: bool = False) -> None:
        """Redraw from the folder; `final`: the grid has stopped (unfinished runs are
        interrupted, not running)."""
        counts = stage_counts(status_rows(exp, alive=False if final else None))
        for stage in STAGES:
            c = counts[stage]
            total = sum(c.values())
            if stage not in self._tasks:
                self._tasks[stage] = self.progress.add_task(
                    stage, total=total, stage=stage, running=0, failed=0, finished=0, stopped=""
                )
            self.progress.update(
                self._tasks[stage],
                total=total,
                completed=c["finished"] + c["stopped"] + c["failed"],  # the bar: runs that ended
                finished=c["finished"],
                stopped=f" ({c['stopped']} stopped)" if c["stopped"] else "",  # searched samples
                running=c["running"],
                failed=c["failed"],
            )

    def follow(self, exp: Experiment, stop: threading.Event, every_s: float = 1.0) -> None:
        """Refresh from the experiment folder until `stop` is set (run it in a thread)."""
        while not stop.is_set():
            # a file half-written mid-poll: the next poll sees it whole
            with contextlib.suppress(Exception):
                self.refresh(exp)
            stop.wait(every_s)
