"""Thesis-style tables from `trials.parquet`: Parquet, CSV, Markdown, and an HTML report.

teachers.md   each teacher: train / valid / test accuracy
<study>.md    Student x Teacher, a train / valid / test row per student, plus its no-KD baseline
              (one per study of the job, named after it; an ensemble is one teacher column)
baseline.md   each student trained without KD
summary.md    each KD cell's test accuracy against its student's baseline (the gain)
report.html   all of these tables with figures, one self-contained file (`kdray.report`)
Values are `mean ± std` over seeds when a cell has several. `tables` computes the tables once,
for both the Markdown files and the report.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from kdray.experiment import Experiment
from kdray.results import EPOCH_SCHEMA, read_trials

SPLITS = (("train", "train_acc"), ("valid", "val_acc"), ("test", "test_acc"))
BASELINE_COLUMN = "no KD (baseline)"
NO_TEACHER = "no teacher"


def fmt(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return "—"
    if len(values) == 1:
        return f"{values.iloc[0]:.3f}"
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}"


def markdown(df: pd.DataFrame) -> str:
    header = "| " + " | ".join(str(c) for c in df.columns) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    rows = ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([header, rule, *rows]) + "\n"


def _teacher_label(row: pd.Series) -> str:
    if pd.notna(row["band_low"]):
        return f"{row['model']} [{row['band_low']:.2f}, {row['band_high']:.2f}]"
    return row["model"]


def teachers_table(trials: pd.DataFrame) -> pd.DataFrame:
    teachers = trials[trials.stage == "teacher"].copy()
    if teachers.empty:
        return pd.DataFrame(columns=["Teacher", "Used by", "Epochs", "Train", "Valid", "Test"])
    teachers["label"] = teachers.apply(_teacher_label, axis=1)
    rows = []
    for label, group in teachers.groupby("label", sort=False):
        roles = sorted({r.split(":", 1)[1] for rs in group.roles for r in rs if ":" in r})
        rows.append(
            {
                "Teacher": label,
                "Used by": ", ".join(roles),
                "Epochs": fmt(group.epochs),
                **{name.capitalize(): fmt(group[col]) for name, col in SPLITS},
            }
        )
    return pd.DataFrame(rows)


def baseline_rows(trials: pd.DataFrame) -> pd.DataFrame:
    return trials[has_role(trials, "baseline")]


def baseline_table(trials: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for model, group in baseline_rows(trials).groupby("model", sort=False):
        rows.append(
            {
                "Student": model,
                "Params (M)": f"{group.params.dropna().iloc[0] / 1e6:.1f}"
                if group.params.notna().any()
                else "—",
                **{name.capitalize(): fmt(group[col]) for name, col in SPLITS},
            }
        )
    return pd.DataFrame(rows, columns=["Student", "Params (M)", "Train", "Valid", "Test"])


def has_role(trials: pd.DataFrame, role: str) -> pd.Series:
    return trials.roles.apply(lambda rs: role in list(rs))


def kd_cells(trials: pd.DataFrame, study: str) -> pd.DataFrame:
    """The study's KD runs, with `teacher_label`: the teacher model and its band, "+"-joined
    for an ensemble, `no teacher` for a teacher-free method."""
    cells = trials[has_role(trials, f"kd:{study}")].copy()
    labels = {row.trial_id: _teacher_label(row) for _, row in trials.iterrows()}
    cells["teacher_label"] = [
        "+".join(labels.get(t, t) for t in ids) if len(ids) else NO_TEACHER
        for ids in cells.teacher_trial_ids
    ]
    return cells


def study_table(trials: pd.DataFrame, study: str) -> pd.DataFrame:
    """Rows: student x {train, valid, test}; columns: teachers, then the student's baseline."""
    cells = kd_cells(trials, study)
    if cells.empty:
        return pd.DataFrame()
    teachers = list(dict.fromkeys(cells.teacher_label))
    baselines = baseline_rows(trials)
    rows = []
    for student in dict.fromkeys(cells.model):
        mine = cells[cells.model == student]
        base = baselines[baselines.model == student]
        for split, col in SPLITS:
            row = {"Student": student, "Split": split}
            for teacher in teachers:
                row[teacher] = fmt(mine[mine.teacher_label == teacher][col])
            row[BASELINE_COLUMN] = fmt(base[col])
            rows.append(row)
    return pd.DataFrame(rows)


def kd_groups(trials: pd.DataFrame, studies: list[str]):
    """(study, method, student, teacher label, the cell's runs, the student's baseline runs)
    per KD cell, study by study in the job's order."""
    baselines = baseline_rows(trials)
    for study in studies:
        cells = kd_cells(trials, study)
        for (method, student, teacher), group in cells.groupby(
            ["method", "model", "teacher_label"], sort=False
        ):
            yield study, method, student, teacher, group, baselines[baselines.model == student]


