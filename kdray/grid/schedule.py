"""Which runs train next, and where: the grid's dependency order, shared by Tune and the workers.

A KD student needs its teachers' weights (and soft labels), so it may start only once all its
teacher runs have finished; everything else may start at once. Instead of a barrier between all
teachers and all students, each pack of students (students sharing their teachers,
`kdray.grid.packing`) is handed to Tune as soon as its teachers are done, so students of one
teacher train while other teachers still do. Packs of teachers go first: they are on the grid's
critical path.

Packs are where runs start, not where they must end: a trial that trained its pack asks the
ledger for more (`RunLedger.more_runs`) and takes the next ready run of a pack still waiting
(work stealing), up to `runs_per_fit` runs a fit. So a slot keeps its one Ray Train fit while
there is work for it, instead of paying a new fit's start-up per pack, and no slot idles while
another holds a tail of runs. While the only runs left wait on teachers that other trials are
training, the asking trial waits for them, up to `WAIT_LIMIT_S`; when nothing left can come its
way, it ends.

The ledger lives in one Ray actor on the driver's node (`start_ledger`), which Tune's searcher
(`RunQueue`) and the trials' workers both call. Its state is rebuilt from the experiment folder
by every grid session (a run is done when its summary.json says so), so a resumed grid needs no
saved scheduler state: it queues the runs that are not done.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import ray
from ray import tune
from ray.tune.search import Searcher

from kdray.grid.packing import Pack
from kdray.spec.plan import RunSpec
from kdray.train.trial import WAIT

# How long a trial done with its runs waits for runs whose teachers other trials train. Waiting
# saves a new fit's start-up, but holds the trial's resources: a teacher's trial whose workers
# must restart (a lost node) may need exactly those, so the wait is bounded and the fit then
# ends, freeing them.
WAIT_LIMIT_S = 30.0


class RunLedger:
    """Which runs wait, which trial trains which, and what failed: see the module docstring.
    `run_status(run_id)` reads "finished" | "failed" | None from the run folder;
    `attempts(run_id)` how often the run was started before this session."""

    def __init__(
        self,
        packs: list[Pack],
        run_status: Callable[[str], str | None],
        max_concurrent: int,
        runs_per_fit: int = 1,
        attempts: Callable[[str], int] = lambda _: 0,
        wait_limit_s: float = WAIT_LIMIT_S,
    ):
        teachers = {t for pack in packs for t in pack.teacher_runs}
        gating = {p: any(r.run_id in teachers for r in p.runs) for p in packs}
        self.waiting = sorted(packs, key=lambda p: not gating[p])
        self.run_status = run_status
        self.attempts = attempts
        self.max_concurrent = max_concurrent
        self.runs_per_fit = runs_per_fit
        self.live: dict[str, Pack] = {}  # Tune trial id -> the pack it started with
        self.ended: dict[str, Pack] = {}  # the same, for trials that ended
        self.claims: dict[str, list[tuple]] = {}  # trial id -> what each more_runs call got
        self.failed: set[str] = set()  # runs their trial left unfinished in this session
        self.dropped: dict[str, str] = {}  # run id -> the failed teacher it can never use
        self.closed = False  # the grid is stopping (Ctrl-C): nothing more starts
        self.wait_limit_s = wait_limit_s
        self.waiting_since: dict[str, float] = {}  # trial id -> when it began to wait

    def close(self) -> None:
        """Start nothing more: no new trial, no run for a trial asking for more."""
        self.closed = True

    def next_pack(self, trial_id: str) -> Pack | str | None:
        """The pack a new trial trains; None (ask again later) while what is left waits on
        running teachers or every slot is taken; `Searcher.FINISHED` when nothing is left, or
        nothing left can ever start."""
        self._drop_runs_of_failed_teachers()
        if not self.waiting or self.closed:
            return Searcher.FINISHED
        ready = [p for p in self.waiting if self._can_start(p)]
        if not ready:
            return None if self.live else Searcher.FINISHED
        if len(self.live) >= self.max_concurrent:
            return None
        pack = ready[0]
        self.waiting.remove(pack)
        self.live[trial_id] = pack
        return pack

    def more_runs(self, trial_id: str, call: int) -> list[tuple[RunSpec, int]] | str:
        """The trial's `call`-th request for more: [(run, its earlier attempts)], [] (no more:
        end the fit) or `WAIT`. Answers are recorded, so every rank of a trial, and a worker
        group Ray Train restarted, replays the same runs in the same order."""
        log = self.claims.setdefault(trial_id, [])
        if call < len(log):
            return list(log[call])
        if self.closed:
            return []
        pack = self.live.get(trial_id)
        if pack is None or len(pack.runs) + sum(map(len, log)) >= self.runs_per_fit:
            log.append(())
            return []
        self._drop_runs_of_failed_teachers()
        for waiting in self.waiting:
            for run in waiting.runs:
                if self._ready(run):
                    self._take(waiting, run)
                    self.waiting_since.pop(trial_id, None)
                    log.append(((run, self.attempts(run.run_id)),))
                    return list(log[-1])
        if any(self._coming(run) for waiting in self.waiting for run in waiting.runs):
            since = self.waiting_since.setdefault(trial_id, time.monotonic())
            if time.monotonic() - since < self.wait_limit_s:
                return WAIT
        log.append(())
        return []

    def trial_ended(self, trial_id: str) -> None:
        if trial_id not in self.live:
            return
        self.ended[trial_id] = self.live.pop(trial_id)
        for run in self.runs_of(trial_id):  # a run it finished stays finished, even if it erred
            if self.run_status(run.run_id) != "finished":
                self.failed.add(run.run_id)

    def runs_of(self, trial_id: str) -> list[RunSpec]:
        """Every run the trial was given: its pack's, then those it took."""
        pack = self.live.get(trial_id) or self.ended.get(trial_id)
        taken = [run for claim in self.claims.get(trial_id, []) for run, _ in claim]
        return [*(pack.runs if pack else ()), *taken]

    def given(self) -> dict[str, list[str]]:
        """Trial id -> the run ids it was given (its pack's and those it took)."""
        trials = {*self.live, *self.ended}
        return {t: [r.run_id for r in self.runs_of(t)] for t in trials}

    def state(self) -> dict:
        return {
            "waiting": [[r.run_id for r in p.runs] for p in self.waiting],
            "live": {t: [r.run_id for r in self.runs_of(t)] for t in self.live},
            "failed": sorted(self.failed),
        }

    def blocked(self) -> dict[str, str]:
        """Runs never started because a teacher failed: run id -> that teacher's run id. (Other
        runs still waiting were cut short by an interruption: they are not blocked.)"""
        self._drop_runs_of_failed_teachers()
        return dict(self.dropped)

    def _take(self, pack: Pack, run: RunSpec) -> None:
        index = self.waiting.index(pack)
        rest = tuple(r for r in pack.runs if r is not run)
        if rest:
            self.waiting[index] = Pack(rest)
        else:
            del self.waiting[index]

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

    def _ready(self, run: RunSpec) -> bool:
        return all(
            t not in self.failed and self.run_status(t) == "finished" for t in run.teacher_runs
        )

    def _can_start(self, pack: Pack) -> bool:
        return all(self._ready(run) for run in pack.runs)

    def _coming(self, run: RunSpec) -> bool:
        """Whether the run will be ready once the live trials finish what they train."""
        training = {r.run_id for t in self.live for r in self.runs_of(t)}
        return all(
            not self._failed(t) and (self.run_status(t) == "finished" or t in training)
            for t in run.teacher_runs
        )


