"""What distillation bought: each KD student's cost against its teacher's, and the frontier.

- `compression_table`: per KD cell (its chosen setting, `kdray.results.cells`), teacher / student
  ratios of parameters, MACs and batch-1 latency, the accuracy the student kept of its teacher's,
  and its paired gain over its own no-KD baseline. An ensemble costs the sum of its teachers (they
  all run per image) and scores the mean of their test accuracies (kdray evaluates no ensemble as
  such); a teacher-free cell has no ratios.
- `frontier_points`: the models of the accuracy/cost figure, one point per KD cell, per no-KD
  baseline of those students and per teacher (mean over seeds), each marked Pareto-optimal or
  not (no other point at least as accurate and at most as costly, better in one) on MACs and on
  latency; `pareto_runs` the runs behind the KD students and baselines on the MACs frontier,
  what `kdray export --onnx-pareto` ships.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kdray.results.cells import NO_TEACHER, Cell, study_cells, teacher_label
from kdray.results.stats import signed
from kdray.results.tables import read_trials
from kdray.store.experiment import Experiment, ExperimentError

COSTS = ("params", "macs", "latency_ms_p50")
KD, BASELINE, TEACHER = "KD student", "no-KD baseline", "teacher"
COMPRESSION_COLUMNS = [
    "Study",
    "Method",
    "Student",
    "Teacher",
    "Setting",
    "Params ratio",
    "MACs ratio",
    "Latency ratio",
    "Accuracy kept",
    "Gain over baseline",
]


def kept_column(title: str) -> str:
    """The compression table's column of the primary metric kept: `Accuracy kept`."""
    return f"{title[0].upper()}{title[1:]} kept"


def compression_note(title: str = "accuracy") -> str:
    kept = kept_column(title)
    return (
        "Ratios: teacher / student, each the mean over the cell's seeds; an ensemble costs the "
        "sum of its teachers. Latency: batch 1 on the device the runs trained on. "
        f"{kept}: student test {title} / teacher test {title} (an ensemble: the mean of its "
        "teachers'). Gain: the paired gain over the student's no-KD baseline, as in the KD gain "
        "table. A teacher-free cell has no teacher to compare with."
    )


COMPRESSION_NOTE = compression_note()


def _numbers(runs: pd.DataFrame, column: str) -> pd.Series:
    """A column as numbers; all NaN when the table has no such column (built by hand, or
    before costs were measured)."""
    if column not in runs:
        return pd.Series(np.nan, index=runs.index)
    return pd.to_numeric(runs[column], errors="coerce")


def _mean(values) -> float:
    values = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").dropna()
    return float(values.mean()) if len(values) else np.nan


def teacher_cost(runs: pd.DataFrame, done: pd.DataFrame) -> dict[str, float]:
    """The teachers of `runs` (KD runs of one cell): per run the sum of its teachers' costs and
    the mean of their test accuracies, then the mean over runs. NaN where a value is missing."""
    by_id = done.set_index("trial_id")
    per_run = []
    for ids in runs.teacher_trial_ids:
        teachers = by_id.loc[[t for t in ids if t in by_id.index]]
        if len(teachers) < len(ids) or not len(ids):
            continue
        row = {c: _numbers(teachers, c).sum(min_count=len(ids)) for c in COSTS}
        per_run.append(row | {"test_score": _mean(teachers.test_score)})
    return {k: _mean([r[k] for r in per_run]) for k in (*COSTS, "test_score")}


def _ratio(a: float, b: float) -> float:
    return a / b if pd.notna(a) and pd.notna(b) and b > 0 else np.nan


def compression_row(cell: Cell, done: pd.DataFrame) -> dict:
    """One cell's ratios as numbers (NaN: not available), before formatting."""
    student = {k: _mean(_numbers(cell.runs, k)) for k in (*COSTS, "test_score")}
    teacher = teacher_cost(cell.runs, done) if cell.teacher != NO_TEACHER else {}
    nan = np.nan
    return {
        "params": _ratio(teacher.get("params", nan), student["params"]),
        "macs": _ratio(teacher.get("macs", nan), student["macs"]),
        "latency": _ratio(teacher.get("latency_ms_p50", nan), student["latency_ms_p50"]),
        "kept": _ratio(student["test_score"], teacher.get("test_score", nan)),
        "gain": nan if cell.gain.mean is None else cell.gain.mean,
    }


def _times(value: float) -> str:
    return "—" if pd.isna(value) else f"{value:.2f}×"


