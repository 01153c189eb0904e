"""Multi-label data end to end: a ChestMNIST-format archive and a CheXpert-style CSV read as
the multi-label task, and a grid (no-KD baseline, kd, at, feature_l1) reported in mean AUROC."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from kdray.data import DataError, open_sources, prepare_data
from kdray.data.folder import Config as FolderConfig
from kdray.grid.processes import descendants
from kdray.spec.load import parse_job
from kdray.tasks import UNLABELLED

LABELS = 14  # ChestMNIST's
EMPTY = 13  # a label with no positive in the test split


def chest_npz(path, n=(96, 40, 40), size=16, seed=0):
    """A ChestMNIST-format archive: N×H×W uint8 images, N×14 0/1 labels; label 0 shows in the
    image (a bright square), so something can be learned; label 13 never positive in test."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for key, count in zip(("train", "val", "test"), n, strict=True):
        labels = (rng.random((count, LABELS)) < 0.3).astype(np.uint8)
        images = rng.integers(0, 90, (count, size, size), dtype=np.uint8)
        images[labels[:, 0] == 1, 2:8, 2:8] = 250
        if key == "test":
            labels[:, EMPTY] = 0
        arrays[f"{key}_images"], arrays[f"{key}_labels"] = images, labels
    np.savez(path, **arrays)
    return path


def test_a_chestmnist_archive_is_multi_label_with_its_label_matrix(tmp_path):
    job = parse_job(
        {
            "name": "chest",
            "data": {
                "kind": "medmnist",
                "path": str(chest_npz(tmp_path / "c.npz")),
                "image_size": 16,
            },
            "studies": {"s": {"teachers": ["resnet10t"], "students": ["test_resnet"]}},
        }
    )
    info = prepare_data(job.data, tmp_path / "cache")
    assert info.task == "multi_label" and info.num_classes == LABELS
    labels = np.load(f"{info.path}/test_labels.npy")
    assert labels.shape == (40, LABELS) and labels[:, EMPTY].sum() == 0


def test_an_archive_with_labels_other_than_0_1_and_minus_1_is_named(tmp_path):
    path = chest_npz(tmp_path / "c.npz")
    arrays = dict(np.load(path))
    arrays["val_labels"][3, 2] = 7
    np.savez(path, **arrays)
    cfg = parse_job(
        {"name": "c", "data": {"kind": "medmnist", "path": str(path)},
         "studies": {"s": {"teachers": ["resnet10t"], "students": ["test_resnet"]}}}
    ).data  # fmt: skip
    with pytest.raises(DataError) as err:
        open_sources(cfg)
    assert err.value.problems == [
        f"{path}: val_labels has values [7]; a multi-label row holds 1 (present), 0 (absent) "
        "or -1 (unknown)"
    ]


def chexpert_csv(tmp_path, rows):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(len(rows)):
        cv2.imwrite(str(images / f"{i}.png"), np.full((8, 8), 40 * (i % 6), np.uint8))
    lines = ["Path,Atelectasis,Edema,Effusion,split"]
    lines += [f"images/{i}.png,{row}" for i, row in enumerate(rows)]
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "labels.csv"


ROWS = ["1,0,,train", "-1,1,0,train", "0,-1.0,1.0,train", "1,,0,valid", "0,1,-1,test"]


@pytest.mark.parametrize(
    ("uncertain", "train"),
    [
        ("ignore", [[1, 0, 0], [UNLABELLED, 1, 0], [0, UNLABELLED, 1]]),
        ("zeros", [[1, 0, 0], [0, 1, 0], [0, 0, 1]]),
        ("ones", [[1, 0, 0], [1, 1, 0], [0, 1, 1]]),
    ],
)
def test_a_chexpert_style_csv_reads_one_column_per_label(tmp_path, uncertain, train):
    csv = chexpert_csv(tmp_path, ROWS)
    cfg = FolderConfig(
        csv=csv, label_columns=["Atelectasis", "Edema", "Effusion"], uncertain=uncertain
    )
    names, sources = open_sources(cfg)
    assert names == ["Atelectasis", "Edema", "Effusion"]
    assert sources["train"].labels.tolist() == train
    assert [len(sources[s]) for s in ("train", "valid", "test")] == [3, 1, 1]
    assert cfg.declared_task() == "multi_label"


