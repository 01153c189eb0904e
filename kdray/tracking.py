"""Experiment tracking: one Weights & Biases run per trial, grouped by experiment.

Called on rank 0 only (Train V2's `setup_wandb` rank-zero guard does not hold under Tune, so we
call `wandb.init` ourselves). Offline by default: nothing leaves the machine, and no images are
ever logged. A tracking failure never stops training: it is reported once and tracking stops.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


class Tracker:
    def __init__(self, run: Any = None):
        self.run = run

    @classmethod
    def start(cls, job, spec, run_dir: Path) -> Tracker:
        cfg = job.tracking.wandb
        if cfg is None or cfg.mode == "disabled":
            return cls()
        try:
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
                    "studies": [r.split(":", 1)[1] for r in spec.roles if ":" in r],
                    "seed": spec.seed,
                    "stage": spec.stage,
                    "band": spec.band,
                    "train": job.train.model_dump(mode="json"),
                    "data": job.data.kind,
                },
            )
        except Exception as exc:  # tracking must never cost a trial
            print(f"kdray: W&B tracking disabled for {spec.run_id}: {exc}", file=sys.stderr)
            return cls()
        return cls(run)

    def log(self, metrics: dict) -> None:
        if self.run is not None:
            self.run.log({k: v for k, v in metrics.items() if isinstance(v, int | float)})

    def finish(self, summary: dict) -> None:
        if self.run is None:
            return
        for key, value in summary.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                self.run.summary[key] = value
        self.run.finish()
