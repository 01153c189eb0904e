"""The Results page's generated parts: the columns of `trials.parquet` and `epochs.parquet`
with their Arrow types, read from `kdray.results.tables`' schemas. What each column means is
written here, by column group; a schema column without a meaning, or a meaning for a column the
schema lacks, stops the generator (and so fails `tests/test_docs.py`)."""

from __future__ import annotations

import itertools
import re

import pyarrow as pa

from docs.gen.fields import cell

#: (column patterns, meaning); `{a,b}` in a pattern expands to each choice
TRIAL_COLUMNS: list[tuple[str, str]] = [
    ("trial_id", "the run id"),
    ("stage", "`teacher` or `student`"),
    ("method", "the distillation method the run trained with (`none` for teachers and baselines)"),
    (
        "method_params",
        'the method\'s parameters as JSON (e.g. `{"name": "dkd", "beta": 8.0, ...}`)',
    ),
    (
        "setting",
        "a sweeping study's setting: the swept parameters' values as JSON (null: no sweep)",
    ),
    ("model", "the model's timm name (a segmenter's: `<architecture>-<timm encoder>[-d...]`)"),
    ("teacher", "the teacher model(s), `+`-joined for an ensemble (null without a teacher)"),
    ("teacher_trial_ids", "the teacher runs"),
    ("teacher_outputs", "how the run read its teachers: `cached` soft labels, `online`, or null"),
    ("seed", "the run's seed"),
    ("labels", "the label budget (`10%`, `20 per class`; null: every label)"),
    ("unlabelled", "whether the run also trained on its budget's unlabelled pool"),
    ("roles", "`teacher:<study>`, `kd:<study>`, `baseline`: one run may serve several table rows"),
    (
        "status",
        "`finished`, `stopped` (a searched sample its search ended early), `failed` or `pending`",
    ),
    ("epochs", "epochs trained; fractional for a defective teacher stopped mid-epoch"),
    ("task", "`single_label`, `multi_label` or `segmentation`"),
    ("primary_metric", "the metric `<split>_score` holds (`acc`, `auroc`, `dice`)"),
    (
        "{train,val,test}_score",
        "the task's primary metric: what cells, selection, verdicts, the frontier and every "
        "table use",
    ),
    (
        "{train,val,test}_{acc,balanced_acc,f1,kappa,auroc,map,loss}",
        "single-label: accuracy, balanced accuracy (mean per-class recall), macro-F1, Cohen's κ, "
        "AUROC (binary: positive class; multi-class: macro one-vs-rest), cross-entropy. "
        "Multi-label: mean per-label accuracy at 0.5, macro-F1 at per-label thresholds chosen "
        "on validation alone (each label's max-F1 threshold there, applied to every split; "
        "`per_label.threshold`; or one fixed threshold for all, `train.f1_threshold`), "
        "mean AUROC, mean average precision (`map`), BCE over the known "
        "labels. From the final weights; train is "
        "evaluated without augmentation",
    ),
    (
        "{train,val,test}_{dice,iou,hd95,empty_fp}",
        "segmentation: Dice, IoU, HD95 (pixels), each the mean over images with the class, then "
        "over classes; the share of images without the class where it was predicted "
        "(`acc` is then the pixel accuracy)",
    ),
    (
        "{val,test}_study_{acc,kappa,auroc}",
        "per study (MURA): a study's image probabilities averaged and thresholded at 0.5, "
        "MURA's own rule; null for data without studies",
    ),
    ("test_study_kappa_by_type", "MURA: study-level κ per study type"),
    (
        "ema_{train,val,test}_acc ema_test_{balanced_acc,f1} ema_{train,val,test}_score",
        "a mean-teacher run's EMA model, evaluated beside its student",
    ),
    (
        "{val,test}_per_class {val,test}_confusion",
        "the classification report: per class precision, recall, F1, support; the confusion "
        "matrix (rows: truth)",
    ),
    (
        "{val,test}_per_label {val,test}_labels_left_out",
        "multi-label: each label's AUROC, AP, F1, positives and negatives; the labels with one "
        "class only in the split (left out of the means)",
    ),
    (
        "{val,test}_per_class_dice",
        "segmentation, per class: Dice, IoU, HD95, the images with and without it, false alarms",
    ),
    (
        "teacher_val_acc teacher_val_score",
        "the teacher's validation accuracy and primary metric (KD students; an ensemble: the "
        "mean of its teachers')",
    ),
    ("band_low band_high", "a defective teacher's band"),
    ("params", "parameter count"),
    (
        "macs",
        "multiply-adds of one forward pass of one image at the data's size and channels "
        "(`torch.utils.flop_counter`, one multiply-add counted once: the FLOPs CNN papers quote)",
    ),
    ("weights_mb", "size of `model.pt` in MB (10⁶ bytes)"),
    (
        "latency_ms_p50 latency_ms_p90",
        "batch-1 forward time of the trained model on the device its run trained on, eval mode, "
        "fp32: median and 90th percentile of up to 30 timed calls after 5 warm-up calls (CUDA "
        "synchronised around each), within about 0.5 s (at least 3 calls); timed inside the "
        "trial's worker while other trials may run: compare models of one grid, not grids",
    ),
    (
        "throughput",
        "images per second at `train.eval_batch_size`: median of 3 to 10 timed calls after one "
        "warm-up, within about 0.5 s",
    ),
    ("cost_device", "the device type the cost was measured on (`cpu`, `cuda`)"),
    ("wall_s", "the trial from launch to end, Ray overhead included"),
    ("setup_s train_s", "inside the worker: start to first step; start to end"),
    ("attempts", "how many times the trial was launched"),
    (
        "checkpoint",
        "the run's final weights (`model.pt`: state dict, model name, classes, mean/std)",
    ),
    ("error", "why the run failed"),
    ("stopped_at_epoch", "a searched sample its search stopped: the epoch (rung) it reached"),
    (
        "search_budget",
        "a searched sample: the epochs its cell's search may spend (`search.budget`, or every "
        "sample to the end)",
    ),
]

