"""Experiment tracking: Weights & Biases and MLflow side by side, each optional.

`Tracker` is what the worker holds, on rank 0 only: `Tracker.start(job, spec, run_dir, info,
history)` opens one run per configured backend (`tracking.wandb`: one W&B run per kdray run,
grouped by experiment; `tracking.mlflow`: one MLflow run nested in the grid's run, see
`kdray.tracking.mlflow_backend`), `.log(row)` once per epoch, `.finish(summary)` at the end. Every
backend has the same three calls. `GridTracker` is the driver's side: the MLflow run of the
whole grid (W&B groups by name and needs none).

Nothing is uploaded by default (W&B offline, MLflow in a local store inside the experiment
folder) and no images are ever logged. The results tables stay the source of truth: a
tracking failure never stops or stalls training; the backend warns once, on stderr, and is
dropped for the rest of the run.
"""

from __future__ import annotations

from pathlib import Path

from kdray.tracking.common import Backend, reason, warn
from kdray.tracking.mlflow_backend import MlflowGrid, MlflowRun
from kdray.tracking.wandb_backend import WandbRun


def _backends() -> list:
    return [WandbRun, MlflowRun]


class Tracker:
    """The configured backends of one kdray run; a backend that fails warns once and is
    dropped, the others go on."""

    def __init__(
        self, backends: list[Backend] | None = None, run_id: str = "", off: list | None = None
    ):
        self.backends = list(backends or [])
        self.run_id = run_id
        self.off: list[str] = list(off or [])  # "<backend>: <why>", for the run's summary

    @classmethod
    def start(cls, job, spec, run_dir: Path, info=None, history=()) -> Tracker:
        backends, off = [], []
        for backend in _backends():
            try:
                opened = backend.start(job, spec, run_dir, info, history)
            except Exception as exc:  # tracking must never cost a trial
                off.append(_off(backend.name, spec.run_id, exc))
                continue
            if opened is not None:
                backends.append(opened)
        return cls(backends, spec.run_id, off)

    def log(self, metrics: dict) -> None:
        self._each("log", metrics)

    def finish(self, summary: dict) -> None:
        self._each("finish", summary)

    def _each(self, call: str, values: dict) -> None:
        for backend in list(self.backends):
            try:
                getattr(backend, call)(values)
            except Exception as exc:
                self.off.append(_off(backend.name, self.run_id, exc))
                self.backends.remove(backend)


class GridTracker:
    """The driver's side of tracking: the MLflow run that holds the grid's runs. Opened before
    the grid starts, finished after it (finished, failed or interrupted)."""

    def __init__(self, grid=None):
        self.grid = grid

    @classmethod
    def start(cls, exp, job, data=None) -> GridTracker:
        if job.tracking.mlflow is None:
            return cls()
        try:
            return cls(MlflowGrid.start(exp, job, data))
        except Exception as exc:
            warn(f"MLflow tracking of the grid {exp.root} off, training goes on: {reason(exc)}")
            return cls()

    def finish(self, finished: list[str], failed: dict[str, str], complete: bool) -> None:
        if self.grid is None:
            return
        try:
            self.grid.finish(finished, failed, complete)
        except Exception as exc:
            warn(f"MLflow: the grid's run was not closed: {reason(exc)}")
        self.grid = None


def _off(backend: str, run_id: str, exc: BaseException) -> str:
    """Warn (in the worker's log) and return `<backend>: <why>` for the run's summary, which
    the driver reads to say it where the user looks."""
    warn(f"{backend} tracking off for {run_id}, training goes on: {reason(exc)}")
    return f"{backend}: {reason(exc)}"
