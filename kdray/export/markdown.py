"""Thesis-style tables from `trials.parquet`, as Markdown (and for the HTML report).

Every number is the task's primary metric (`<split>_score`: accuracy for single-label data, mean
AUROC for multi-label), named in each title.

teachers.md   each teacher: train / valid / test accuracy
<study>.md    Student x Teacher, a train / valid / test row per student, plus its no-KD baseline
              (one per study of the job, named after it; an ensemble is one teacher column)
baseline.md   each student trained without KD
summary.md    each KD cell's test accuracy against its student's baseline: the paired gain, its
              interval, p, n and verdict (`kdray.results.cells`, `kdray.results.stats`); how
              often KD won; what each KD student costs against its teacher
              (`kdray.results.cost_ratios`)
<study>.sensitivity.md  a sweeping study's every setting, valid and test, the chosen one marked
<study>.search.md  a searching study's samples per cell: finished, stopped, epochs trained against
              the budget without stopping, the setting chosen (`kdray.results.searches`)
labels.md     with label budgets: per student and budget, baseline vs every study (and a mean
              teacher's moving average) in test accuracy, balanced accuracy and macro-F1
report.html   all of these tables with figures, one self-contained file (`kdray.export.report`)
Values are `mean ± std` over seeds when a cell has several; `(n=1)` after each value of a row
whose values are over different seeds (a grid still running); summary.md's KD and baseline are
over the seeds the gain pairs. `tables` computes the tables once, for both the Markdown files and
the report.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from kdray.results.cells import (
    Cell,
    Unfinished,
    baseline_rows,
    budgets,
    has_budgets,
    has_role,
    improvement,
    kd_runs,
    metric_title,
    study_cells,
    teacher_label,
    unfinished_cells,
    with_budget,
)
from kdray.results.cost_ratios import compression_note, compression_table
from kdray.results.few_labels import few_labels_table
from kdray.results.searches import search_table, searched
from kdray.results.stats import BOOTSTRAP_FROM, MIN_SEEDS, signed
from kdray.spec.plan import SearchCell

EMPTY_NOTE = "_no finished trials_"
SPLITS = (("train", "train_score"), ("valid", "val_score"), ("test", "test_score"))
BASELINE_COLUMN = "no KD (baseline)"
CHOSEN_ROW = "setting (chosen on valid)"
SUMMARY_COLUMNS = [
    "Study",
    "Method",
    "Student",
    "Teacher",
    "Setting",
    "Teacher valid",
    "KD test",
    "Baseline test",
    "Gain",
    "95% interval",
    "p (Holm)",
    "n",
    "Verdict",
]
SENSITIVITY_COLUMNS = ["Student", "Teacher", "Setting", "Valid", "Test", "Seeds", "Chosen"]


def statistics_note(title: str = "accuracy") -> str:
    """How the KD gain table was computed; `title`: the primary metric's name."""
    return (
        f"Gain: mean over seeds of (KD − baseline) test {title}, each KD run paired with the "
        "same student's no-KD run of the same seed. Interval: 95%, a t-interval below "
        f"{BOOTSTRAP_FROM} seeds, a BCa bootstrap from {BOOTSTRAP_FROM}. p: paired t-test, "
        "Holm-corrected across the cells of a study. Verdict: better / worse when that p < "
        f"0.05, else no evidence; below {MIN_SEEDS} seeds, n too small. A sweeping study "
        f"reports the setting with the best mean validation {title}; the test split chooses "
        "nothing."
    )


STATISTICS_NOTE = statistics_note()


def fmt(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return "—"
    if len(values) == 1:
        return f"{values.iloc[0]:.3f}"
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}"


def fmt_row(columns: dict[str, pd.Series]) -> dict[str, str]:
    """One table row's values (`fmt`), each column a Series of its runs' values indexed by
    seed. Where the columns' seeds differ (a grid still running: one KD seed beside three
    baseline seeds), each value says how many seeds it holds, `0.700 (n=1)`, so that unlike
    means are not read as alike."""
    held = {k: frozenset(v.dropna().index) for k, v in columns.items()}
    differ = len({s for s in held.values() if s}) > 1
    return {
        k: fmt(v) + (f" (n={len(held[k])})" if differ and held[k] else "")
        for k, v in columns.items()
    }


def fmt_count(values: pd.Series) -> str:
    """Epochs: `4` when whole (a defective teacher may stop mid-epoch: `1.5`, `2.27` for
    34 steps of 15)."""
    values = values.dropna()
    if values.empty:
        return "—"
    if values.nunique() == 1:  # one seed, or every seed the same
        return f"{round(values.iloc[0], 2):g}"
    return f"{values.mean():.4g} ± {values.std(ddof=1):.2g}"


def markdown(df: pd.DataFrame) -> str:
    header = "| " + " | ".join(str(c) for c in df.columns) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    rows = ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([header, rule, *rows]) + "\n"