def test_a_bad_label_cell_and_a_missing_label_column_are_named(tmp_path):
    csv = chexpert_csv(tmp_path, [*ROWS[:2], "yes,0,1,train", *ROWS[3:]])
    cfg = FolderConfig(csv=csv, label_columns=["Atelectasis", "Edema", "Effusion"])
    with pytest.raises(DataError) as err:
        open_sources(cfg)
    assert err.value.problems == [
        f"{csv} line 4: column 'Atelectasis' holds 'yes'; a label cell is 1, 0, empty or -1 "
        "(uncertain)"
    ]
    with pytest.raises(DataError) as err:
        open_sources(FolderConfig(csv=csv, label_columns=["Atelectasis", "Cardiomegaly"]))
    assert "lacks ['Cardiomegaly']" in err.value.problems[0]


def test_a_multi_label_job_file_without_task_fields_keeps_single_label_ids(tmp_path):
    """Fields added for tasks stay out of a data section's dump at their defaults."""
    cfg = FolderConfig(csv=chexpert_csv(tmp_path, ROWS))
    dumped = cfg.model_dump(mode="json")
    assert not {"task_type", "label_columns", "uncertain", "image_root"} & set(dumped)


@pytest.mark.ray
def ray_processes_left(before: set[int], within_s: float = 3.0) -> list[str]:
    """Ray's processes still running below this one (the raylet's agents and workers
    included) once `within_s` has passed, but for those in `before` (what an earlier test in
    this process left, such as a multiprocessing fork server)."""
    import time

    deadline = time.time() + within_s
    while True:
        left = []
        for pid in set(descendants(os.getpid())) - before:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if state != "Z" and b"ray" in command:
                left.append(command.decode(errors="replace")[:100])
        if not left or time.time() > deadline:
            return left
        time.sleep(0.2)


def test_a_multi_label_grid_reports_mean_auroc_with_paired_verdicts(tmp_path, monkeypatch):
    """`kdray run` of a no-KD baseline and kd, at and feature_l1 students of one teacher, which
    learns one label of 14 (the others are noise): its mean AUROC is at chance, and the closing
    tables say so (issue 33)."""
    import ray
    import yaml
    from typer.testing import CliRunner

    from kdray.cli import app
    from kdray.export.write import export
    from kdray.store.experiment import Experiment

    path = chest_npz(tmp_path / "chest.npz")
    pair = {"teachers": ["resnet10t"], "students": ["test_resnet"]}
    raw = {
        "name": "chest",
        "storage": str(tmp_path / "runs"),
        "data": {"kind": "medmnist", "path": str(path), "image_size": 16},
        "train": {"epochs": 2, "batch_size": 16, "lr": 0.003, "eval_batch_size": 64},
        "studies": {
            "kd": pair,
            "at": {**pair, "method": {"name": "at"}},
            "l1": {**pair, "method": {"name": "feature_l1"}},
        },
        "resources": {"max_concurrent_trials": 2},
    }
    job_file = tmp_path / "chest.yaml"
    job_file.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("COLUMNS", "200")  # the warning on one line
    before = set(descendants(os.getpid()))
    try:
        result = CliRunner().invoke(app, ["run", str(job_file)])
        ray_left = ray_processes_left(before)  # `kdray run` killed them, none waited for at exit
    finally:
        ray.shutdown()
    assert result.exit_code == 0, result.output
    assert not ray_left, ray_left
    exp = Experiment.open(tmp_path / "runs" / "chest")
    trials = pd.read_parquet(exp.results_dir / "trials.parquet")
    (teacher_auroc,) = trials[(trials.stage == "teacher") & (trials.model == "resnet10t")].val_score
    assert abs(teacher_auroc - 0.5) <= 0.158  # 2 standard errors at 0.5 over 40 images
    warning = (
        f"warning teacher resnet10t: validation mean AUROC {teacher_auroc:.3f}, within noise "
        "(0.158) of 0.500, the score of ranking images at random: it learned (next to) nothing"
    )
    assert warning in result.output, result.output
    assert set(trials.task) == {"multi_label"} and set(trials.primary_metric) == {"auroc"}
    assert (trials.test_score == trials.test_auroc).all() and trials.test_map.notna().all()
    assert {tuple(x) for x in trials.test_labels_left_out} == {(str(EMPTY),)}
    per_label = trials.test_per_label.iloc[0]
    assert len(per_label) == LABELS and per_label[EMPTY]["auroc"] is None
    kd = trials[trials.method == "kd"].iloc[0]
    summary = json.loads((exp.run_dir(kd.trial_id) / "summary.json").read_text())
    assert summary["primary_metric"] == "auroc" and "loss_bce" in pd.read_parquet(
        exp.results_dir / "epochs.parquet"
    )
    written = export(exp.root, tmp_path / "out")
    text = written["summary.md"].read_text()
    assert "KD gain over each student's baseline (test mean AUROC, paired by seed)" in text
    assert {"kd", "at", "l1"} <= {
        line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ")
    }
    assert "student x teacher mean AUROC" in written["kd.md"].read_text()
    assert "mean AUROC" in written["report.html"].read_text()


