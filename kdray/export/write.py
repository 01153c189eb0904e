"""`kdray export`: an experiment's tables as Parquet, CSV, Markdown (`kdray.export.markdown`)
and an HTML report (`kdray.export.report`), written into a folder of the user's choosing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa

from kdray.export.markdown import render_tables
from kdray.results.tables import read_epochs, write_results
from kdray.store.experiment import Experiment, ExperimentError


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
    """Write the experiment's tables and report into `out_dir`. Everything is computed before
    the first file is written, so a failure leaves `out_dir` as it was."""
    exp = Experiment.open(experiment_dir)
    out = check_out_dir(exp, Path(out_dir))
    table = write_results(exp)  # from the run folders: tables of a killed grid may be stale
    epochs = read_epochs(exp)
    trials = table.to_pandas()
    job = exp.job()
    searches = list(exp.plan().searches.values())
    texts = render_tables(trials, list(job.studies), searches)
    from kdray.export.masks import examples_figure  # matplotlib only when a report is written
    from kdray.export.report import render_report
    from kdray.export.volume_views import volume_examples_figure

    studies = list(job.studies)
    examples = examples_figure(exp.root, trials, studies)
    examples = examples or volume_examples_figure(exp.root, trials, studies)
    texts["report.html"] = render_report(
        trials, epochs.to_pandas(), studies, job.name, examples=examples, searches=searches
    )
    make_out_dir(out)
    written = {}
    for name in ("trials.parquet", "epochs.parquet"):
        shutil.copyfile(exp.results_dir / name, out / name)
        written[name] = out / name
    flat_csv(table).to_csv(out / "trials.csv", index=False)
    written["trials.csv"] = out / "trials.csv"
    for name, text in texts.items():
        (out / name).write_text(text, encoding="utf-8")
        written[name] = out / name
    return written


def write_tables(exp: Experiment, trials: pd.DataFrame, studies: list[str]) -> Path:
    """Every Markdown table into the experiment's own results folder (which kdray rewrites),
    for a terminal that shows them in short; returns summary.md's path."""
    searches = exp.plan().searches.values()
    for name, text in render_tables(trials, studies, searches).items():
        (exp.results_dir / name).write_text(text, encoding="utf-8")
    return exp.results_dir / "summary.md"


# what kdray keeps in an experiment folder besides results/: tables written among them would be
# mistaken for (or taken as) its own files
OWN_FOLDERS = ("runs", "data", "train", "tune", "search", "costs")


def check_out_dir(exp: Experiment, out: Path) -> Path:
    """`--out` must be a folder (or not exist yet) outside the experiment's own `results/`,
    `runs/` and other folders kdray keeps there."""
    resolved = out.expanduser().resolve()
    if resolved.exists() and not resolved.is_dir():
        raise ExperimentError(f"--out {out}: is a file, not a folder; give a folder to write into")
    if resolved == exp.results_dir or exp.results_dir in resolved.parents:
        raise ExperimentError(
            f"--out {out}: is the experiment's own results folder, which kdray rewrites; "
            "give another folder (e.g. --out results/)"
        )
    for folder in [exp.root / name for name in OWN_FOLDERS]:
        if resolved == folder or folder in resolved.parents:
            raise ExperimentError(
                f"--out {out}: is inside the experiment's own {folder.name}/ folder, which kdray "
                "manages; give a folder outside it (e.g. --out results/)"
            )
    for parent in resolved.parents:
        if parent.exists() and not parent.is_dir():
            raise ExperimentError(f"--out {out}: {parent} is a file, not a folder")
    return resolved


def make_out_dir(out: Path) -> None:
    """`--out` made (once nothing can refuse the export any more), or one line saying why not."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExperimentError(
            f"--out {out}: cannot create it ({exc.strerror}); give a folder you can write to"
        ) from None
