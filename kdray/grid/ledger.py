"""The grid's ledger: which runs wait, which trial trains which, what failed (see
`kdray.grid.schedule` for how Tune and the workers use it).

It lives in one Ray actor on the driver's node, so it is kept light: runs are their ids (a
pack is a tuple of run ids, each run's teachers a tuple too), and a run's state is read from its
folder with the standard library alone. Importing it loads neither torch nor timm: the actor
starts in about a second, not the seconds the first trial would otherwise wait for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from kdray.store.json_files import ExperimentError
from kdray.store.run_folder import RunFolder
from kdray.train.more_runs import WAIT

FINISHED = "FINISHED"  # ray.tune.search.Searcher.FINISHED: no trial is left to start

# How long a trial done with its runs waits for runs whose teachers other trials train. Waiting
# saves a new fit's start-up, but holds the trial's resources: a teacher's trial whose workers
# must restart (a lost node) may need exactly those, so the wait is bounded and the fit then
# ends, freeing them.
WAIT_LIMIT_S = 30.0

Pack = tuple[str, ...]


def trained_share(experiment: Path, run_id: str, full_epochs: int) -> float:
    """The share of a full run's epochs a stopped sample trained (1.0 for any other run)."""
    try:
        summary = RunFolder(Path(experiment) / "runs" / run_id).summary() or {}
    except ExperimentError:
        return 1.0
    if summary.get("status") != "stopped" or not summary.get("epochs"):
        return 1.0
    return min(1.0, summary["epochs"] / full_epochs)


def run_status(experiment: Path, run_id: str) -> str | None:
    """finished / failed (a summary saying so, or a recorded failure) / None (not ended)."""
    folder = RunFolder(Path(experiment) / "runs" / run_id)
    try:
        summary = folder.summary()
    except ExperimentError:
        return None  # damaged: not ended as far as scheduling goes (resume names the file)
    if summary is not None:
        return summary["status"]
    return "failed" if folder.failure() is not None else None


