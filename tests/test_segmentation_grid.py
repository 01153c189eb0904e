"""Segmentation end to end on a local Ray grid (the one Ray test of the task, kept tiny: 32 px
synthetic ultrasound, 2 epochs): a U-Net on resnet34 taught to a student 100x smaller with
pixel-wise KD, CWD and all-layer L1 beside its no-KD baseline (attention transfer trains in
tests/test_segmentation.py, without Ray); tables,
summary and report in Dice; the L1 student's worker killed in epoch 2 resumes to the metrics of
an uninterrupted run; its ONNX file matches PyTorch's masks."""

from __future__ import annotations

import pandas as pd
import pytest

from kdray.data import prepare_data
from kdray.spec.load import parse_job
from tests.conftest import run_grid
from tests.test_worker import run_local

pytestmark = pytest.mark.ray

TEACHER, STUDENT = "unet-resnet34", "unet-lcnet_035-d16.16.8.8.8"


def seg_job(tmp_path) -> dict:
    pair = {"teachers": [TEACHER], "students": [STUDENT]}
    return {
        "name": "seg",
        "storage": str(tmp_path / "runs"),
        "data": {"kind": "synthetic_ultrasound", "image_size": 32, "native_size": 64,
                 "train_size": 32, "valid_size": 12, "test_size": 12},
        "train": {"epochs": 2, "batch_size": 16, "lr": 0.003, "eval_batch_size": 32,
                  "augment": [{"name": "HorizontalFlip", "p": 0.5}]},
        "studies": {
            "pixel": {**pair, "method": {"name": "pixel_kd"}},
            "cwd": {**pair, "method": {"name": "cwd"}},
            "l1": {**pair, "method": {"name": "feature_l1"}},
        },
        "resources": {"max_concurrent_trials": 2},
    }  # fmt: skip


@pytest.mark.timeout(600)
def test_a_segmentation_grid_reports_dice_resumes_and_exports(tmp_path, monkeypatch):
    from kdray.export.onnx import TOLERANCE, export_onnx
    from kdray.export.write import export

    job = parse_job(seg_job(tmp_path))
    l1 = next(r for r in job_runs(job) if r.method == "feature_l1")
    crashes = tmp_path / "crashes"
    crashes.mkdir()
    for run in job_runs(job):  # a marker means "already crashed": only the L1 student dies
        if run.run_id != l1.run_id:
            (crashes / run.run_id).write_text("2")
    monkeypatch.setenv("KDRAY_TEST_CRASH_EPOCH", "2")
    monkeypatch.setenv("KDRAY_TEST_CRASH_DIR", str(crashes))
    exp, report = run_grid(job)
    assert report.ok, report.failed
    trials = pd.read_parquet(exp.results_dir / "trials.parquet")
    assert set(trials.status) == {"finished"} and set(trials.primary_metric) == {"dice"}
    assert (trials.test_score == trials.test_dice).all() and trials.test_hd95.notna().all()
    assert trials.test_per_class_dice.apply(lambda r: r[0]["class"] == "lesion").all()
    by_method = trials.set_index("method")
    assert by_method.loc["pixel_kd", "teacher_outputs"] == "cached"  # per-pixel soft labels
    assert by_method.loc["feature_l1", "teacher_outputs"] == "online"
    params = trials.groupby("model").params.first()
    assert params[TEACHER] / params[STUDENT] >= 100

    # the killed run restarted from its epoch-1 checkpoint and ends where a clean run ends
    resumed = exp.summary(l1.run_id)
    assert resumed["restored_from_epoch"] == 1
    monkeypatch.delenv("KDRAY_TEST_CRASH_EPOCH")
    data = prepare_data(job.data, exp.data_dir)
    teachers = [exp.run_dir(t) for t in l1.teacher_runs]
    _, clean = run_local(tmp_path / "clean", job, l1, data, teacher_dirs=teachers)
    for key in ("train_dice", "val_dice", "test_dice", "test_hd95", "test_iou"):
        assert resumed[key] == clean[key], key

    written = export(exp.root, tmp_path / "out")
    summary = written["summary.md"].read_text()
    assert "KD gain over each student's baseline (test Dice, paired by seed)" in summary
    assert {"pixel", "cwd", "l1"} <= {
        line.split("|")[1].strip() for line in summary.splitlines() if line.startswith("| ")
    }
    html = written["report.html"].read_text()
    assert "Test images: ground truth, teacher and student masks" in html
    assert "Dice kept" in html  # the compression table in the primary metric
    onnx = export_onnx(exp.root, l1.run_id, tmp_path / "out")
    assert onnx.max_abs_diff <= TOLERANCE and onnx.agreement == 1.0


def job_runs(job):
    from kdray.spec.plan import make_plan

    return list(make_plan(job).runs.values())
