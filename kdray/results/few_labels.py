"""The few-labels table: per student and label budget, the no-KD baseline beside every study's
student (and a mean teacher's moving average), in accuracy, balanced accuracy and macro-F1.

Accuracy alone flatters skewed data (always answering "benign" scores 0.73 on BreastMNIST);
balanced accuracy (the mean per-class recall) and macro-F1 do not.
"""

from __future__ import annotations

import pandas as pd

from kdray.results.cells import Cell

METRICS = (
    ("accuracy", "test_acc", "ema_test_acc"),
    ("balanced accuracy", "test_balanced_acc", "ema_test_balanced_acc"),
    ("macro-F1", "test_f1", "ema_test_f1"),
)
BASELINE = "no KD (baseline)"


def _column(cell: Cell, several_teachers: bool) -> str:
    return f"{cell.study} ← {cell.teacher}" if several_teachers else cell.study


def few_labels_table(cells: list[Cell], fmt) -> pd.DataFrame:
    """Rows: (student, budget, metric) on the test split; columns: the baseline, then each
    study's cell (its chosen setting), then `<study> (EMA)` where the method keeps one."""
    several = {s for s in {c.study for c in cells}
               if len({c.teacher for c in cells if c.study == s}) > 1}  # fmt: skip
    columns = list(dict.fromkeys(_column(c, c.study in several) for c in cells))
    with_ema = [c for c in cells if "ema_test_acc" in c.runs and c.runs.ema_test_acc.notna().any()]
    columns += list(dict.fromkeys(f"{_column(c, c.study in several)} (EMA)" for c in with_ema))
    rows = []
    for student in dict.fromkeys(c.student for c in cells):
        mine = [c for c in cells if c.student == student]
        for metric, column, ema_column in METRICS:
            row = {"Student": student, "Test metric": metric}
            row[BASELINE] = fmt(mine[0].baseline[column])
            for c in mine:
                name = _column(c, c.study in several)
                row[name] = fmt(c.runs[column])
                if c in with_ema:
                    row[f"{name} (EMA)"] = fmt(c.runs[ema_column])
            rows.append(row)
    return pd.DataFrame(rows, columns=["Student", "Test metric", BASELINE, *columns]).fillna("—")