def teachers_table(trials: pd.DataFrame) -> pd.DataFrame:
    teachers = trials[trials.stage == "teacher"].copy()
    if teachers.empty:
        return pd.DataFrame(columns=["Teacher", "Used by", "Epochs", "Train", "Valid", "Test"])
    shown = has_budgets(trials)
    teachers["label"] = [
        with_budget(teacher_label(row), budget, shown)
        for (_, row), budget in zip(teachers.iterrows(), budgets(teachers), strict=True)
    ]
    rows = []
    for label, group in teachers.groupby("label", sort=False):
        roles = sorted({r.split(":", 1)[1] for rs in group.roles for r in rs if ":" in r})
        rows.append(
            {
                "Teacher": label,
                "Used by": ", ".join(roles),
                "Epochs": fmt_count(group.epochs),
                **{name.capitalize(): fmt(group[col]) for name, col in SPLITS},
            }
        )
    return pd.DataFrame(rows)


def baseline_table(trials: pd.DataFrame) -> pd.DataFrame:
    rows, runs = [], baseline_rows(trials).copy()
    runs["budget"], shown = budgets(runs), has_budgets(trials)
    for (model, budget), group in runs.groupby(["model", "budget"], sort=False):
        rows.append(
            {
                "Student": with_budget(model, budget, shown),
                "Params (M)": f"{group.params.dropna().iloc[0] / 1e6:.1f}"
                if group.params.notna().any()
                else "—",
                **{name.capitalize(): fmt(group[col]) for name, col in SPLITS},
            }
        )
    return pd.DataFrame(rows, columns=["Student", "Params (M)", "Train", "Valid", "Test"])


def study_table(
    cells: list[Cell], unfinished: list[Unfinished] = (), baselines: bool = True
) -> pd.DataFrame:
    """Rows: student x {train, valid, test}; columns: teachers, then the student's baseline
    (none for a job without baselines). A sweeping study shows each cell's chosen setting in a
    row of its own. A cell with no finished run (`unfinished`) keeps its column and says
    `pending` or `failed`."""
    if not cells and not unfinished:
        return pd.DataFrame()
    teachers = list(dict.fromkeys([c.teacher for c in cells] + [u.teacher for u in unfinished]))
    sweeps = any(len(c.settings) > 1 for c in cells)
    rows = []
    for student in dict.fromkeys([c.student for c in cells] + [u.student for u in unfinished]):
        mine = {c.teacher: c for c in cells if c.student == student}
        waiting = {u.teacher: u for u in unfinished if u.student == student}
        base = next(iter([*mine.values(), *waiting.values()])).baseline
        if sweeps:
            row = {"Student": student, "Split": CHOSEN_ROW, BASELINE_COLUMN: ""}
            rows.append(row | {t: mine[t].chosen if t in mine else "—" for t in teachers})
        for split, col in SPLITS:
            runs = {t: c.runs for t, c in mine.items()} | {BASELINE_COLUMN: base}
            row = fmt_row({k: r.set_index("seed")[col] for k, r in runs.items()})
            for teacher in teachers:
                row.setdefault(teacher, waiting[teacher].status if teacher in waiting else "—")
            rows.append({"Student": student, "Split": split} | row)
    columns = ["Student", "Split", *teachers, *([BASELINE_COLUMN] if baselines else [])]
    return pd.DataFrame(rows, columns=columns)


def _number(value: float | None) -> str:
    return "—" if value is None or pd.isna(value) else f"{value:.3f}"


def summary_table(cells: list[Cell]) -> pd.DataFrame:
    """Each KD cell's test accuracy against its student's baseline, paired by seed: the mean
    gain, its 95% interval (t or bootstrap), the Holm-corrected paired p, n and a verdict."""
    rows = []
    for c in cells:
        g = c.gain
        kd, base = c.paired_runs()  # so that KD test − Baseline test is the gain
        interval = "—"
        if g.low is not None:
            interval = f"[{signed(g.low)}, {signed(g.high)}] ({g.interval})"
        rows.append(
            {
                "Study": c.study,
                "Method": c.method,
                "Student": c.student,
                "Teacher": c.teacher,
                "Setting": c.chosen or "—",
                "Teacher valid": fmt(c.runs.teacher_val_score),
                "KD test": fmt(kd.test_score),
                "Baseline test": fmt(base.test_score),
                "Gain": "—" if g.mean is None else signed(g.mean),
                "95% interval": interval,
                "p (Holm)": "—" if g.p_holm is None else f"{g.p_holm:.3g}",
                "n": g.n,
                "Verdict": g.verdict,
            }
        )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def improvement_table(cells_by_study: dict[str, list[Cell]]) -> pd.DataFrame:
    rows = []
    for study, cells in cells_by_study.items():
        n, share = improvement(cells)
        rows.append({"Study": study, "Paired runs": n, "P(KD beats baseline)": _number(share)})
    return pd.DataFrame(rows, columns=["Study", "Paired runs", "P(KD beats baseline)"])


