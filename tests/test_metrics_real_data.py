"""The radiologists' metrics, end to end through the worker loop on real on-disk formats:
a MURA-v1.1 tree (study-level kappa per study type) and the real BreastMNIST file."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from kdray.data import prepare_data
from kdray.results.tables import write_results
from kdray.spec.load import parse_job
from kdray.store.experiment import Experiment
from kdray.tasks.classification_metrics import classification_metrics, study_metrics
from tests.conftest import REPO
from tests.test_data_mura import build_mura
from tests.test_worker import run_local

BREASTMNIST = REPO / "kdray" / "data" / "builtin" / "breastmnist.npz"  # ships with kdray


def train_one(tmp_path, data: dict, epochs: int = 2):
    raw = {
        "name": "metrics",
        "storage": str(tmp_path / "runs"),
        "data": data,
        "train": {"epochs": epochs, "batch_size": 32, "lr": 0.003},
        "studies": {"normal": {"teachers": ["test_resnet"], "students": ["test_resnet"]}},
    }
    job = parse_job(raw)
    exp = Experiment.create(job)
    info = prepare_data(job.data, exp.data_dir)
    spec = exp.plan().stage("teacher")[0]
    _, summary = run_local(tmp_path, job, spec, info, run_dir=exp.run_dir(spec.run_id))
    trials = write_results(exp).to_pylist()
    return summary, next(r for r in trials if r["trial_id"] == spec.run_id)


def test_study_metrics_hand_checked():
    # two studies of two images each; study 'a' averages to 0.6 (positive), 'b' to 0.3
    probs = np.array([[0.5, 0.5], [0.3, 0.7], [0.8, 0.2], [0.6, 0.4]])
    labels = np.array([1, 1, 0, 0])
    groups = np.array(["x/XR_HAND/p1/a", "x/XR_HAND/p1/a", "x/XR_WRIST/p2/b", "x/XR_WRIST/p2/b"])
    out = study_metrics(probs, labels, groups, category=lambda k: k.split("/")[1])
    assert out["studies"] == 2 and out["study_acc"] == 1.0 and out["study_auroc"] == 1.0
    assert set(out["study_kappa_by_category"]) == {"XR_HAND", "XR_WRIST"}
    image = classification_metrics(probs, labels)
    assert image["acc"] == 0.75  # image 1 alone is a tie broken towards class 0


def test_mura_abnormality_reports_study_level_kappa_per_study_type(tmp_path):
    root = build_mura(tmp_path / "mura", train_patients=16)
    summary, row = train_one(
        tmp_path, {"kind": "mura", "root": str(root), "task": "abnormality", "image_size": 16}
    )
    for split in ("val", "test"):
        assert 0 <= row[f"{split}_study_acc"] <= 1
        assert row[f"{split}_study_kappa"] is None or -1 <= row[f"{split}_study_kappa"] <= 1
    assert summary["test_studies"] < sum(r["support"] for r in row["test_per_class"])
    assert {k for k, _ in row["test_study_kappa_by_type"]} == {"ELBOW", "HAND", "WRIST"}
    confusion = np.array(row["test_confusion"])
    assert confusion.shape == (2, 2)
    assert confusion.sum() == sum(r["support"] for r in row["test_per_class"])


@pytest.mark.skipif(not BREASTMNIST.is_file(), reason=f"{BREASTMNIST} not found (shared/ data)")
def test_breastmnist_run_fills_every_metric_column(tmp_path):
    data = {"kind": "medmnist", "path": str(BREASTMNIST), "image_size": 28}
    _, row = train_one(tmp_path, data, epochs=3)
    for split in ("train", "val", "test"):
        assert 0 < row[f"{split}_acc"] <= 1
        assert 0 <= row[f"{split}_f1"] <= 1
        assert -1 <= row[f"{split}_kappa"] <= 1
        assert 0 <= row[f"{split}_auroc"] <= 1
        assert row[f"{split}_loss"] > 0
    assert [c["class"] for c in row["test_per_class"]] == ["0", "1"]
    assert np.array(row["test_confusion"]).sum() == 156  # BreastMNIST's test split
    assert row["test_study_acc"] is None  # no studies in MedMNIST
    table = pq.read_table(
        Experiment.open(tmp_path / "runs" / "metrics").results_dir / "trials.parquet"
    )
    statuses = sorted(table.column("status").to_pylist())
    assert statuses == ["finished", "pending"]  # the teacher ran here; its KD student did not