class RunQueue(Searcher):
    """Tune's searcher over the ledger: one pack per new trial (`RunLedger.next_pack`), the
    trial's config from `trial_config(pack, trial_id)`."""

    def __init__(self, ledger: RunLedger | RemoteLedger, trial_config: Callable[[Pack, str], dict]):
        super().__init__()
        self.ledger = ledger
        self.trial_config = trial_config

    def suggest(self, trial_id: str) -> dict | str | None:
        pack = self.ledger.next_pack(trial_id)
        return self.trial_config(pack, trial_id) if isinstance(pack, Pack) else pack

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        self.ledger.trial_ended(trial_id)

    def save(self, checkpoint_path: str) -> None:
        """What Tune checkpoints with its experiment: kept readable (JSON), for people only."""
        Path(checkpoint_path).write_text(json.dumps(self.ledger.state(), indent=1))

    def restore(self, checkpoint_path: str) -> None:
        raise NotImplementedError(
            "kdray resumes a grid from its experiment folder (`kdray resume`), not from "
            "Tune's searcher state"
        )

    def blocked(self) -> dict[str, str]:
        return self.ledger.blocked()


class CloseLedgerOnInterrupt(tune.Callback):
    """Ctrl-C stops Tune's loop, but Tune then gives running trials seconds to stop, in which a
    worker done with a run would take the next one: close the ledger first. Tune installs its
    SIGINT handler before it sets up its callbacks; this wraps it (Tune's handler puts back the
    one from before Tune, so the wrapper goes with it)."""

    def __init__(self, ledger: RemoteLedger):
        self.ledger = ledger

    def setup(self, **info) -> None:
        tune_handler = signal.getsignal(signal.SIGINT)
        if not callable(tune_handler) or threading.current_thread() is not threading.main_thread():
            return

        def close_then_stop(sig, frame):
            self.ledger.actor.close.remote()
            tune_handler(sig, frame)

        signal.signal(signal.SIGINT, close_then_stop)


class RemoteLedger:
    """A `RunLedger` in a Ray actor, called as if it were here (each call waits for its answer).
    `actor` is the handle the trials' workers call."""

    def __init__(self, actor):
        self.actor = actor

    def __getattr__(self, name: str):
        method = getattr(self.actor, name)
        return lambda *args: ray.get(method.remote(*args))


def start_ledger(*args, **kwargs) -> RemoteLedger:
    """A `RunLedger(*args, **kwargs)` in an actor on this (the driver's) node, which holds no
    CPU: it lives and dies with the grid's driver, never with a worker node."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    actor = ray.remote(RunLedger).options(num_cpus=0, scheduling_strategy=here)
    return RemoteLedger(actor.remote(*args, **kwargs))