class RunLedger:
    """Packs of run ids handed to new trials (`next_pack`), ready runs handed to trials done
    with theirs (`more_runs`). `teachers`: run id -> its teacher run ids. A run's state and
    earlier starts come from `experiment`'s run folders, or from `run_status(run_id)` and
    `attempts(run_id)` when given (tests).

    A fit takes runs up to `runs_per_fit` (None: no limit), a sample its search stopped counted
    for the share of the job's `full_epochs` it trained: a search's short samples fill a fit as
    the full runs their epochs add up to, so a slot keeps its fit (and its start-up, ~13 s on 2
    cores) through a search, as it does through a grid of full runs."""

    def __init__(
        self,
        packs: list[Pack],
        teachers: dict[str, tuple[str, ...]],
        experiment: str | Path | None = None,
        max_concurrent: int = 1,
        runs_per_fit: int | None = 1,
        run_status: Callable[[str], str | None] | None = None,
        attempts: Callable[[str], int] | None = None,
        wait_limit_s: float = WAIT_LIMIT_S,
        searching: bool = False,
        full_epochs: int | None = None,
    ):
        gating = {t for ts in teachers.values() for t in ts}
        self.waiting = sorted(packs, key=lambda p: not any(r in gating for r in p))
        self.teachers = teachers
        self.experiment = Path(experiment) if experiment is not None else None
        self._status = run_status
        self._attempts = attempts
        self.max_concurrent = max_concurrent
        self.runs_per_fit = runs_per_fit
        self.full_epochs = full_epochs
        self._shares: dict[str, float] = {}  # run id -> its share of a full run, once ended
        self.wait_limit_s = wait_limit_s
        self.live: dict[str, Pack] = {}  # Tune trial id -> the pack it started with
        self.ended: dict[str, Pack] = {}  # the same, for trials that ended
        self.claims: dict[str, list[tuple]] = {}  # trial id -> what each more_runs call got
        self.waiting_since: dict[str, float] = {}  # trial id -> when it began to wait
        self.failed: set[str] = set()  # runs their trial left unfinished in this session
        self.dropped: dict[str, str] = {}  # run id -> the failed teacher it can never use
        self.closed = False  # the grid is stopping (Ctrl-C): nothing more starts
        self.trial_actors: dict[str, bytes] = {}  # Tune trial id -> its actor, while it runs
        self._ended: dict[str, str] = {}  # run id -> finished/failed: final in a grid session
        self._read: dict[str, str | None] = {}  # the other runs' states read by this call
        self._searched: set[Pack] = set()  # packs of runs a search made
        self.search = None  # the grid's searches (`kdray.grid.search`), which add runs
        if searching:
            from kdray.grid.search import GridSearch  # Optuna, and the job's specs: searches only

            self.search = GridSearch(self.experiment)

    def close(self) -> None:
        """Start nothing more: no new trial, no run for a trial asking for more; and stop the
        trials running now. Tune would give each 10 s to stop before killing it (its
        `_actor_force_cleanup_timeout`), though a trial blocked in its fit never stops by
        itself: killed now, its fit's workers go with it, and their runs continue from their
        last checkpoints on `kdray resume`, as they would after those 10 s."""
        self.closed = True
        self._kill_trials()

    def trial_started(self, trial_id: str, actor: bytes) -> None:
        """The Ray actor running Tune trial `trial_id`, its handle pickled (for `close`; killed
        at once if the grid is already closing). Unpickled only to kill it: a handle brings the
        import of its actor's module (torch and all) into this light process."""
        self.trial_actors[trial_id] = actor
        if self.closed:
            self._kill_trials()

    def _kill_trials(self) -> None:
        if not self.trial_actors:
            return
        import ray
        from ray import cloudpickle

        for actor in self.trial_actors.values():
            ray.kill(cloudpickle.loads(actor), no_restart=True)
        self.trial_actors.clear()

    def next_pack(self, trial_id: str) -> Pack | str | None:
        """The pack a new trial trains; None (ask again later) while what is left waits on
        running teachers or every slot is taken; `FINISHED` when nothing is left, or nothing
        left can ever start."""
        self._read.clear()
        self._drop_runs_of_failed_teachers()
        self._add_search_runs()
        if not self.waiting or self.closed:
            return FINISHED if self.closed or not self._search_coming() else None
        ready = [p for p in self.waiting if all(self._ready(r) for r in p)]
        if not ready:
            return None if self.live else FINISHED
        if len(self.live) >= self.max_concurrent:
            return None
        pack = ready[0]
        self.waiting.remove(pack)
        self.live[trial_id] = pack
        return pack

    def more_runs(self, trial_id: str, call: int) -> list[tuple[str, int]] | str:
        """The trial's `call`-th request for more: [(run id, its earlier attempts)], [] (no
        more: end the fit) or `WAIT`. Answers are recorded, so every rank of a trial, and a
        worker group Ray Train restarted, replays the same runs in the same order."""
        self._read.clear()
        log = self.claims.setdefault(trial_id, [])
        if call < len(log):
            return list(log[call])
        if self.closed:
            return []
        if trial_id not in self.live or self._fit_full(trial_id):
            log.append(())
            return []
        self._drop_runs_of_failed_teachers()
        self._add_search_runs()
        for waiting in self.waiting:
            for run in waiting:
                if self._ready(run):
                    self._take(waiting, run)
                    self.waiting_since.pop(trial_id, None)
                    log.append(((run, self.attempts(run)),))
                    return list(log[-1])
        training = {r for t in self.live for r in self.runs_of(t)}
        coming = any(self._coming(run, training) for waiting in self.waiting for run in waiting)
        if coming or self._search_coming():
            since = self.waiting_since.setdefault(trial_id, time.monotonic())
            if time.monotonic() - since < self.wait_limit_s:
                return WAIT
        log.append(())
        return []

    def _fit_full(self, trial_id: str) -> bool:
        return self.runs_per_fit is not None and self._fit_size(trial_id) >= self.runs_per_fit

    def _fit_size(self, trial_id: str) -> float:
        """The runs the trial's fit was given, a stopped sample counted for its share."""
        return sum(self._share(run) for run in self.runs_of(trial_id))

    def _share(self, run_id: str) -> float:
        if self.experiment is None or not self.full_epochs or self.status(run_id) != "stopped":
            return 1.0
        if run_id not in self._shares:
            self._shares[run_id] = trained_share(self.experiment, run_id, self.full_epochs)
        return self._shares[run_id]

    def trial_ended(self, trial_id: str) -> None:
        self._read.clear()
        self.trial_actors.pop(trial_id, None)
        if trial_id not in self.live:
            return
        self.ended[trial_id] = self.live.pop(trial_id)
        for run in self.runs_of(trial_id):  # a run it finished stays finished, even if it erred
            if self.status(run) not in ("finished", "stopped"):
                self.failed.add(run)

    def runs_of(self, trial_id: str) -> list[str]:
        """Every run the trial was given: its pack's, then those it took."""
        pack = self.live.get(trial_id) or self.ended.get(trial_id) or ()
        return [*pack, *(run for claim in self.claims.get(trial_id, []) for run, _ in claim)]

    def given(self) -> dict[str, list[str]]:
        """Trial id -> the run ids it was given (its pack's and those it took)."""
        return {t: self.runs_of(t) for t in {*self.live, *self.ended}}

    def state(self) -> dict:
        return {
            "waiting": [list(p) for p in self.waiting],
            "live": {t: self.runs_of(t) for t in self.live},
            "failed": sorted(self.failed),
        }

    def blocked(self) -> dict[str, str]:
        """Runs never started because a teacher failed: run id -> that teacher's run id. (Other
        runs still waiting were cut short by an interruption: they are not blocked.)"""
        self._read.clear()
        self._drop_runs_of_failed_teachers()
        return dict(self.dropped)

    def status(self, run_id: str) -> str | None:
        """The run's state, read from its folder at most once per call of the ledger (a waiting
        student asks for its teachers, and many students share a teacher: on a shared file
        system every read is a round trip), never again once it ended."""
        if run_id in self._ended:
            return self._ended[run_id]
        if run_id not in self._read:
            self._read[run_id] = self._read_status(run_id)
        state = self._read[run_id]
        if state in ("finished", "stopped", "failed"):
            self._ended[run_id] = state
        return state

    def _read_status(self, run_id: str) -> str | None:
        if self._status is not None:
            return self._status(run_id)
        return run_status(self.experiment, run_id) if self.experiment else None

    def attempts(self, run_id: str) -> int:
        if self._attempts is not None:
            return self._attempts(run_id)
        if self.experiment is None:
            return 0
        return RunFolder(self.experiment / "runs" / run_id).attempts()

    def judge(self, run_id: str, epoch: int, value: float) -> str:
        """A searched sample after `epoch`: `stop` (the pruner ends it), `go`, or `WAIT` (earlier
        samples of its cell must be judged at this epoch first). A closing grid answers `WAIT`
        until its workers are stopped: a sample must neither end stopped by a judgement the
        search did not record, nor train on unjudged to the end in the seconds a stopping grid
        leaves it; it is interrupted, and judged on its checkpoint's epoch when resumed."""
        self._read.clear()
        if self.closed:
            return WAIT
        if self.search is None:
            return "go"
        return self.search.judge(run_id, epoch, value, self._alive, self._status_or_failed)

    def _alive(self, run_id: str) -> bool:
        """Whether a live trial trains the run now."""
        return any(run_id in self.runs_of(t) for t in self.live) and self.status(run_id) is None

    def _status_or_failed(self, run_id: str) -> str | None:
        return "failed" if run_id in self.failed else self.status(run_id)

    def _add_search_runs(self) -> None:
        """Queue the runs the searches made now, ahead of the students the job lists (a search
        is a chain: samples, then confirmations), behind the teachers."""
        if self.search is None or self.closed:
            return
        made = self.search.new_runs(self._status_or_failed)
        if not made:
            return  # most calls: nothing new, nothing to compare
        known = {r for p in self.waiting for r in p} | {
            r for rs in self.given().values() for r in rs
        }
        new = [s for s in made if s.run_id not in known and self.status(s.run_id) is None]
        gating = {t for ts in self.teachers.values() for t in ts}
        at = 0  # after the teachers' packs and the searches' runs queued before
        while at < len(self.waiting) and (
            set(self.waiting[at]) & gating or self.waiting[at] in self._searched
        ):
            at += 1
        for spec in new:
            self.teachers[spec.run_id] = tuple(spec.teacher_runs)
            self.waiting.insert(at, (spec.run_id,))
            self._searched.add((spec.run_id,))
            at += 1

    def _search_coming(self) -> bool:
        """Whether a search will add runs once runs live trials train now have ended."""
        if self.search is None or self.closed:
            return False
        return any(self._alive(r) for r in self.search.waiting_on())

    def _take(self, pack: Pack, run: str) -> None:
        index = self.waiting.index(pack)
        rest = tuple(r for r in pack if r != run)
        if rest:
            self.waiting[index] = rest
        else:
            del self.waiting[index]

    def _drop_runs_of_failed_teachers(self) -> None:
        """Take out of the waiting packs the runs whose teacher failed: the rest of their pack
        can still start."""
        kept = []
        for pack in self.waiting:
            runs = []
            for run in pack:
                failed = [t for t in self.teachers.get(run, ()) if self._failed(t)]
                if failed:
                    self.dropped[run] = failed[0]
                else:
                    runs.append(run)
            if runs:
                kept.append(tuple(runs))
        self.waiting = kept

    def _failed(self, run_id: str) -> bool:
        return run_id in self.failed or self.status(run_id) == "failed"

    def _ready(self, run: str) -> bool:
        return all(
            t not in self.failed and self.status(t) == "finished"
            for t in self.teachers.get(run, ())
        )

    def _coming(self, run: str, training: set[str]) -> bool:
        """Whether the run will be ready once the live trials finish what they train."""
        return all(
            not self._failed(t) and (self.status(t) == "finished" or t in training)
            for t in self.teachers.get(run, ())
        )
