"""3D segmentation end to end on a local Ray grid (the one Ray test of volumes, kept tiny): a
Decathlon-layout NIfTI folder made here (LPS, 0.8 x 0.8 x 2.5 mm, an organ and a lesion class,
20 x 24 x 8 voxels) trains a 3D U-Net teacher, its student's no-KD baseline, a voxel-wise KD
student and an all-stage L1 student (the teacher's 3D stages online) on 16^3 patches (larger
than the volumes along one axis: padded; smaller along the others: sliding windows); the
summaries carry Dice and HD95 in mm per class, the model files reload to the same metrics, and
the export pairs KD against the baseline in Dice and draws the test volumes' three views."""

from __future__ import annotations

import pandas as pd
import pytest

from kdray.data import prepare_data
from kdray.data.volume_cache import load_volumes
from kdray.spec.load import parse_job
from kdray.store.model_file import load_model
from kdray.tasks import get_task
from kdray.train.volume_eval import predict_volumes, split_truth
from tests.conftest import run_grid
from tests.test_volume_data import SPACING, decathlon_folder

pytestmark = pytest.mark.ray

TEACHER, STUDENT = "unet3d-c8.16.32-s2.2", "unet3d-c2.4.8-s2.2-r1"


@pytest.mark.timeout(300)
def test_a_decathlon_grid_reports_dice_and_hd95_in_mm_per_class(tmp_path):
    from kdray.export.write import export

    root = decathlon_folder(tmp_path / "Task01_Organ", cases=8)
    job = parse_job(
        {
            "name": "vol",
            "storage": str(tmp_path / "runs"),
            "data": {"kind": "decathlon", "root": str(root), "patch": [16, 16, 16],
                     "window": [40, 400], "split_by": {"valid": 0.25, "test": 0.25}},
            "train": {"epochs": 2, "batch_size": 2, "lr": 0.01, "eval_batch_size": 4},
            "studies": {"voxel": {"teachers": [TEACHER], "students": [STUDENT],
                                  "method": {"name": "pixel_kd"}},
                        "l1": {"teachers": [TEACHER], "students": [STUDENT],
                               "method": {"name": "feature_l1"}}},
            "resources": {"max_concurrent_trials": 2},
        }
    )  # fmt: skip
    exp, report = run_grid(job)
    assert report.ok, report.failed
    trials = pd.read_parquet(exp.results_dir / "trials.parquet")
    assert len(trials) == 4 and set(trials.status) == {"finished"}
    assert set(trials.primary_metric) == {"dice"} and (trials.test_score == trials.test_dice).all()
    assert trials.test_hd95.notna().all()
    for rows in trials.test_per_class_dice:  # per class, HD95 in mm
        assert [r["class"] for r in rows] == ["organ", "lesion"]
        assert all(r["hd95"] is None or r["hd95"] >= 0 for r in rows)
    by_method = trials.set_index("method")
    assert by_method.loc["pixel_kd", "teacher_outputs"] == "cached"
    assert by_method.loc["feature_l1", "teacher_outputs"] == "online"  # the teacher's 3D stages

    # the teacher's model file reloads as a 3D network and scores its summary at the mm spacing
    data = prepare_data(job.data, exp.data_dir)
    volumes = load_volumes(data.path, "test")
    for entry in volumes.entries:  # the NIfTI header's float32 zooms
        assert entry["spacing"] == pytest.approx(SPACING)
    teacher = trials[trials.stage == "teacher"].iloc[0]
    model, meta = load_model(teacher.checkpoint)
    assert meta["rank"] == 3 and meta["patch"] == [16, 16, 16]
    task = get_task("segmentation")
    preds = predict_volumes(model, volumes, data.patch, "cpu", task)
    truths, spacings = split_truth(volumes)
    again = task.metrics(preds, truths, data.num_classes, spacings)
    assert again["dice"] == pytest.approx(teacher.test_dice)
    assert again["hd95"] == pytest.approx(teacher.test_hd95)

    written = export(exp.root, tmp_path / "out")
    summary = written["summary.md"].read_text()
    assert "KD gain over each student's baseline (test Dice, paired by seed)" in summary
    # the report's three views: each test volume cut through its foreground's centre, the
    # truth, the teacher's, the baseline's and the KD student's masks side by side
    page = written["report.html"].read_text()
    views = page.split("<h2>Test volumes: axial, coronal and sagittal slices")[1]
    for title in ("ground truth", "teacher", "baseline", "voxel", "#0 axial", "#0 coronal",
                  "#0 sagittal"):  # fmt: skip
        assert title in views, title
