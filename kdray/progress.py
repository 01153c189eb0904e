"""A live view of a grid: one bar per stage with done / running / failed counts."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn


class GridProgress:
    def __init__(self, console: Console | None = None):
        self.progress = Progress(
            TextColumn("[bold]{task.fields[stage]:<8}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} done"),
            TextColumn("[cyan]{task.fields[running]} running"),
            TextColumn("[red]{task.fields[failed]} failed"),
            TimeElapsedColumn(),
            console=console,
        )
        self._tasks: dict[str, int] = {}
        self._counts: dict[str, dict[str, int]] = {}

    def __enter__(self) -> GridProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def add_stage(self, stage: str, total: int, already_done: int = 0) -> None:
        self._counts[stage] = {"running": 0, "failed": 0}
        self._tasks[stage] = self.progress.add_task(
            stage, total=total, completed=already_done, stage=stage, running=0, failed=0
        )

    def event(self, stage: str, kind: str) -> None:
        counts, task = self._counts[stage], self._tasks[stage]
        if kind == "start":
            counts["running"] += 1
        else:
            counts["running"] = max(0, counts["running"] - 1)
            if kind == "failed":
                counts["failed"] += 1
            self.progress.advance(task)
        self.progress.update(task, **counts)
