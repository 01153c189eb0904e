"""What a `search:` block becomes in Optuna: distributions, a sampler per draw, a pruner, and
the journal that keeps a search's state in the experiment folder.

A sampler is made anew for each draw, seeded by the search's seed and the draw's number: Optuna
keeps a sampler's random state in memory only (a sampler re-seeded on resume proposes trial 0's
setting again), so draw k depends only on (seed, k, the trials the study holds), and a resumed
search draws what the uninterrupted one would have.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from kdray.spec.search import Choice, IntRange, LogUniform, Search, Uniform, grid_values
from kdray.store.experiment import SEARCH_JOURNAL

optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is the grid's job
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def distributions(search: Search) -> dict[str, BaseDistribution]:
    out: dict[str, BaseDistribution] = {}
    for name, dimension in search.space.items():
        if isinstance(dimension, Uniform):
            out[name] = FloatDistribution(*dimension.uniform)
        elif isinstance(dimension, LogUniform):
            out[name] = FloatDistribution(*dimension.loguniform, log=True)
        elif isinstance(dimension, IntRange):
            out[name] = IntDistribution(*dimension.whole)
        elif isinstance(dimension, Choice):
            out[name] = CategoricalDistribution(dimension.choice)
    return out


def startup_trials(search: Search, epochs: int) -> int:
    """TPE's random draws before it models the results: half the samples, 2 to 10 (Optuna's
    default of 10 would leave a 16-sample search only 6 guided draws)."""
    return max(2, min(10, search.most_samples(epochs) // 2))


def sampler_for(search: Search, number: int, epochs: int) -> optuna.samplers.BaseSampler:
    """The sampler that makes draw `number` (see the module docstring)."""
    seed = search.seed * 1_000_003 + number
    if search.algorithm == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if search.algorithm == "grid":
        space = {name: grid_values(d) for name, d in search.space.items()}
        return optuna.samplers.GridSampler(space, seed=search.seed)
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=startup_trials(search, epochs), multivariate=True
    )


def pruner_for(search: Search, epochs: int) -> optuna.pruners.BasePruner:
    stop = search.early_stop
    if stop.rule == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=stop.grace_epochs, reduction_factor=stop.reduction_factor
        )
    if stop.rule == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=stop.grace_epochs,
            max_resource=epochs,
            reduction_factor=stop.reduction_factor,
        )
    return optuna.pruners.NopPruner()


def open_study(folder: Path, name: str, search: Search, epochs: int) -> optuna.Study:
    """The cell's study in the experiment's journal (created, or loaded on resume)."""
    folder.mkdir(parents=True, exist_ok=True)
    backend = optuna.storages.journal.JournalFileBackend(str(folder / SEARCH_JOURNAL))
    return optuna.create_study(
        study_name=name,
        storage=optuna.storages.JournalStorage(backend),
        direction="maximize",
        pruner=pruner_for(search, epochs),
        load_if_exists=True,
    )
