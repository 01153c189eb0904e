"""Weights & Biases: one W&B run per kdray run, grouped by experiment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdray.tracking.common import numbers, searches, studies


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
            tags=[*cfg.tags, spec.method, spec.stage, *(f"search:{s}" for s in searches(spec))],
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
        status = summary.get("status", "finished")
        self.run.summary["kdray_status"] = status
        if status == "stopped":  # a sample its search stopped: findable by tag
            self.run.tags = (*self.run.tags, "stopped")
        self.run.finish()
