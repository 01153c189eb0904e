"""Which runs share a trial: packs of runs trained one after another in one Ray Train fit.

Every Ray Train fit pays a start-up (new controller and worker processes, each importing torch:
10-36 s on 2 CPU cores, ~25 s on a GPU node; `../shared/notes/trial-cost.md`) that a short run
cannot amortise. A pack pays it once for several runs. A pack holds runs of one stage, and it may
start once every teacher of its runs finished: runs without a teacher come first (their packs
are ready at once), then students ordered by their teachers, so a pack's students share their
teachers or have neighbours' (seeds of a study: teachers trained side by side). A stage is cut
into packs of at most `runs_per_trial` runs, but into at least as many packs as there are trial
slots (when it has that many runs), sizes within one of each other: every slot gets work. Packs
are where fits start: a fit done with its pack takes runs of packs still waiting
(`kdray.grid.ledger.RunLedger.more_runs`; up to `runs_per_trial` runs when that is a number,
without a limit under `auto`), so no slot is left with a long tail.

`resources.runs_per_trial: auto` packs when a run is short against the start-up: when a run's
work (training images x epochs x pixels per image) is below `SHORT_RUN_WORK`, about ten minutes
of a small CNN on one CPU core; longer runs train one per trial, as before packing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kdray.data.cache import DataInfo
from kdray.spec.job import Job
from kdray.spec.plan import RunSpec

SHORT_RUN_WORK = 2e8  # training images x epochs x pixels: the quickstart's runs are 3.3e6
AUTO_RUNS_PER_TRIAL = 8  # the most runs `auto` puts in one pack


@dataclass(frozen=True, eq=False)  # each pack is its own (hashed by identity)
class Pack:
    runs: tuple[RunSpec, ...]

    @property
    def teacher_runs(self) -> set[str]:
        return {t for run in self.runs for t in run.teacher_runs}


def runs_per_trial(job: Job, data: DataInfo) -> int:
    """The job's `resources.runs_per_trial`, `auto` resolved for this data."""
    setting = job.resources.runs_per_trial
    if setting != "auto":
        return setting
    work = data.counts.get("train", 0) * job.train.epochs * math.prod(data.spatial)
    return AUTO_RUNS_PER_TRIAL if work < SHORT_RUN_WORK else 1


def runs_per_fit(job: Job, data: DataInfo) -> int | None:
    """The most runs one fit trains, its pack's and those it takes (`RunLedger.more_runs`):
    a `runs_per_trial` number caps it; `auto` packing short runs does not (None), since each
    new fit adds only its start-up (a slot of a 16-sample search or seed sweep started a second
    fit after 8 runs, ~15 s); `auto` leaving long runs alone keeps a fit to its run."""
    per_trial = runs_per_trial(job, data)
    return None if job.resources.runs_per_trial == "auto" and per_trial > 1 else per_trial


def pack_runs(runs: list[RunSpec], per_trial: int, slots: int) -> list[Pack]:
    """The runs cut into packs, stage by stage (see the module docstring)."""
    teachers = list(dict.fromkeys(tuple(r.teacher_runs) for r in runs))
    packs = []
    for stage in dict.fromkeys(r.stage for r in runs):
        group = sorted(
            (r for r in runs if r.stage == stage),
            key=lambda r: (bool(r.teacher_runs), teachers.index(tuple(r.teacher_runs))),
        )
        count = max(math.ceil(len(group) / per_trial), min(len(group), slots))
        for part in np.array_split(np.arange(len(group)), count):
            packs.append(Pack(tuple(group[i] for i in part)))
    return packs
