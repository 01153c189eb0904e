"""Which run Tune starts next: the grid's dependency order as a Tune `Searcher`.

A KD student needs its teachers' weights (and soft labels), so it may start only once all its
teacher runs have finished; everything else may start at once. Instead of a barrier between all
teachers and all students, each student is handed to Tune as soon as its own teacher is done,
so students of one teacher train while other teachers still do. Teachers go first: they are
on the grid's critical path.

The queue's state is the experiment folder itself (a run is done when its summary.json says
so), so a resumed grid needs no saved scheduler state: it queues the runs that are not done.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ray.tune.search import Searcher

from kdray.spec.plan import RunSpec


class RunQueue(Searcher):
    """Hands Tune one run per trial: runs that teach others first (they gate the students), the
    rest in plan order once they can start; `None` (ask again later) while what is left waits
    on running teachers; FINISHED when nothing is left, or nothing left can ever start."""

    def __init__(
        self,
        runs: list[RunSpec],
        trial_config: Callable[[RunSpec], dict],
        run_status: Callable[[str], str | None],
        max_concurrent: int,
    ):
        super().__init__()
        teachers = {t for r in runs for t in r.teacher_runs}
        self.waiting = sorted(runs, key=lambda r: r.run_id not in teachers)
        self.trial_config = trial_config
        self.run_status = run_status  # "finished" | "failed" | None, read from the run folder
        self.max_concurrent = max_concurrent
        self.live: dict[str, RunSpec] = {}  # Tune trial id -> the run it is training
        self.failed: set[str] = set()  # runs whose trial ended in error in this session

    def suggest(self, trial_id: str) -> dict | str | None:
        if not self.waiting:
            return Searcher.FINISHED
        ready = [r for r in self.waiting if self._can_start(r)]
        if not ready:
            return None if self.live else Searcher.FINISHED
        if len(self.live) >= self.max_concurrent:
            return None
        run = ready[0]
        self.waiting.remove(run)
        self.live[trial_id] = run
        return self.trial_config(run)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        run = self.live.pop(trial_id, None)
        if run is not None and (error or self.run_status(run.run_id) != "finished"):
            self.failed.add(run.run_id)

    def save(self, checkpoint_path: str) -> None:
        """What Tune checkpoints with its experiment: kept readable (JSON), for people only."""
        state = {
            "waiting": [r.run_id for r in self.waiting],
            "live": {trial: r.run_id for trial, r in self.live.items()},
            "failed": sorted(self.failed),
        }
        Path(checkpoint_path).write_text(json.dumps(state, indent=1))

    def restore(self, checkpoint_path: str) -> None:
        raise NotImplementedError(
            "kdray resumes a grid from its experiment folder (`kdray resume`), not from "
            "Tune's searcher state"
        )

    def blocked(self) -> dict[str, str]:
        """Runs never started because a teacher failed: run id -> that teacher's run id. (Other
        runs still waiting were cut short by an interruption: they are not blocked.)"""
        out = {}
        for run in self.waiting:
            failed = [t for t in run.teacher_runs if self._failed(t)]
            if failed:
                out[run.run_id] = failed[0]
        return out

    def _failed(self, run_id: str) -> bool:
        return run_id in self.failed or self.run_status(run_id) == "failed"

    def _can_start(self, run: RunSpec) -> bool:
        return all(
            t not in self.failed and self.run_status(t) == "finished" for t in run.teacher_runs
        )
