"""KD cells: per study, one cell per (student, label budget, teacher); when the study sweeps its
method's parameters, the cell holds every setting and the one chosen on validation (mean validation
accuracy over seeds: the test split chooses nothing); each cell's paired gain over the same
student's no-KD baseline (`kdray.results.stats`), Holm-corrected across the cells of its study."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import NamedTuple

import pandas as pd

from kdray.results.stats import Gain, judge, paired_gain, probability_of_improvement
from kdray.tasks import get_task

NO_TEACHER = "no teacher"


def metric_title(trials: pd.DataFrame) -> str:
    """How tables name the runs' primary metric (`<split>_score`): "accuracy", "mean AUROC"."""
    tasks = trials["task"].dropna() if "task" in trials else pd.Series(dtype=object)
    return get_task(tasks.iloc[0]).primary_title if len(tasks) else "accuracy"


def has_role(trials: pd.DataFrame, role: str) -> pd.Series:
    # bool even when empty: an empty object Series would index columns, not rows
    return trials.roles.apply(lambda rs: role in list(rs)).astype(bool)


def baseline_rows(trials: pd.DataFrame) -> pd.DataFrame:
    return trials[has_role(trials, "baseline")]


def budgets(trials: pd.DataFrame) -> pd.Series:
    """Each run's label budget ("10%", ...; "all" for every label)."""
    if "labels" not in trials:
        return pd.Series("all", index=trials.index, dtype=object)
    return trials["labels"].astype(object).where(trials["labels"].notna(), "all")


def has_budgets(trials: pd.DataFrame) -> bool:
    return "labels" in trials and bool(trials["labels"].notna().any())


def with_budget(name: str, budget: str, shown: bool) -> str:
    """`resnet10t (10% labels)` where the job has label budgets, else the name alone."""
    return f"{name} ({budget} labels)" if shown else name


def teacher_label(row) -> str:
    """A teacher run's name in tables: its model, and its band for a defective teacher."""
    if pd.notna(row["band_low"]):
        return f"{row['model']} [{row['band_low']:.2f}, {row['band_high']:.2f}]"
    return row["model"]


def setting_label(setting) -> str:
    """`temperature=4, alpha=0.5` from a run's `setting` JSON; "" without a sweep."""
    if setting is None or (isinstance(setting, float) and pd.isna(setting)) or not setting:
        return ""
    return ", ".join(f"{k}={v}" for k, v in json.loads(setting).items())


def kd_runs(trials: pd.DataFrame, study: str) -> pd.DataFrame:
    """The study's KD runs, with `teacher_label` (the teacher model and its band, "+"-joined
    for an ensemble, `no teacher` for a teacher-free method) and `setting_label`."""
    return with_labels(trials, trials[has_role(trials, f"kd:{study}")])


def with_labels(trials: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """`runs` (rows of `trials`) with `teacher_label` and `setting_label` (see `kd_runs`)."""
    runs = runs.copy()
    labels = {row.trial_id: teacher_label(row) for _, row in trials.iterrows()}
    runs["teacher_label"] = [
        "+".join(labels.get(t, t) for t in ids) if len(ids) else NO_TEACHER
        for ids in runs.teacher_trial_ids
    ]
    runs["setting_label"] = [setting_label(s) for s in runs.setting]
    return runs


@dataclass
class Cell:
    study: str
    method: str
    student: str
    teacher: str
    settings: dict[str, pd.DataFrame]  # setting label -> its runs ("" without a sweep)
    chosen: str
    baseline: pd.DataFrame
    gain: Gain
    budget: str = "all"  # the label budget of the cell's runs and baseline

    @property
    def runs(self) -> pd.DataFrame:
        """The chosen setting's runs: what the cell reports."""
        return self.settings[self.chosen]

    def pairs(self) -> list[tuple[float, float]]:
        """(KD, baseline) test accuracy per seed both have."""
        kd, base = by_seed(self.runs), by_seed(self.baseline)
        return [(kd[s], base[s]) for s in sorted(set(kd) & set(base))]

    def paired_runs(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The chosen runs and the baseline runs of the seeds the gain pairs (both whole when
        no seed is common): in a grid still running, KD seed 0 against baseline seed 0 alone."""
        seeds = set(by_seed(self.runs)) & set(by_seed(self.baseline))
        if not seeds:
            return self.runs, self.baseline
        return self.runs[self.runs.seed.isin(seeds)], self.baseline[self.baseline.seed.isin(seeds)]


class Unfinished(NamedTuple):
    """A study's cell with no finished run yet: its runs' state and the student's baseline."""

    student: str
    teacher: str
    status: str  # "pending" while any run may still run, else "failed" (or "stopped")
    baseline: pd.DataFrame


def by_seed(runs: pd.DataFrame, column: str = "test_score") -> dict[int, float]:
    runs = runs[pd.to_numeric(runs[column], errors="coerce").notna()]
    return {int(s): float(v) for s, v in zip(runs.seed, runs[column], strict=True)}


def choose_on_validation(settings: dict[str, pd.DataFrame]) -> str:
    """The setting with the best mean validation accuracy over seeds (first wins a tie)."""
    means = {label: pd.to_numeric(runs.val_score).mean() for label, runs in settings.items()}
    scored = {k: v for k, v in means.items() if pd.notna(v)}
    return max(scored, key=scored.get) if scored else next(iter(settings))


def study_cells(trials: pd.DataFrame, study: str) -> list[Cell]:
    """The study's cells in table order, their gains judged together (Holm)."""
    runs, baselines = kd_runs(trials, study), baseline_rows(trials)
    runs["budget"], base_budgets = budgets(runs), budgets(baselines)
    shown = has_budgets(trials)
    cells = []
    for (student, budget, teacher), group in runs.groupby(
        ["model", "budget", "teacher_label"], sort=False
    ):
        settings = {label: g for label, g in group.groupby("setting_label", sort=False)}
        chosen = choose_on_validation(settings)
        base = baselines[(baselines.model == student) & (base_budgets == budget)]
        gain = paired_gain(by_seed(settings[chosen]), by_seed(base))
        method = str(group.method.iloc[0])
        name = with_budget(student, budget, shown)
        cells.append(Cell(study, method, name, teacher, settings, chosen, base, gain, budget))
    judge([c.gain for c in cells])
    return cells


def unfinished_cells(trials: pd.DataFrame, study: str) -> list[Unfinished]:
    """The study's cells none of whose runs finished (a grid still running, a failed teacher),
    so that a table keeps their column and says why it is empty."""
    runs, done = kd_runs(trials, study), trials[trials.status == "finished"]
    baselines = baseline_rows(done)
    runs["budget"], base_budgets = budgets(runs), budgets(baselines)
    shown = has_budgets(done)
    out = []
    for (student, budget, teacher), group in runs.groupby(
        ["model", "budget", "teacher_label"], sort=False
    ):
        if (group.status == "finished").any():
            continue
        states = set(group.status)
        status = next((s for s in ("pending", "failed") if s in states), group.status.iloc[0])
        base = baselines[(baselines.model == student) & (base_budgets == budget)]
        out.append(Unfinished(with_budget(student, budget, shown), teacher, status, base))
    return out


def improvement(cells: list[Cell]) -> tuple[int, float | None]:
    """(paired runs, share where KD beat its baseline) over the cells of one study."""
    pairs = [p for cell in cells for p in cell.pairs()]
    return len(pairs), probability_of_improvement(pairs)
