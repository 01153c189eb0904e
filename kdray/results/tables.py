"""The grid's results as Arrow tables: one row per run in `trials.parquet`, one row per run and
epoch in `epochs.parquet`. Tables are rebuilt from the run folders and replaced atomically."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from kdray.data.budgets import budget_label
from kdray.spec.plan import RunSpec
from kdray.store import versions
from kdray.store.atomic import atomic_write
from kdray.store.experiment import Experiment

COST_COLUMNS = (
    "macs", "weights_mb", "latency_ms_p50", "latency_ms_p90", "throughput", "cost_device",
)  # fmt: skip
METRICS = (  # every task's
    "acc", "balanced_acc", "f1", "kappa", "auroc", "map", "loss", "dice", "iou", "hd95", "empty_fp",
)  # fmt: skip
EMA_METRICS = (  # a mean-teacher run's moving-average model, evaluated beside its student
    "ema_train_acc", "ema_val_acc", "ema_test_acc", "ema_test_balanced_acc", "ema_test_f1",
)  # fmt: skip
SPLIT_PREFIXES = ("train", "val", "test")
SCORE = "score"  # `<split>_score`: the task's primary metric (`primary_metric` names it)
DEFAULT_PRIMARY = "acc"  # runs from before tasks: single-label, primary metric accuracy

PER_CLASS = pa.struct(
    [
        ("class", pa.string()),
        ("precision", pa.float64()),
        ("recall", pa.float64()),
        ("f1", pa.float64()),
        ("support", pa.int64()),
    ]
)
PER_LABEL = pa.struct(  # multi-label: each label's scores over its known targets
    [
        ("label", pa.string()),
        ("auroc", pa.float64()),
        ("ap", pa.float64()),
        ("f1", pa.float64()),
        ("positives", pa.int64()),
        ("negatives", pa.int64()),
        ("threshold", pa.float64()),  # F1's: chosen on validation (0.5 in older runs)
    ]
)

PER_CLASS_DICE = pa.struct(  # segmentation: each foreground class's overlap scores
    [
        ("class", pa.string()),
        ("dice", pa.float64()),
        ("iou", pa.float64()),
        ("hd95", pa.float64()),
        ("images", pa.int64()),  # images (volumes) whose ground truth has the class
        ("empty", pa.int64()),  # images whose ground truth lacks it (no Dice)
        ("empty_fp", pa.float64()),  # ... of which the share with the class predicted
    ]
)

TRIAL_SCHEMA = pa.schema(
    [
        pa.field("trial_id", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),  # teacher | student
        pa.field("method", pa.string(), nullable=False),  # none | kd | dkd | fitnets | ...
        pa.field("method_params", pa.string()),  # the method's parameters, JSON
        pa.field("setting", pa.string()),  # the swept parameters' values, JSON; null: no sweep
        pa.field("model", pa.string(), nullable=False),
        pa.field("teacher", pa.string()),  # teacher model(s), "+"-joined for an ensemble
        pa.field("teacher_trial_ids", pa.list_(pa.string())),
        pa.field("teacher_outputs", pa.string()),  # cached | online | null (no teacher)
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("labels", pa.string()),  # the label budget: "10%", "20 per class"; null: all
        pa.field("unlabelled", pa.bool_()),  # trained on the budget's unlabelled pool too
        pa.field("roles", pa.list_(pa.string())),  # teacher:<study>, kd:<study>, baseline
        pa.field("status", pa.string(), nullable=False),  # finished|stopped|failed|pending
        pa.field("epochs", pa.float64()),  # fractional for a teacher stopped inside its band
        pa.field("task", pa.string()),  # single_label | multi_label (kdray.tasks)
        pa.field("primary_metric", pa.string()),  # what <split>_score is: acc | auroc
        *[pa.field(f"{split}_{SCORE}", pa.float64()) for split in SPLIT_PREFIXES],
        *[
            pa.field(f"{split}_{metric}", pa.float64())
            for split in SPLIT_PREFIXES
            for metric in METRICS
        ],
        *[
            pa.field(f"{split}_study_{metric}", pa.float64())  # per study (MURA), else null
            for split in ("val", "test")
            for metric in ("acc", "kappa", "auroc")
        ],
        pa.field("test_study_kappa_by_type", pa.map_(pa.string(), pa.float64())),
        *[pa.field(name, pa.float64()) for name in EMA_METRICS],
        *[pa.field(f"ema_{split}_{SCORE}", pa.float64()) for split in SPLIT_PREFIXES],
        *[
            field
            for split in ("val", "test")
            for field in (
                pa.field(f"{split}_per_class", pa.list_(PER_CLASS)),
                pa.field(f"{split}_confusion", pa.list_(pa.list_(pa.int64()))),
                pa.field(f"{split}_per_label", pa.list_(PER_LABEL)),
                pa.field(f"{split}_labels_left_out", pa.list_(pa.string())),
                pa.field(f"{split}_per_class_dice", pa.list_(PER_CLASS_DICE)),
            )
        ],
        pa.field("teacher_val_acc", pa.float64()),  # mean over an ensemble's teachers
        pa.field("teacher_val_score", pa.float64()),  # ... of their primary metric
        pa.field("band_low", pa.float64()),
        pa.field("band_high", pa.float64()),
        pa.field("params", pa.int64()),
        # what the deployable model costs (kdray.train.cost): one forward pass of one image,
        # model.pt on disk, batch-1 latency and throughput on the device the run trained on
        pa.field("macs", pa.int64()),
        pa.field("weights_mb", pa.float64()),
        pa.field("latency_ms_p50", pa.float64()),
        pa.field("latency_ms_p90", pa.float64()),
        pa.field("throughput", pa.float64()),  # images/s at the evaluation batch size
        pa.field("cost_device", pa.string()),
        pa.field("wall_s", pa.float64()),  # trial driver: launch to end, Ray overhead included
        pa.field("setup_s", pa.float64()),  # worker start to first training step
        pa.field("train_s", pa.float64()),  # worker start to end
        pa.field("attempts", pa.int64()),
        pa.field("checkpoint", pa.string()),  # the run's final weights (model.pt)
        pa.field("error", pa.string()),
        pa.field("stopped_at_epoch", pa.int64()),  # a searched sample its search stopped
        pa.field("search_budget", pa.int64()),  # a sample: the epochs its cell's search may spend
    ]
)

EPOCH_SCHEMA = pa.schema(
    [
        pa.field("trial_id", pa.string(), nullable=False),
        pa.field("epoch", pa.int64(), nullable=False),
        pa.field("train_loss", pa.float64()),
        pa.field("train_acc", pa.float64()),
        pa.field("val_acc", pa.float64()),
        pa.field("val_score", pa.float64()),  # the task's primary metric (val_acc, val_auroc)
        pa.field("lr", pa.float64()),
        pa.field("epoch_s", pa.float64()),
    ]
)
LOSS_TERM_PREFIX = "loss_"  # one float64 column per loss term any run's method returned


PARAM_PREFIX = "param_"  # one column per method parameter any run has, to filter on


def param_columns(specs: list[RunSpec]) -> tuple[list[pa.Field], list[dict]]:
    """`param_<name>` columns: float64 where every value is a number, else string (lists as
    JSON); one dict of values per run (null where the run's method has no such parameter)."""
    values = [{k: v for k, v in (s.method_params or {}).items() if k != "name"} for s in specs]
    names = sorted({k for v in values for k in v})
    fields = []
    for name in names:
        column = [v[name] for v in values if v.get(name) is not None]
        numeric = all(isinstance(x, int | float) and not isinstance(x, bool) for x in column)
        fields.append(pa.field(PARAM_PREFIX + name, pa.float64() if numeric else pa.string()))
    rows = []
    for v in values:
        row = {}
        for f in fields:
            x = v.get(f.name.removeprefix(PARAM_PREFIX))
            if x is not None and pa.types.is_string(f.type) and not isinstance(x, str):
                x = json.dumps(x)
            row[f.name] = x
        rows.append(row)
    return fields, rows


def epoch_schema(rows: list[dict]) -> pa.Schema:
    """`EPOCH_SCHEMA` plus a `loss_<term>` column for every term found in `rows`."""
    terms = sorted({k for r in rows for k in r if k.startswith(LOSS_TERM_PREFIX)})
    return pa.schema([*EPOCH_SCHEMA, *(pa.field(t, pa.float64()) for t in terms)])


def trial_row(
    exp: Experiment,
    spec: RunSpec,
    failure: str | None = None,
    search_budgets: dict[str, int] | None = None,
) -> dict:
    """The run's `trials.parquet` row; `search_budgets`: each searched study's cell budget."""
    folder = exp.run(spec.run_id)
    summary = folder.summary() or {}
    if not summary and failure is None:
        failure = folder.failure()
    primary = summary.get("primary_metric") or DEFAULT_PRIMARY
    teachers = [exp.summary(t) or {} for t in spec.teacher_runs]
    status = summary.get("status") or ("failed" if failure else "pending")
    model_file = folder.model_file
    row = {
        "trial_id": spec.run_id,
        "stage": spec.stage,
        "method": spec.method,
        "method_params": json.dumps(spec.method_params) if spec.method_params else None,
        "setting": json.dumps(spec.setting) if spec.setting else None,
        "model": spec.model,
        "teacher": "+".join(spec.teacher_models) or None,
        "teacher_trial_ids": list(spec.teacher_runs),
        "teacher_outputs": summary.get("teacher_outputs"),
        "seed": spec.seed,
        "labels": budget_label(spec.labels) if spec.labels else None,
        "unlabelled": spec.unlabelled,
        "roles": list(spec.roles),
        "status": status,
        "epochs": summary.get("epochs"),
        "task": summary.get("task") or ("single_label" if summary else None),
        "primary_metric": primary if summary else None,
        "teacher_val_acc": _mean([t.get("val_acc") for t in teachers]),
        "teacher_val_score": _mean([t.get(f"val_{primary}") for t in teachers]),
        "band_low": spec.band[0] if spec.band else None,
        "band_high": spec.band[1] if spec.band else None,
        "params": summary.get("params"),
        **{k: summary.get(k) for k in COST_COLUMNS},
        "wall_s": summary.get("wall_s"),
        "setup_s": summary.get("setup_s"),
        "train_s": summary.get("train_s"),
        "attempts": folder.attempts(),
        "checkpoint": str(model_file) if status == "finished" and model_file.is_file() else None,
        "error": summary.get("error") or (failure if status != "finished" else None),
        "stopped_at_epoch": summary.get("stopped_at_epoch"),
        "search_budget": _search_budget(spec, search_budgets or {}),
    }
    for split in SPLIT_PREFIXES:
        for metric in METRICS:
            row[f"{split}_{metric}"] = summary.get(f"{split}_{metric}")
        row[f"{split}_{SCORE}"] = summary.get(f"{split}_{primary}")
        row[f"ema_{split}_{SCORE}"] = summary.get(f"ema_{split}_{primary}")
    for split in ("val", "test"):
        for metric in ("acc", "kappa", "auroc"):
            row[f"{split}_study_{metric}"] = summary.get(f"{split}_study_{metric}")
        report = summary.get(f"{split}_report") or {}
        row[f"{split}_per_class"] = report.get("per_class")
        row[f"{split}_confusion"] = report.get("confusion")
        row[f"{split}_per_label"] = report.get("per_label")
        row[f"{split}_labels_left_out"] = report.get("left_out")
        row[f"{split}_per_class_dice"] = report.get("per_class_dice")
    row.update({name: summary.get(name) for name in EMA_METRICS})
    by_type = summary.get("test_study_kappa_by_category")
    row["test_study_kappa_by_type"] = list(by_type.items()) if by_type else None
    return row


def _search_budget(spec: RunSpec, budgets: dict[str, int]) -> int | None:
    studies = [role.split(":", 1)[1] for role in spec.roles if role.startswith("sample:")]
    return budgets.get(studies[0]) if studies else None


def search_budgets(exp: Experiment) -> dict[str, int]:
    """The epochs each searched study's (and a searched baseline's) cells may spend."""
    job = exp.job()
    searches = {name: study.search for name, study in job.studies.items()}
    searches["baseline"] = job.baseline_search
    return {
        name: search.cell_budget(job.train.epochs)
        for name, search in searches.items()
        if search is not None
    }


def _mean(values: list) -> float | None:
    """The mean of the known values (an ensemble's teachers), None when there is none."""
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def epoch_rows(exp: Experiment, spec: RunSpec) -> list[dict]:
    rows = []
    for row in exp.run(spec.run_id).epochs():
        score = [v for k, v in row.items() if k.startswith("val_")]  # one: val_<primary>
        rows.append({"trial_id": spec.run_id, **row, "val_score": score[0] if score else None})
    return rows


def write_table_atomic(table: pa.Table, path: Path) -> None:
    with atomic_write(path, "wb") as fh:
        pq.write_table(table, fh)


def write_results(exp: Experiment, failures: dict[str, str] | None = None) -> pa.Table:
    """Rebuild `results/trials.parquet` and `results/epochs.parquet` from the run folders."""
    failures = failures or {}
    runs = list(exp.plan().runs.values())
    fields, params = param_columns(runs)
    budgets = search_budgets(exp)
    trials = pa.Table.from_pylist(
        [
            {**trial_row(exp, r, failures.get(r.run_id), budgets), **p}
            for r, p in zip(runs, params, strict=True)
        ],
        # the versions the experiment started with travel with the table (kdray.store.versions)
        schema=pa.schema([*TRIAL_SCHEMA, *fields], metadata=versions.parquet_metadata(exp.root)),
    )
    rows = [row for r in runs for row in epoch_rows(exp, r)]
    schema = epoch_schema(rows)
    epochs = pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in rows], schema)
    write_table_atomic(trials, exp.results_dir / "trials.parquet")
    write_table_atomic(epochs, exp.results_dir / "epochs.parquet")
    return trials


def read_trials(exp: Experiment) -> pa.Table:
    """`trials.parquet`, rebuilt from the run folders when it is missing, unreadable, or was
    written by an older kdray (a column of today's schema is missing)."""
    path = exp.results_dir / "trials.parquet"
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid):
        return write_results(exp)
    if not set(TRIAL_SCHEMA.names) <= set(table.column_names):
        return write_results(exp)
    return table


def read_epochs(exp: Experiment) -> pa.Table:
    """`epochs.parquet`, rebuilt (with `trials.parquet`) from the run folders when it is missing
    or unreadable."""
    try:
        return pq.read_table(exp.results_dir / "epochs.parquet")
    except (OSError, pa.ArrowInvalid):
        write_results(exp)
        return pq.read_table(exp.results_dir / "epochs.parquet")
