"""Which runs train next, and where: the grid's dependency order, shared by Tune and the workers.

A KD student needs its teachers' weights (and soft labels), so it may start only once all its
teacher runs have finished; everything else may start at once. Instead of a barrier between all
teachers and all students, each pack of students (students sharing their teachers,
`kdray.grid.packing`) is handed to Tune as soon as its teachers are done, so students of one
teacher train while other teachers still do. Packs of teachers go first: they are on the grid's
critical path.

Packs are where runs start, not where they must end: a trial that trained its pack asks the
ledger for more (`RunLedger.more_runs`) and takes the next ready run of a pack still waiting
(work stealing), up to `runs_per_fit` runs a fit (no limit under `runs_per_trial: auto`). So a
slot keeps its one Ray Train fit while there is work for it, instead of paying a new fit's
start-up per pack, and no slot idles while another holds a tail of runs. While the only runs
left wait on teachers that other trials are training, the asking trial waits for them, up to
`WAIT_LIMIT_S`; when nothing left can come its way, it ends.

The ledger (`kdray.grid.ledger.RunLedger`, in run ids) lives in one Ray actor on the driver's
node (`start_ledger`), which Tune's searcher (`RunQueue`) and the trials' workers both call. Its
state is rebuilt from the experiment folder by every grid session (a run is done when its
summary.json says so), so a resumed grid needs no saved scheduler state: it queues the runs that
are not done.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import ray
from ray.tune.search import Searcher

from kdray.grid import ledger
from kdray.grid.ledger import RunLedger
from kdray.grid.packing import Pack
from kdray.spec.plan import RunSpec

assert ledger.FINISHED == Searcher.FINISHED


def ledger_packs(packs: list[Pack]) -> tuple[list[tuple[str, ...]], dict[str, tuple[str, ...]]]:
    """`RunLedger`'s first two arguments for `packs`: the packs as run ids, each run's teachers."""
    ids = [tuple(r.run_id for r in p.runs) for p in packs]
    teachers = {r.run_id: tuple(r.teacher_runs) for p in packs for r in p.runs}
    return ids, teachers


class RunQueue(Searcher):
    """Tune's searcher over the ledger: one pack per new trial (`RunLedger.next_pack`), the
    trial's config from `trial_config(pack, trial_id)`; `packs` are the ledger's, as runs, and
    `planned()` the plan's runs when the ledger hands out one made during the grid (a search's).
    `on_start` is called once, when Tune's loop first asks for a trial.

    Tune asks for a trial at every step of its loop (about ten a second) while it has none
    pending; with `max_concurrent` (the ledger's) trials live the answer is no, so the queue
    gives it without a call to the ledger's actor (each a round trip and reads of run folders,
    CPU taken from the trials on a small machine)."""

    def __init__(
        self,
        ledger: RunLedger | RemoteLedger,
        packs: list[Pack],
        trial_config: Callable[[Pack, str], dict],
        on_start: Callable[[], None] | None = None,
        planned: Callable[[], dict[str, RunSpec]] | None = None,
        max_concurrent: int | None = None,
    ):
        super().__init__()
        self.ledger = ledger
        self.runs = {r.run_id: r for p in packs for r in p.runs}
        self.trial_config = trial_config
        self.on_start = on_start
        self.planned = planned  # every run of the plan now, with those a search made
        self.max_concurrent = max_concurrent
        self.live: set[str] = set()  # trials given a pack and not complete

    def suggest(self, trial_id: str) -> dict | str | None:
        if self.on_start is not None:
            self.on_start()
            self.on_start = None
        if self.max_concurrent is not None and len(self.live) >= self.max_concurrent:
            return None  # every slot is taken: the ledger would say the same
        pack = self.ledger.next_pack(trial_id)
        if not isinstance(pack, tuple):
            return pack  # None, or FINISHED
        self.live.add(trial_id)
        if self.planned is not None and not set(pack) <= set(self.runs):
            self.runs.update(self.planned())  # a run a search made during the grid
        return self.trial_config(Pack(tuple(self.runs[r] for r in pack)), trial_id)

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        """The ledger already holds at most `max_concurrent` trials live: True tells Tune's
        `ConcurrencyLimiter` (which `TuneConfig.max_concurrent_trials` puts around a searcher)
        to leave the limit to it. The limiter is there for what it tells Tune: to create that
        many trials at once. Without it, Tune creates a custom searcher's next trial only once
        the last one runs, so each slot's trial driver started a process start-up (~5 s on 2
        cores) after the one before."""
        return True

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        self.live.discard(trial_id)
        self.ledger.trial_ended(trial_id)

    def save(self, checkpoint_path: str) -> None:
        """What Tune checkpoints with its experiment: kept readable (JSON), for people only."""
        Path(checkpoint_path).write_text(json.dumps(self.ledger.state(), indent=1))

    def restore(self, checkpoint_path: str) -> None:
        """Never used: kdray does not call `Tuner.restore`, so Tune never asks for this."""
        raise RuntimeError(
            "kdray resumes a grid from its experiment folder (`kdray resume`), not from "
            "Tune's searcher state"
        )

    def blocked(self) -> dict[str, str]:
        return self.ledger.blocked()


def close_ledger_on_interrupt(ledger: RemoteLedger) -> None:
    """Ctrl-C stops Tune's loop, but Tune then gives running trials seconds to stop, in which a
    worker done with a run would take the next one: close the ledger first. Called once Tune
    installed its SIGINT handler (in `tune.run`, before its loop asks the searcher for trials),
    this wraps it; Tune's handler puts back the one from before Tune, so the wrapper goes with
    it. Not a `tune.Callback`: for its usage statistics Tune sorts its users' callbacks against
    its MLflow, W&B, Comet and Aim callbacks, importing mlflow and wandb (~0.9 s on the driver
    before the first trial starts)."""
    tune_handler = signal.getsignal(signal.SIGINT)
    if not callable(tune_handler) or threading.current_thread() is not threading.main_thread():
        return

    def close_then_stop(sig, frame):
        ledger.actor.close.remote()
        tune_handler(sig, frame)

    signal.signal(signal.SIGINT, close_then_stop)


class RemoteLedger:
    """A `RunLedger` in a Ray actor, called as if it were here (each call waits for its answer).
    `actor` is the handle the trials' workers call."""

    def __init__(self, actor):
        self.actor = actor

    def __getattr__(self, name: str):
        if name == "actor" or name.startswith("__"):
            # not set yet (an instance being unpickled: Tune reads back its trials' configs),
            # or a protocol pickle asks for: not a call to the ledger
            raise AttributeError(name)
        method = getattr(self.actor, name)
        return lambda *args: ray.get(method.remote(*args))


def start_ledger(*args, **kwargs) -> RemoteLedger:
    """A `RunLedger(*args, **kwargs)` in an actor on this (the driver's) node, which holds no
    CPU: it lives and dies with the grid's driver, never with a worker node."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # read here, in the driver, not as a default in the actor's own process: a test that loses
    # a node shortens the wait (`ledger.WAIT_LIMIT_S`) instead of sitting it out
    kwargs.setdefault("wait_limit_s", ledger.WAIT_LIMIT_S)
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    actor = ray.remote(RunLedger).options(num_cpus=0, scheduling_strategy=here)
    return RemoteLedger(actor.remote(*args, **kwargs))
