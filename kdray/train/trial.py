"""What a trial trains, as one typed object the trial driver hands Ray Train (pickled as is):
light on imports, so a trial driver need not load what its workers train with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdray.data.cache import DataInfo
from kdray.spec.job import Job
from kdray.spec.plan import RunSpec


@dataclass(frozen=True)
class TrialConfig:
    """What one trial trains, typed as it crosses the Ray boundary (pickled as is): the
    experiment folder, its job and decoded data, the pack's runs, how often each had been
    started before this grid session (a resumed grid gives every run its retries again), when
    the trial driver launched the fit (the first run's wall time includes the start-up), and
    where the worker asks for more runs once the pack is done: the grid's ledger (a Ray actor,
    `kdray.grid.ledger.RunLedger`) and the trial's id there (none: the pack alone)."""

    experiment: Path
    job: Job
    data: DataInfo
    runs: tuple[RunSpec, ...]
    earlier_attempts: dict[str, int]
    launched_at: float = 0.0
    pack_id: str = ""
    ledger: Any = None

    @property
    def name(self) -> str:
        """The pack's name (its Ray Train run): its first run, and how many more it holds."""
        more = len(self.runs) - 1
        return self.runs[0].run_id + (f"+{more}" if more else "")
