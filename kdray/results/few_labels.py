"""The few-labels table: per student and label budget, the no-KD baseline beside every study's
student (and a mean teacher's moving average), in the task's primary metric, then balanced
accuracy (single-label) or mean average precision (multi-label), and macro-F1.

Accuracy alone flatters skewed data (always answering "benign" scores 0.73 on BreastMNIST);
balanced accuracy (the mean per-class recall) and macro-F1 do not.
"""

from __future__ import annotations

import pandas as pd

from kdray.results.cells import Cell

SECONDARY = (  # each shown where some run has it: a task computes some of them only
    ("balanced accuracy", "test_balanced_acc", "ema_test_balanced_acc"),
    ("mean average precision", "test_map", None),
    ("macro-F1", "test_f1", "ema_test_f1"),
)
BASELINE = "no KD (baseline)"


def _column(cell: Cell, several_teachers: bool) -> str:
    return f"{cell.study} ← {cell.teacher}" if several_teachers else cell.study


def few_labels_table(cells: list[Cell], fmt_row, title: str = "accuracy") -> pd.DataFrame:
    """Rows: (student, budget, metric) on the test split; columns: the baseline, then each
    study's cell (its chosen setting), then `<study> (EMA)` where the method keeps one.
    `fmt_row`: a row's values from each column's values by seed (`markdown.fmt_row`);
    `title`: how the primary metric (`test_score`) is named."""
    several = {s for s in {c.study for c in cells}
               if len({c.teacher for c in cells if c.study == s}) > 1}  # fmt: skip
    columns = list(dict.fromkeys(_column(c, c.study in several) for c in cells))
    with_ema = [c for c in cells if c.runs.get("ema_test_score", pd.Series()).notna().any()]
    metrics = [(title, "test_score", "ema_test_score")] + [
        m for m in SECONDARY if any(c.runs.get(m[1], pd.Series()).notna().any() for c in cells)
    ]
    columns += list(dict.fromkeys(f"{_column(c, c.study in several)} (EMA)" for c in with_ema))
    rows = []
    for student in dict.fromkeys(c.student for c in cells):
        mine = [c for c in cells if c.student == student]
        for metric, column, ema_column in metrics:
            values = {BASELINE: mine[0].baseline.set_index("seed")[column]}
            for c in mine:
                name = _column(c, c.study in several)
                values[name] = c.runs.set_index("seed")[column]
                if c in with_ema and ema_column is not None:
                    values[f"{name} (EMA)"] = c.runs.set_index("seed")[ema_column]
            rows.append({"Student": student, "Test metric": metric} | fmt_row(values))
    return pd.DataFrame(rows, columns=["Student", "Test metric", BASELINE, *columns]).fillna("—")
