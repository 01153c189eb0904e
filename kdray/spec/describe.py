"""A job's grid described for people: what `kdray validate` prints per study."""

from __future__ import annotations

from kdray.data.budgets import budget_label
from kdray.methods import METHODS
from kdray.spec.job import Job
from kdray.spec.plan import Plan


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """`1 seed`, `3 seeds`; `1 study`, `2 studies` (`plural` given)."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def study_lines(job: Job, plan: Plan) -> list[str]:
    """One line per study: its method, what it reads from teachers, its KD runs."""
    lines = []
    for name, study in job.studies.items():
        if study.search is not None:
            lines.append(search_line(job, plan, name))
            continue
        method = METHODS[study.method_name()]
        runs = [r for r in plan.runs.values() if f"kd:{name}" in r.roles]
        reads = {r.teacher_outputs for r in runs} - {None}
        source = f"teacher {'/'.join(sorted(reads))}" if reads else "no teacher"
        recipe = (
            f", defective band {list(study.teacher_val_band)}" if study.teacher_val_band else ""
        )
        axes = [
            counted(len(study.students), "student"),
            counted(max(1, len(study.teachers)), "teacher"),
            counted(len(job.seeds), "seed"),
        ]
        axes += [f"{key} {values} ({len(values)})" for key, values in study.sweep.items()]
        if job.labelled is not None:
            budgets = [budget_label(b) for b in job.label_budgets()]
            pool = ", students also on the unlabelled pool" if study.unlabelled else ""
            axes.append(f"labels {budgets} ({len(budgets)}){pool}")
        kd_runs = counted(len(runs), "KD run")
        lines.append(
            f"study {name}: method {method.name} ({source}{recipe}), {kd_runs} = "
            + " x ".join(axes)
        )
    return lines


def search_line(job: Job, plan: Plan, name: str) -> str:
    """A searched study: its cells, samples, sampler, early stopping and confirmation."""
    study = job.studies[name]
    search = study.search
    cells = [c for c in plan.searches.values() if c.study == name]
    stop = search.early_stop
    stopping = (
        "no early stopping"
        if stop.rule == "none"
        else f"{stop.rule} from epoch {stop.grace_epochs}, keeping ~1 in {stop.reduction_factor}"
    )
    epochs = job.train.epochs
    samples = counted(search.most_samples(epochs), "sample")
    if search.budget is not None:
        samples = f"up to {samples}"
    return (
        f"study {name}: method {study.method_name()}, searched: {counted(len(cells), 'cell')} x "
        f"{samples} ({search.algorithm}, seed {search.seed}) of "
        f"{', '.join(search.space)} on seed {job.seeds[0]}, {stopping} (at most "
        f"{search.cell_budget(epochs)} epochs a cell); the best on validation confirmed on "
        f"{counted(len(job.seeds), 'seed')}"
    )


def _spent_as(search, epochs: int, by_budget: bool) -> str:
    """What a search's compute is compared by: its budget, or its samples and stopping."""
    if by_budget:
        return f"budget {search.budget}"
    stop = search.early_stop
    rule = (
        stop.rule
        if stop.rule == "none"
        else f"{stop.rule} {stop.grace_epochs}/{stop.reduction_factor}"
    )
    return f"{search.most_samples(epochs)} samples/{rule}"


def budget_warnings(job: Job) -> list[str]:
    """Searched studies compared at unequal budgets: one line. Equal `budget`s are equal
    compute whatever the samples and stopping; without them, the samples and early stopping
    must match."""
    searches = {name: s.search for name, s in job.studies.items() if s.search is not None}
    by_budget = all(s.budget is not None for s in searches.values())
    spent = {n: _spent_as(s, job.train.epochs, by_budget) for n, s in searches.items()}
    if len(set(spent.values())) <= 1:
        return []
    shown = ", ".join(f"{name} {budget}" for name, budget in spent.items())
    return [
        f"studies: searched with different budgets ({shown}): their methods are not compared "
        "at equal compute; give every search the same budget (epochs a cell), or the same "
        "samples and early_stop"
    ]
