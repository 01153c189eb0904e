"""Which pack of runs Tune starts next: the grid's dependency order as a Tune `Searcher`.

A KD student needs its teachers' weights (and soft labels), so it may start only once all its
teacher runs have finished; everything else may start at once. Instead of a barrier between all
teachers and all students, each pack of students (students sharing their teachers,
`kdray.grid.packing`) is handed to Tune as soon as its teachers are done, so students of one
teacher train while other teachers still do. Packs of teachers go first: they are on the grid's
critical path.

The queue's state is the experiment folder itself (a run is done when its summary.json says
so), so a resumed grid needs no saved scheduler state: it queues the runs that are not done.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ray.tune.search import Searcher

from kdray.grid.packing import Pack


class RunQueue(Searcher):
    """Hands Tune one pack per trial: packs of runs that teach others first (they gate the
    students), the rest in plan order once they can start; `None` (ask again later) while what
    is left waits on running teachers; FINISHED when nothing is left, or nothing left can ever
    start."""

    def __init__(
        self,
        packs: list[Pack],
        trial_config: Callable[[Pack], dict],
        run_status: Callable[[str], str | None],
        max_concurrent: int,
    ):
        super().__init__()
        teachers = {t for pack in packs for t in pack.teacher_runs}
        gating = {p: any(r.run_id in teachers for r in p.runs) for p in packs}
        self.waiting = sorted(packs, key=lambda p: not gating[p])
        self.trial_config = trial_config
        self.run_status = run_status  # "finished" | "failed" | None, read from the run folder
        self.max_concurrent = max_concurrent
        self.live: dict[str, Pack] = {}  # Tune trial id -> the pack it is training
        self.failed: set[str] = set()  # runs whose trial ended in error in this session
        self.dropped: dict[str, str] = {}  # run id -> the failed teacher it can never use

    def suggest(self, trial_id: str) -> dict | str | None:
        self._drop_runs_of_failed_teachers()
        if not self.waiting:
            return Searcher.FINISHED
        ready = [p for p in self.waiting if self._can_start(p)]
        if not ready:
            return None if self.live else Searcher.FINISHED
        if len(self.live) >= self.max_concurrent:
            return None
        pack = ready[0]
        self.waiting.remove(pack)
        self.live[trial_id] = pack
        return self.trial_config(pack)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        pack = self.live.pop(trial_id, None)
        for run in pack.runs if pack is not None else ():
            if error or self.run_status(run.run_id) != "finished":
                self.failed.add(run.run_id)

    def save(self, checkpoint_path: str) -> None:
        """What Tune checkpoints with its experiment: kept readable (JSON), for people only."""
        state = {
            "waiting": [[r.run_id for r in p.runs] for p in self.waiting],
            "live": {trial: [r.run_id for r in p.runs] for trial, p in self.live.items()},
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
        self._drop_runs_of_failed_teachers()
        return dict(self.dropped)

    def _drop_runs_of_failed_teachers(self) -> None:
        """Take out of the waiting packs the runs whose teacher failed: the rest of their pack
        can still start."""
        kept = []
        for pack in self.waiting:
            runs = []
            for run in pack.runs:
                failed = [t for t in run.teacher_runs if self._failed(t)]
                if failed:
                    self.dropped[run.run_id] = failed[0]
                else:
                    runs.append(run)
            if len(runs) == len(pack.runs):
                kept.append(pack)
            elif runs:
                kept.append(Pack(tuple(runs)))
        self.waiting = kept

    def _failed(self, run_id: str) -> bool:
        return run_id in self.failed or self.run_status(run_id) == "failed"

    def _can_start(self, pack: Pack) -> bool:
        return all(
            t not in self.failed and self.run_status(t) == "finished" for t in pack.teacher_runs
        )
