"""Experiment tracking: Weights & Biases and MLflow side by side, each optional.

`Tracker` is what the worker holds, on rank 0 only: `Tracker.start(job, spec, run_dir, info,
history)` opens one run per configured backend (`tracking.wandb`: one W&B run per kdray run,
grouped by experiment; `tracking.mlflow`: one MLflow run nested in the grid's run, see
`kdray.tracking_mlflow`), `.log(row)` once per epoch, `.finish(summary)` at the end. Every
backend has the same three calls. `GridTracker` is the driver's side: the MLflow run of the
whole grid (W&B groups by name and needs none).

Nothing is uploaded by default (W&B offline, MLflow in a local store inside the experiment
folder) and no images are ever logged. The results tables stay the source of truth: a
tracking failure never stops or stalls training; the backend warns once, on stderr, and is
dropped for the rest of the run.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Protocol


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


class Backend(Protocol):
    name: str

    def log(self, metrics: dict) -> None: ...

    def finish(self, summary: dict) -> None: ...


class WandbRun:
    """One W&B run per kdray run, id = run id (a retried or resumed run continues it).
    Train V2's `setup_wandb` rank-zero guard does not hold under Tune, so we call `wandb.init`
    ourselves."""

    name = "W&B"

    def __init__(self, run: Any):
        self.run = run

    @classmethod
    def start(cls, job, spec, run_dir: Path, info=None, history=()) -> WandbRun | None:
        cfg = job.tracking.wandb
        if cfg is None or cfg.mode == "disabled":
            return None
        import wandb

        run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            id=spec.run_id,
            name=spec.run_id,
            group=job.name,
            tags=[*cfg.tags, spec.method, spec.stage],
            mode=cfg.mode,
            dir=str(run_dir),
            resume="allow",
            config={
                "model": spec.model,
                "teachers": spec.teacher_models,
                "method": spec.method,
                "method_params": spec.method_params,
                "studies": studies(spec),
                "seed": spec.seed,
                "stage": spec.stage,
                "band": spec.band,
                "train": job.train.model_dump(mode="json"),
                "data": job.data.kind,
                "data_fingerprint": getattr(info, "fingerprint", None),
            },
        )
        return cls(run)

    def log(self, metrics: dict) -> None:
        self.run.log(numbers(metrics))

    def finish(self, summary: dict) -> None:
        for key, value in numbers(summary).items():
            self.run.summary[key] = value
        self.run.finish()


def _backends() -> list:
    from kdray.tracking_mlflow import MlflowRun

    return [WandbRun, MlflowRun]


class Tracker:
    """The configured backends of one kdray run; a backend that fails warns once and is
    dropped, the others go on."""

    def __init__(self, backends: list[Backend] | None = None, run_id: str = ""):
        self.backends = list(backends or [])
        self.run_id = run_id

    @classmethod
    def start(cls, job, spec, run_dir: Path, info=None, history=()) -> Tracker:
        backends = []
        for backend in _backends():
            try:
                opened = backend.start(job, spec, run_dir, info, history)
            except Exception as exc:  # tracking must never cost a trial
                _off(backend.name, spec.run_id, exc)
                continue
            if opened is not None:
                backends.append(opened)
        return cls(backends, spec.run_id)

    def log(self, metrics: dict) -> None:
        self._each("log", metrics)

    def finish(self, summary: dict) -> None:
        self._each("finish", summary)

    def _each(self, call: str, values: dict) -> None:
        for backend in list(self.backends):
            try:
                getattr(backend, call)(values)
            except Exception as exc:
                _off(backend.name, self.run_id, exc)
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
            from kdray.tracking_mlflow import MlflowGrid

            return cls(MlflowGrid.start(exp, job, data))
        except Exception as exc:
            warn(f"MLflow tracking of the grid {exp.root} off, training goes on: {_reason(exc)}")
            return cls()

    def finish(self, finished: list[str], failed: dict[str, str], complete: bool) -> None:
        if self.grid is None:
            return
        try:
            self.grid.finish(finished, failed, complete)
        except Exception as exc:
            warn(f"MLflow: the grid's run was not closed: {_reason(exc)}")
        self.grid = None


def _off(backend: str, run_id: str, exc: BaseException) -> None:
    warn(f"{backend} tracking off for {run_id}, training goes on: {_reason(exc)}")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}".rstrip(": ")