class Brightness(torch.nn.Module):
    """A stand-in model: both labels' logit is the image's mean pixel (its data encodes a
    probability in the brightness), so the test sets what each image is predicted."""

    def forward(self, x):
        return x.mean(dim=(1, 2, 3)).unsqueeze(1).repeat(1, 2)


def test_per_label_thresholds_are_chosen_on_validation_only(tmp_path):
    import math

    from kdray.data.cache import DataInfo
    from kdray.tasks import get_task
    from kdray.tasks.multi_label import THRESHOLD_RULE, best_f1_thresholds
    from kdray.train.evaluate import final_metrics
    from tests.conftest import tiny_job_dict

    def split(name: str, probs: list[float], positives: list[int]):
        logits = [math.log(p / (1 - p)) for p in probs]  # the model's logit is the pixel value
        images = np.stack([np.full((4, 4, 1), v, np.float32) for v in logits])
        labels = np.zeros((len(probs), 2), np.int64)
        labels[positives, :] = 1
        np.save(tmp_path / f"{name}_images.npy", images)  # read as pixels: mean 0, std 1/255
        np.save(tmp_path / f"{name}_labels.npy", labels)

    rare = [0.05, 0.1, 0.15, 0.2, 0.3, 0.35, 0.4, 0.45]  # a rare label: every probability < 0.5
    split("train", rare, [7])
    split("valid", rare, [6, 7])  # best F1 on validation: a threshold of 0.4
    split("test", rare, [4, 5, 6, 7])  # test's own best would be 0.3: must not be used
    info = DataInfo(str(tmp_path), "x", ["a", "b"], 1, 4, {}, [0.0], [1 / 255], task="multi_label")
    job = parse_job(tiny_job_dict(tmp_path))
    out = final_metrics(Brightness(), job, info, "cpu")
    assert out["test_report"]["f1_rule"] == THRESHOLD_RULE
    valid_probs = np.asarray([[p, p] for p in rare])
    valid_labels = np.load(tmp_path / "valid_labels.npy")
    chosen = best_f1_thresholds(valid_probs, valid_labels)
    assert chosen == pytest.approx([0.4, 0.4])
    thresholds = [row["threshold"] for row in out["test_report"]["per_label"]]
    assert thresholds == pytest.approx(chosen)  # the validation's, on test
    assert out["test_f1"] == pytest.approx(2 * 2 / (2 + 4))  # 2 of 4 found, both right: 0.667
    task = get_task("multi_label")
    test_probs, test_labels = valid_probs, np.load(tmp_path / "test_labels.npy")
    assert task.metrics(test_probs, test_labels)["f1"] == 0.0  # at 0.5: never predicted

    # asked for, a fixed threshold for every label: F1 at it, and the report names the rule
    raw = tiny_job_dict(tmp_path)
    raw["train"]["f1_threshold"] = 0.2
    fixed = final_metrics(Brightness(), parse_job(raw), info, "cpu")
    assert [row["threshold"] for row in fixed["test_report"]["per_label"]] == [0.2, 0.2]
    assert fixed["test_report"]["f1_rule"].startswith("threshold 0.2 for every label")
    assert fixed["test_f1"] == pytest.approx(2 * 4 / (2 * 4 + 1))  # 4 found, 1 false alarm


def test_f1_threshold_is_refused_where_the_data_is_not_multi_label(tmp_path):
    from kdray.spec.job import task_problems
    from tests.conftest import tiny_job_dict

    raw = tiny_job_dict(tmp_path)
    raw["train"]["f1_threshold"] = 0.5
    job = parse_job(raw)
    assert task_problems(job, "multi_label") == []
    (line,) = task_problems(job, "single_label")
    assert line.startswith("train.f1_threshold:") and "drop train.f1_threshold" in line
