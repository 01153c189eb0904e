"""A grid's searches: Optuna's ask-and-tell, driven from the grid's ledger
(`kdray.grid.ledger.RunLedger`), one Optuna study per searched cell (`kdray.spec.plan.SearchCell`)
in the experiment's journal (`search/journal.log`).

A sample is a KD run on the job's first seed (`kdray.spec.plan.sample_run`), queued as soon as
it is drawn and trained in whatever pack takes it. After each epoch its worker asks `judge`
whether to go on; Optuna's pruner (successive halving, Hyperband) decides, and a run it stops
ends with status `stopped`. Once every sample of a cell has ended, the best finished one on
validation is confirmed: its setting is trained on every seed of the job (`confirm_runs`; the
first seed's run is the sample itself), and those runs are the cell's KD runs in the tables.

What makes a search repeatable whatever the timing (and so after a resume):
- draw k is made only once samples 0 .. k - `parallel` have ended, and those are told to the
  study in order, so the sampler sees the same history (`kdray.grid.optuna_parts`);
- a sample judged at epoch e waits until every earlier sample of its cell was judged at e or
  ended, so the pruner sees each rung's values in sample order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.trial import TrialState

from kdray.grid.optuna_parts import distributions, open_study, sampler_for
from kdray.spec.job import Job
from kdray.spec.plan import Plan, RunSpec, SearchCell, confirm_runs, sample_run
from kdray.spec.search import rounded
from kdray.store.experiment import SEARCH_JOURNAL, Experiment
from kdray.train.more_runs import WAIT

ENDED = ("finished", "stopped", "failed")
GO, STOP = "go", "stop"
Status = Callable[[str], str | None]  # run id -> finished / stopped / failed / None


class CellSearch:
    """One cell's study: its samples by number (`runs`), what was told and judged."""

    def __init__(self, exp: Experiment, job: Job, plan: Plan, cell: SearchCell):
        self.exp, self.job, self.plan, self.cell = exp, job, plan, cell
        self.search = job.search_of(cell.study)
        self.study = open_study(exp.search_dir, cell.key, self.search, job.train.epochs)
        self.space = distributions(self.search)
        trials = self.study.get_trials(deepcopy=False)
        self.trial_ids = [t._trial_id for t in trials]
        # a draw's run id is recorded right after the draw: one a crash cut off is made again
        self.runs = [t.user_attrs.get("run_id") or self._spec(t.params).run_id for t in trials]
        drawn = list(zip(self.runs, trials, strict=True))
        self.judged = {run: t.user_attrs.get("judged", 0) for run, t in drawn}
        self.stopped_at = {
            run: t.user_attrs["stop_epoch"] for run, t in drawn if "stop_epoch" in t.user_attrs
        }
        self.told = sum(1 for t in trials if t.state != TrialState.RUNNING)
        self.ended_epochs: dict[str, int] = {}  # told samples' epochs, for the budget
        self.chosen = self.study.user_attrs.get("chosen")
        known = set(plan.runs)
        self.unqueued = [self._spec(t.params) for run, t in drawn if run not in known]
        if self.unqueued:  # drawn before a crash that cut off their record
            exp.add_runs(self.unqueued)

    # --- drawing samples ----------------------------------------------------------------

    def new_runs(self, status: Status) -> list[RunSpec]:
        """Samples the window and the budget let it draw now; once every sample ended, the
        confirmations."""
        out, self.unqueued = self.unqueued, []
        seed_teachers = self.cell.teacher_runs[self.job.seeds[0]]
        if not all(status(t) == "finished" for t in seed_teachers):
            return out
        while (draw := self._may_draw(status)) is True:
            out.append(self._draw())
        if draw is False and self.chosen is None and self._tell_through(len(self.runs), status):
            out += self._confirm()
        return out

    def _may_draw(self, status: Status) -> bool | None:
        """True: draw the next sample now; False: the cell has drawn all it will; None: not
        before a sample in flight ends. Samples are told in order, only as far as the window
        (`parallel`) and then the budget need, so what the sampler has seen at each draw is
        the same whatever the timing."""
        if len(self.runs) >= self.search.most_samples(self.job.train.epochs):
            return False
        count = max(0, len(self.runs) - self.search.parallel + 1)
        while True:
            if not self._tell_through(count, status):
                return None
            if self._fits_budget():
                return True
            if self.told == len(self.runs):
                return False
            count = self.told + 1

    def _fits_budget(self) -> bool:
        """Whether one more sample fits the budget if each one in flight trains to the end."""
        if self.search.budget is None:
            return True
        epochs = self.job.train.epochs
        spent = sum(self._epochs_trained(run) for run in self.runs[: self.told])
        return spent + epochs * (len(self.runs) - self.told + 1) <= self.search.budget

    def _epochs_trained(self, run: str) -> int:
        """An ended sample's epochs (read once: an ended sample's summary does not change)."""
        if run not in self.ended_epochs:
            summary = self.exp.summary(run) or {}
            self.ended_epochs[run] = int(summary.get("epochs") or self.judged.get(run, 0))
        return self.ended_epochs[run]

    def _draw(self) -> RunSpec:
        number = len(self.runs)
        self.study.sampler = sampler_for(self.search, number, self.job.train.epochs)
        trial = self.study.ask(self.space)
        spec = self._spec(trial.params)
        trial.set_user_attr("run_id", spec.run_id)
        self.exp.add_runs([spec])  # recorded before it is queued: a grid stopped now keeps it
        self.trial_ids.append(trial._trial_id)
        self.runs.append(spec.run_id)
        return spec

    def _spec(self, params: dict) -> RunSpec:
        setting = {name: rounded(params[name]) for name in self.search.space}
        return sample_run(self.job, self.plan, self.cell, setting)

    def _tell_through(self, count: int, status: Status) -> bool:
        """Tell the study how samples before `count` ended, in order; False while one has not."""
        while self.told < count:
            run = self.runs[self.told]
            state = status(run)
            if state not in ENDED:
                return False
            value = self._summary_score(run) if state == "finished" else None
            if value is not None:  # its final validation score, as its summary says
                self._tell(self.told, TrialState.COMPLETE, value)
            else:
                self._tell(self.told, TrialState.PRUNED if state == "stopped" else TrialState.FAIL)
            self.told += 1
        return True

    def _tell(self, number: int, state: TrialState, value: float | None = None) -> None:
        with contextlib.suppress(RuntimeError):  # GridSampler stops at the grid's last point
            self.study.tell(number, value, state=state)

    def _summary_score(self, run: str) -> float | None:
        summary = self.exp.summary(run) or {}
        return summary.get(f"val_{summary.get('primary_metric', 'acc')}")

    def _confirm(self) -> list[RunSpec]:
        """The best finished sample's setting on every seed; None finished: nothing."""
        done = [t for t in self.study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
        if not done:
            self.chosen = -1
            self.study.set_user_attr("chosen", -1)
            return []
        best = max(done, key=lambda t: (t.value, -t.number))
        runs = confirm_runs(self.job, self.plan, self.cell, self._spec(best.params).setting)
        self.exp.add_runs(runs)  # before the choice is recorded: a crash between redoes both
        self.chosen = best.number
        self.study.set_user_attr("chosen", best.number)
        return runs

    # --- early stopping -----------------------------------------------------------------

    def judge(self, run: str, epoch: int, value: float, alive: Callable[[str], bool], status):
        """STOP, GO or WAIT for `run` after `epoch` with validation `value`."""
        if run in self.stopped_at:
            return STOP if epoch >= self.stopped_at[run] else GO
        if epoch <= self.judged.get(run, 0):
            return GO  # judged before (a restarted worker, a resumed run)
        number = self.runs.index(run)
        trial = optuna.trial.Trial(self.study, self.trial_ids[number])
        if epoch not in self.study._storage.get_trial(trial._trial_id).intermediate_values:
            trial.report(value, epoch)  # once: a worker told to wait asks again
        for earlier in self.runs[:number]:
            behind = earlier != run and self.judged.get(earlier, 0) < epoch
            if behind and status(earlier) not in ENDED and alive(earlier):
                return WAIT
        stop = epoch < self.job.train.epochs and trial.should_prune()
        if stop:
            trial.set_user_attr("stop_epoch", epoch)
            self.stopped_at[run] = epoch
        trial.set_user_attr("judged", epoch)
        self.judged[run] = epoch
        return STOP if stop else GO

    def waiting_on(self) -> set[str]:
        """The runs whose end would let this cell go on (empty: done, or blocked)."""
        if self.chosen is not None:
            return set()
        return set(self.runs[self.told :]) | set(self.cell.teacher_runs[self.job.seeds[0]])


class GridSearch:
    """Every searched cell of the experiment's grid."""

    def __init__(self, experiment: str | Path):
        exp = Experiment(Path(experiment))
        job, plan = exp.job(recheck=False), exp.plan()
        self.cells = [CellSearch(exp, job, plan, cell) for cell in plan.searches.values()]
        self.owner = {run: c for c in self.cells for run in c.runs}

    def new_runs(self, status: Status) -> list[RunSpec]:
        """Runs drawn or confirmed now (each cell records them in the experiment as it makes
        them, before they are queued)."""
        out = []
        for cell in self.cells:
            for spec in cell.new_runs(status):
                self.owner.setdefault(spec.run_id, cell)
                out.append(spec)
        return out

    def judge(self, run: str, epoch: int, value: float, alive, status: Status) -> str:
        cell = self.owner.get(run)
        return GO if cell is None else cell.judge(run, epoch, value, alive, status)

    def waiting_on(self) -> set[str]:
        return set().union(*(c.waiting_on() for c in self.cells))


def searches_settled(exp: Experiment) -> bool:
    """Whether every searched cell has chosen its setting (or found no sample finished), read
    from the journal without writing to it: with every run trained too, the grid has nothing
    left for Tune to start."""
    journal = exp.search_dir / SEARCH_JOURNAL
    if not journal.is_file():
        return False
    backend = optuna.storages.journal.JournalFileBackend(str(journal))
    studies = optuna.get_all_study_summaries(optuna.storages.JournalStorage(backend))
    chosen = {study.study_name: study.user_attrs.get("chosen") for study in studies}
    return all(chosen.get(cell.key) is not None for cell in exp.plan().searches.values())