def sensitivity_table(cells: list[Cell]) -> pd.DataFrame:
    """Every setting of a sweeping study: validation and test accuracy, the chosen one marked."""
    rows = []
    for c in cells:
        for label, runs in c.settings.items():
            rows.append(
                {
                    "Student": c.student,
                    "Teacher": c.teacher,
                    "Setting": label,
                    "Valid": fmt(runs.val_score),
                    "Test": fmt(runs.test_score),
                    "Seeds": int(runs.val_score.notna().sum()),
                    "Chosen": "✓" if label == c.chosen else "",
                }
            )
    return pd.DataFrame(rows, columns=SENSITIVITY_COLUMNS)


def failed_teachers(trials: pd.DataFrame, study: str) -> str:
    """Why a study's cells are empty when its teachers failed: each failed teacher and its
    error (its students never started); "" when none failed."""
    failed = trials[has_role(trials, f"teacher:{study}") & (trials.status == "failed")]
    lines = []
    for label, group in failed.groupby(failed.apply(teacher_label, axis=1), sort=False):
        seeds = ", ".join(str(s) for s in sorted(group.seed))
        error = next((e for e in group.error if isinstance(e, str) and e), "no error recorded")
        lines.append(f"teacher {label} failed (seed {seeds}): {error.rstrip('.')}")
    return "; ".join(lines) + ("; its students did not start" if lines else "")


def study_title(trials: pd.DataFrame, study: str, title: str = "accuracy") -> str:
    methods = list(dict.fromkeys(kd_runs(trials, study).method))
    return f"{study} ({', '.join(methods) or 'no runs'}): student x teacher {title}"


def tables(
    trials: pd.DataFrame, studies: list[str], searches: Iterable[SearchCell] = ()
) -> dict[str, tuple[str, pd.DataFrame]]:
    """Name -> (title, table) for every table of the export: `teachers`, `baseline`, one per
    study (no columns when none of its trials finished) and `<study>.sensitivity` for a study
    that sweeps, `<study>.search` for a searched one (`searches`: the plan's searched cells),
    `summary`, `improvement`, `compression`, and `unfinished` when some trial did not finish."""
    searches = list(searches)
    done = trials[trials.status == "finished"]
    cells = {study: study_cells(done, study) for study in studies}
    metric = metric_title(trials)
    out = {"teachers": ("Teachers", teachers_table(done))}
    baselines = bool(has_role(trials, "baseline").any())  # none with `baseline: false`
    if baselines:
        out["baseline"] = ("No-KD baselines", baseline_table(done))
    for study in studies:
        table = study_table(cells[study], unfinished_cells(trials, study), baselines)
        table.attrs["note"] = failed_teachers(trials, study)  # shown under the table
        out[study] = (study_title(trials, study, metric), table)
        if any(len(c.settings) > 1 for c in cells[study]):
            title = f"{study}: every setting of the sweep (chosen on validation {metric})"
            out[f"{study}.sensitivity"] = (title, sensitivity_table(cells[study]))
    for study in [*studies, "baseline"]:
        if searched(trials, study) or any(c.study == study for c in searches):
            title = f"{study}: the search (samples, early stops, the setting chosen on validation)"
            out[f"{study}.search"] = (title, search_table(trials, study, searches))
    if has_budgets(done):
        out["labels"] = (
            "Few labels: each student's test metrics per label budget, baseline vs every study",
            few_labels_table([c for study in studies for c in cells[study]], fmt_row, metric),
        )
    out["summary"] = (
        f"KD gain over each student's baseline (test {metric}, paired by seed)",
        summary_table([c for study in studies for c in cells[study]]),
    )
    out["improvement"] = ("How often KD beat its baseline", improvement_table(cells))
    out["compression"] = (
        "What distillation bought: each KD student against its teacher",
        compression_table([c for study in studies for c in cells[study]], done, metric),
    )
    failed = trials[~trials.status.isin(["finished", "stopped"])]
    if not failed.empty:
        out["unfinished"] = ("Unfinished trials", failed[["trial_id", "status", "error"]])
    return out


def table_body(table: pd.DataFrame) -> str:
    """The table as Markdown, or a note where it has no rows; then its note, if any."""
    body = markdown(table) if len(table.columns) and not table.empty else EMPTY_NOTE + "\n"
    note = table.attrs.get("note")
    return body + (f"\n_{note}_\n" if note else "")


def render_tables(
    trials: pd.DataFrame, studies: list[str], searches: Iterable[SearchCell] = ()
) -> dict[str, str]:
    """File name -> Markdown text, for every table of the export."""
    out = {}
    metric = metric_title(trials)
    notes = {"improvement": statistics_note(metric), "compression": compression_note(metric)}
    for name, (title, table) in tables(trials, studies, searches).items():
        if name == "unfinished":
            out["summary.md"] += f"\n## {title}\n\n" + markdown(table.fillna(""))
        elif name in notes:
            out["summary.md"] += f"\n## {title}\n\n{table_body(table)}\n{notes[name]}\n"
        else:
            out[f"{name}.md"] = f"# {title}\n\n{table_body(table)}"
    return out