def compression_table(
    cells: list[Cell], done: pd.DataFrame, title: str = "accuracy"
) -> pd.DataFrame:
    """Each KD cell's student against its teacher: cost ratios, the primary metric (`title`)
    kept, gain."""
    rows = []
    for c in cells:
        r = compression_row(c, done)
        rows.append(
            {
                "Study": c.study,
                "Method": c.method,
                "Student": c.student,
                "Teacher": c.teacher,
                "Setting": c.chosen or "—",
                "Params ratio": _times(r["params"]),
                "MACs ratio": _times(r["macs"]),
                "Latency ratio": _times(r["latency"]),
                kept_column(title): "—" if pd.isna(r["kept"]) else f"{r['kept']:.3f}",
                "Gain over baseline": "—" if pd.isna(r["gain"]) else signed(r["gain"]),
            }
        )
    columns = [kept_column(title) if c == "Accuracy kept" else c for c in COMPRESSION_COLUMNS]
    return pd.DataFrame(rows, columns=columns)


def pareto_optimal(accuracy, cost) -> np.ndarray:
    """True where no other point is at least as accurate and at most as costly, and strictly
    better in one of the two; points missing either value are never optimal."""
    acc, cost = np.asarray(accuracy, dtype=float), np.asarray(cost, dtype=float)
    known = ~(np.isnan(acc) | np.isnan(cost))
    optimal = known.copy()
    for i in np.flatnonzero(known):
        others = known & (acc >= acc[i]) & (cost <= cost[i]) & ((acc > acc[i]) | (cost < cost[i]))
        optimal[i] = not others.any()
    return optimal


def _point(label: str, kind: str, study: str | None, runs: pd.DataFrame) -> dict:
    """A model of the figure: mean test accuracy and cost over its runs, and the run to ship
    (the best validation accuracy among its seeds: the test split chooses nothing)."""
    val = pd.to_numeric(runs.val_score, errors="coerce")
    pick = runs.trial_id.iloc[int(val.fillna(-1).to_numpy().argmax())]
    costs = {k: _mean(_numbers(runs, k)) for k in COSTS}
    return {"label": label, "kind": kind, "study": study, "test_score": _mean(runs.test_score)} | (
        costs | {"run_ids": list(runs.trial_id), "pick": pick}
    )


def frontier_points(cells: list[Cell], done: pd.DataFrame) -> pd.DataFrame:
    """The KD cells, their students' baselines and their teachers, with `pareto_macs` and
    `pareto_latency` over all of them. A run that is a baseline and a teacher is a baseline."""
    points = [_point(f"{c.student} ← {c.teacher}", KD, c.study, c.runs) for c in cells]
    baselines = pd.concat([done.iloc[:0], *(c.baseline for c in cells)]).drop_duplicates("trial_id")
    teacher_ids = {t for c in cells for ids in c.runs.teacher_trial_ids for t in ids}
    teachers = done[done.trial_id.isin(teacher_ids - set(baselines.trial_id))]
    for kind, runs in ((BASELINE, baselines), (TEACHER, teachers)):
        if runs.empty:
            continue
        labels = runs.apply(teacher_label, axis=1)
        for label, group in runs.groupby(labels, sort=False):
            points.append(_point(label, kind, None, group))
    columns = ["label", "kind", "study", "test_score", *COSTS, "run_ids", "pick"]
    frame = pd.DataFrame(points, columns=columns)
    frame["pareto_macs"] = pareto_optimal(frame.test_score, frame.macs)
    frame["pareto_latency"] = pareto_optimal(frame.test_score, frame.latency_ms_p50)
    return frame


def experiment_pareto_runs(exp: Experiment) -> list[str]:
    """`pareto_runs` of an experiment's finished runs (`kdray export --onnx-pareto`); an
    `ExperimentError` saying why when there is none (`no_pareto_reason`)."""
    trials = read_trials(exp).to_pandas()
    done = trials[trials.status == "finished"]
    cells = [c for study in exp.job().studies for c in study_cells(done, study)]
    chosen = pareto_runs(cells, done)
    if not chosen:
        raise ExperimentError(f"--onnx-pareto: {no_pareto_reason(frontier_points(cells, done))}")
    return chosen


def no_pareto_reason(points: pd.DataFrame) -> str:
    """Why no KD student or baseline of `points` (`frontier_points`) is on the MACs frontier."""
    mine = points[points.kind.isin([KD, BASELINE])]
    if mine.empty:
        return "no KD student or baseline has finished; export one with --onnx RUN_ID later"
    if pd.to_numeric(mine.macs, errors="coerce").isna().all():
        return "no KD student or baseline has a measured cost (macs)"
    ahead = list(points.label[points.pareto_macs & (points.kind == TEACHER)])
    who = f"teacher {ahead[0]} is" if len(ahead) == 1 else f"teachers {', '.join(ahead)} are"
    return (
        f"no KD student or baseline is on the accuracy/MACs frontier: {who} as accurate and "
        "as cheap or better; export a student by id with --onnx RUN_ID"
    )


def pareto_runs(cells: list[Cell], done: pd.DataFrame) -> list[str]:
    """The KD students and no-KD baselines on the accuracy / MACs frontier: one run each."""
    points = frontier_points(cells, done)
    chosen = points[points.pareto_macs & points.kind.isin([KD, BASELINE])]
    return list(dict.fromkeys(chosen.pick))
