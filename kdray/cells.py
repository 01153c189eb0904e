"""KD cells: per study, one cell per (student, teacher); when the study sweeps its method's
parameters, the cell holds every setting and the one chosen on validation (mean validation
accuracy over seeds: the test split chooses nothing); each cell's paired gain over the same
student's no-KD baseline (`kdray.stats`), Holm-corrected across the cells of its study."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd

from kdray.stats import Gain, judge, paired_gain, probability_of_improvement

NO_TEACHER = "no teacher"


def has_role(trials: pd.DataFrame, role: str) -> pd.Series:
    # bool even when empty: an empty object Series would index columns, not rows
    return trials.roles.apply(lambda rs: role in list(rs)).astype(bool)


def baseline_rows(trials: pd.DataFrame) -> pd.DataFrame:
    return trials[has_role(trials, "baseline")]


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
    runs = trials[has_role(trials, f"kd:{study}")].copy()
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

    @property
    def runs(self) -> pd.DataFrame:
        """The chosen setting's runs: what the cell reports."""
        return self.settings[self.chosen]

    def pairs(self) -> list[tuple[float, float]]:
        """(KD, baseline) test accuracy per seed both have."""
        kd, base = by_seed(self.runs), by_seed(self.baseline)
        return [(kd[s], base[s]) for s in sorted(set(kd) & set(base))]


def by_seed(runs: pd.DataFrame, column: str = "test_acc") -> dict[int, float]:
    runs = runs[pd.to_numeric(runs[column], errors="coerce").notna()]
    return {int(s): float(v) for s, v in zip(runs.seed, runs[column], strict=True)}


def choose_on_validation(settings: dict[str, pd.DataFrame]) -> str:
    """The setting with the best mean validation accuracy over seeds (first wins a tie)."""
    means = {label: pd.to_numeric(runs.val_acc).mean() for label, runs in settings.items()}
    scored = {k: v for k, v in means.items() if pd.notna(v)}
    return max(scored, key=scored.get) if scored else next(iter(settings))


def study_cells(trials: pd.DataFrame, study: str) -> list[Cell]:
    """The study's cells in table order, their gains judged together (Holm)."""
    runs, baselines = kd_runs(trials, study), baseline_rows(trials)
    cells = []
    for (student, teacher), group in runs.groupby(["model", "teacher_label"], sort=False):
        settings = {label: g for label, g in group.groupby("setting_label", sort=False)}
        chosen = choose_on_validation(settings)
        base = baselines[baselines.model == student]
        gain = paired_gain(by_seed(settings[chosen]), by_seed(base))
        method = str(group.method.iloc[0])
        cells.append(Cell(study, method, student, teacher, settings, chosen, base, gain))
    judge([c.gain for c in cells])
    return cells


def improvement(cells: list[Cell]) -> tuple[int, float | None]:
    """(paired runs, share where KD beat its baseline) over the cells of one study."""
    pairs = [p for cell in cells for p in cell.pairs()]
    return len(pairs), probability_of_improvement(pairs)
