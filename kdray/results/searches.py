"""What each searched cell did: its samples (finished or stopped), the epochs they trained
against the budget without early stopping, and the setting chosen on validation (whose runs on
every seed are the cell's KD runs, `kdray.results.cells`)."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from kdray.data.budgets import budget_label
from kdray.results.cells import (
    NO_TEACHER,
    budgets,
    has_budgets,
    has_role,
    kd_runs,
    teacher_label,
    with_budget,
    with_labels,
)
from kdray.spec.plan import SearchCell

SEARCH_COLUMNS = [
    "Student", "Teacher", "Samples", "Finished", "Stopped", "Epochs trained", "Budget",
    "Without stopping", "Share", "Chosen", "Chosen valid",
]  # fmt: skip


def sample_runs(trials: pd.DataFrame, study: str) -> pd.DataFrame:
    """The study's searched samples (role `sample:<study>`), with `teacher_label`,
    `setting_label` and `budget`."""
    out = with_labels(trials, trials[has_role(trials, f"sample:{study}")])
    out["budget"] = budgets(out)
    return out


def confirmed_runs(trials: pd.DataFrame, study: str) -> pd.DataFrame:
    """The runs a search confirmed: the study's KD runs, or a searched baseline's runs."""
    if study == "baseline":
        return with_labels(trials, trials[has_role(trials, "baseline")])
    return kd_runs(trials, study)


def searched(trials: pd.DataFrame, study: str) -> bool:
    return not trials[has_role(trials, f"sample:{study}")].empty


def search_table(
    trials: pd.DataFrame, study: str, planned: Iterable[SearchCell] = ()
) -> pd.DataFrame:
    """One row per searched cell of the study (see the module docstring). `Budget`: the epochs
    the cell could spend (its search's `budget`, or every sample to the end); `Without
    stopping`: samples x the epochs a finished sample trained. `planned`: the plan's cells, so
    a cell no sample ran for (its teacher failed, or the grid stopped first) has its row too."""
    samples = sample_runs(trials, study)
    confirmed = confirmed_runs(trials, study)
    confirmed["budget"] = budgets(confirmed)
    shown = has_budgets(trials)
    rows = []
    for (student, budget, teacher), group in samples.groupby(
        ["model", "budget", "teacher_label"], sort=False
    ):
        finished = group[group.status == "finished"]
        epochs = pd.to_numeric(group.epochs).fillna(0)
        full = len(group) * (pd.to_numeric(finished.epochs).max() if len(finished) else 0)
        chosen = confirmed[
            (confirmed.model == student) & (confirmed.budget == budget)
            & (confirmed.teacher_label == teacher)
        ]  # fmt: skip
        chosen_sample = finished[finished.setting_label.isin(set(chosen.setting_label))]
        rows.append(
            {
                "Student": with_budget(student, budget, shown),
                "Teacher": teacher,
                "Samples": len(group),
                "Finished": len(finished),
                "Stopped": int((group.status == "stopped").sum()),
                "Epochs trained": int(epochs.sum()),
                "Budget": _budget(group),
                "Without stopping": int(full),
                "Share": f"{epochs.sum() / full:.2f}" if full else "—",
                "Chosen": chosen.setting_label.iloc[0] if len(chosen) else "—",
                "Chosen valid": (
                    f"{chosen_sample.val_score.iloc[0]:.3f}" if len(chosen_sample) else "—"
                ),
            }
        )
    seen = {(r["Student"], r["Teacher"]) for r in rows}
    for cell in planned:
        if cell.study == study:
            row = unsampled_row(trials, cell, shown)
            if (row["Student"], row["Teacher"]) not in seen:
                rows.append(row)
    return pd.DataFrame(rows, columns=SEARCH_COLUMNS)


def unsampled_row(trials: pd.DataFrame, cell: SearchCell, shown: bool) -> dict:
    """A planned cell's row as it stands before any sample: why none ran."""
    teacher_runs = next(iter(cell.teacher_runs.values()), [])  # the first seed's: the samples'
    rows = trials.set_index("trial_id")
    known = [t for t in teacher_runs if t in rows.index]
    teacher = "+".join(teacher_label(rows.loc[t]) for t in known) or NO_TEACHER
    failed = [t for t in known if rows.loc[t, "status"] == "failed"]
    why = f"none: its teacher run {failed[0]} failed" if failed else "none: not started"
    budget = budget_label(cell.labels) if cell.labels else "all"
    row = dict.fromkeys(SEARCH_COLUMNS, "—")
    row.update(Student=with_budget(cell.student, budget, shown), Teacher=teacher, Chosen=why)
    row.update({"Samples": 0, "Finished": 0, "Stopped": 0, "Epochs trained": 0})
    return row


def _budget(samples: pd.DataFrame) -> str:
    if "search_budget" not in samples:
        return "—"
    known = pd.to_numeric(samples.search_budget).dropna()
    return str(int(known.iloc[0])) if len(known) else "—"