SUMMARY_COLUMNS = [
    "Study",
    "Method",
    "Student",
    "Teacher",
    "Teacher valid",
    "KD test",
    "Baseline test",
    "Gain",
]


def summary_table(trials: pd.DataFrame, studies: list[str]) -> pd.DataFrame:
    rows = []
    for study, method, student, teacher, group, base in kd_groups(trials, studies):
        kd_test, base_test = group.test_acc.dropna(), base.test_acc.dropna()
        gain = kd_test.mean() - base_test.mean() if len(kd_test) and len(base_test) else None
        rows.append(
            {
                "Study": study,
                "Method": method,
                "Student": student,
                "Teacher": teacher,
                "Teacher valid": fmt(group.teacher_val_acc),
                "KD test": fmt(group.test_acc),
                "Baseline test": fmt(base.test_acc),
                "Gain": "—" if gain is None or pd.isna(gain) else f"{gain:+.3f}",
            }
        )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def study_title(trials: pd.DataFrame, study: str) -> str:
    methods = list(dict.fromkeys(kd_cells(trials, study).method))
    return f"{study} ({', '.join(methods) or 'no runs'}): student x teacher accuracy"


def tables(trials: pd.DataFrame, studies: list[str]) -> dict[str, tuple[str, pd.DataFrame]]:
    """Name -> (title, table) for every table of the export: `teachers`, `baseline`, one per
    study (no columns when none of its trials finished), `summary`, and `unfinished` when some
    trial did not finish."""
    done = trials[trials.status == "finished"]
    out = {
        "teachers": ("Teachers", teachers_table(done)),
        "baseline": ("No-KD baselines", baseline_table(done)),
    }
    for study in studies:
        out[study] = (study_title(trials, study), study_table(done, study))
    out["summary"] = (
        "KD gain over each student's baseline (test accuracy)",
        summary_table(done, studies),
    )
    failed = trials[trials.status != "finished"]
    if not failed.empty:
        out["unfinished"] = ("Unfinished trials", failed[["trial_id", "status", "error"]])
    return out


def render_tables(trials: pd.DataFrame, studies: list[str]) -> dict[str, str]:
    """File name -> Markdown text, for every table of the export."""
    out = {}
    for name, (title, table) in tables(trials, studies).items():
        if name == "unfinished":
            out["summary.md"] += f"\n## {title}\n\n" + markdown(table.fillna(""))
            continue
        body = markdown(table) if len(table.columns) else "_no finished trials_\n"
        out[f"{name}.md"] = f"# {title}\n\n{body}"
    return out


def flat_csv(table: pa.Table) -> pd.DataFrame:
    """One line per trial: nested columns (per-class report, confusion, maps) as JSON text."""
    rows = table.to_pylist()
    for row in rows:
        row["roles"] = ";".join(row["roles"] or [])
        for key, value in row.items():
            if isinstance(value, list | dict):
                row[key] = json.dumps(dict(value) if key.endswith("_by_type") else value)
    return pd.DataFrame(rows, columns=table.column_names)


def export(experiment_dir: str | Path, out_dir: str | Path) -> dict[str, Path]:
    exp = Experiment.open(experiment_dir)
    table = read_trials(exp)  # builds the tables first if the grid never wrote them
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    shutil.copyfile(exp.results_dir / "trials.parquet", out / "trials.parquet")
    written["trials.parquet"] = out / "trials.parquet"
    if (exp.results_dir / "epochs.parquet").is_file():
        shutil.copyfile(exp.results_dir / "epochs.parquet", out / "epochs.parquet")
        written["epochs.parquet"] = out / "epochs.parquet"
    flat_csv(table).to_csv(out / "trials.csv", index=False)
    written["trials.csv"] = out / "trials.csv"
    trials = table.to_pandas()
    studies = list(exp.job().studies)
    for name, text in render_tables(trials, studies).items():
        (out / name).write_text(text, encoding="utf-8")
        written[name] = out / name
    from kdray.report import render_report  # matplotlib only when a report is written

    epochs_file = exp.results_dir / "epochs.parquet"
    epochs = pq.read_table(epochs_file) if epochs_file.is_file() else EPOCH_SCHEMA.empty_table()
    html = render_report(trials, epochs.to_pandas(), studies, exp.job().name)
    (out / "report.html").write_text(html, encoding="utf-8")
    written["report.html"] = out / "report.html"
    return written