EPOCH_COLUMNS: list[tuple[str, str]] = [
    ("trial_id epoch", "the run id and the epoch (from 1)"),
    ("train_loss train_acc", "running means over the epoch's augmented training batches"),
    ("val_acc", "validation accuracy after the epoch"),
    ("val_score", "the task's primary metric on validation (`val_acc`, `val_auroc`, `val_dice`)"),
    ("lr", "the learning rate"),
    ("epoch_s", "the epoch's training time (validation not included)"),
]


def expand(patterns: str) -> list[str]:
    """`{a,b}_x c` -> `a_x`, `b_x`, `c`."""
    names = []
    for pattern in patterns.split():
        parts = re.split(r"\{([^}]*)\}", pattern)
        choices = [p.split(",") if i % 2 else [p] for i, p in enumerate(parts)]
        names += ["".join(combo) for combo in itertools.product(*choices)]
    return names


def arrow_type(tp: pa.DataType) -> str:
    """An Arrow type in short: `list<string>`, `list<struct{class, f1, ...}>`."""
    if pa.types.is_list(tp):
        return f"list<{arrow_type(tp.value_type)}>"
    if pa.types.is_struct(tp):
        return "struct{" + ", ".join(tp.field(i).name for i in range(tp.num_fields)) + "}"
    if pa.types.is_map(tp):
        return f"map<{arrow_type(tp.key_type)}, {arrow_type(tp.item_type)}>"
    return {"double": "float64"}.get(str(tp), str(tp))


def columns_table(schema: pa.Schema, described: list[tuple[str, str]], table: str) -> str:
    """A Markdown table of `schema`'s columns by group; raises naming an undescribed column."""
    covered = {name for patterns, _ in described for name in expand(patterns)}
    missing = [n for n in schema.names if n not in covered]
    unknown = sorted(covered - set(schema.names))
    if missing or unknown:
        raise ValueError(
            f"{table}: columns without a meaning in docs/gen/results.py: {missing}; meanings for "
            f"columns the schema lacks: {unknown}"
        )
    lines = ["| column | type | meaning |", "|---|---|---|"]
    for patterns, meaning in described:
        types = dict.fromkeys(arrow_type(schema.field(n).type) for n in expand(patterns))
        names = ", ".join(f"`{p}`" for p in patterns.split())
        lines.append(f"| {names} | {cell(', '.join(f'`{t}`' for t in types))} | {cell(meaning)} |")
    return "\n".join(lines) + "\n"


def trials_table() -> str:
    from kdray.results.tables import TRIAL_SCHEMA

    return columns_table(TRIAL_SCHEMA, TRIAL_COLUMNS, "trials.parquet")


def epochs_table() -> str:
    from kdray.results.tables import EPOCH_SCHEMA

    return columns_table(EPOCH_SCHEMA, EPOCH_COLUMNS, "epochs.parquet")
