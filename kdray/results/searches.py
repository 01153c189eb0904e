"""What each searched cell did: its samples (finished or stopped), the epochs they trained
against the budget without early stopping, and the setting chosen on validation (whose runs on
every seed are the cell's KD runs, `kdray.results.cells`)."""

from __future__ import annotations

import pandas as pd

from kdray.results.cells import (
    budgets,
    has_budgets,
    has_role,
    kd_runs,
    with_budget,
    with_labels,
)

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


def search_table(trials: pd.DataFrame, study: str) -> pd.DataFrame:
    """One row per searched cell of the study (see the module docstring). `Budget`: the epochs
    the cell could spend (its search's `budget`, or every sample to the end); `Without
    stopping`: samples x the epochs a finished sample trained."""
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
    return pd.DataFrame(rows, columns=SEARCH_COLUMNS)


def _budget(samples: pd.DataFrame) -> str:
    if "search_budget" not in samples:
        return "—"
    known = pd.to_numeric(samples.search_budget).dropna()
    return str(int(known.iloc[0])) if len(known) else "—"
