"""A trial's runs beyond its pack: what its worker asks the grid's ledger for
(`kdray.grid.ledger.RunLedger.more_runs`) once the pack is done. Kept light: the ledger's actor
imports `WAIT` from here."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kdray.spec.plan import RunSpec
    from kdray.train.trial import TrialConfig

WAIT = "wait"  # the ledger's answer while the runs left wait on teachers other trials train


def runs_to_train(trial: TrialConfig, wait_s: float = 0.5) -> Iterator[tuple[RunSpec, int]]:
    """The pack's runs, then the runs the grid's ledger gives this trial one by one (waiting
    while the runs left wait on teachers other trials train), each with how often it was
    started before this grid session. Every rank, and a restarted worker, gets the same runs
    in the same order (the ledger records its answers)."""
    import ray

    from kdray.store.experiment import Experiment

    for spec in trial.runs:
        yield spec, trial.earlier_attempts.get(spec.run_id, 0)
    call, runs = 0, None
    while trial.ledger is not None:
        try:
            got = ray.get(trial.ledger.more_runs.remote(trial.pack_id, call))
        except ray.exceptions.RayActorError:  # the grid's driver is gone: take nothing more
            return
        if got == WAIT:
            time.sleep(wait_s)
            continue
        if not got:
            return
        if runs is None or any(run_id not in runs for run_id, _ in got):
            runs = Experiment(trial.experiment).plan().runs  # a search adds runs as it goes
        for run_id, earlier in got:
            yield runs[run_id], earlier
        call += 1


def judge_epoch(trial: TrialConfig, run_id: str, epoch: int, value: float, wait_s: float = 0.2):
    """Whether a searched sample stops after `epoch` (the grid's ledger asks the search's
    pruner; it answers `WAIT` while earlier samples of the cell have not reached the epoch, and
    while the grid is stopping). No ledger (a run outside a grid): go on. A ledger gone with
    its grid: wait to be stopped too, as while the grid stops (a sample trained on unjudged
    would end with a curve its search never saw)."""
    import ray

    while trial.ledger is not None:
        try:
            answer = ray.get(trial.ledger.judge.remote(run_id, epoch, value))
        except ray.exceptions.RayActorError:
            answer = WAIT
        if answer != WAIT:
            return answer == "stop"
        time.sleep(wait_s)
    return False
