"""Data that leaves nothing to learn is refused before anything trains: a train split of one
class, or masks without a pixel (voxel) of any class but background. `validate` (after
decoding) and `run` (before Ray starts) say so in one line, exit 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from kdray.cli import app
from kdray.tasks import get_task
from tests.test_volume_data import SHAPE, decathlon_folder, save_nifti

NAMES = ["background", "organ", "lesion"]


def test_masks_without_foreground_leave_nothing_to_segment():
    segmentation = get_task("segmentation")
    empty = [np.zeros((4, 4, 4), np.int8)] * 2
    (line,) = segmentation.train_problems(empty, NAMES, "volumes")
    assert line.startswith("data: no train volume has a voxel of organ, lesion: nothing to")
    assert "data.spacing or data.size" in line
    one_voxel = [empty[0], empty[1].copy()]
    one_voxel[1][1, 2, 3] = 2
    assert segmentation.train_problems(one_voxel, NAMES, "volumes") == []
    (flat,) = segmentation.train_problems(np.zeros((3, 8, 8), np.uint8), NAMES[:2])
    assert "no train image has a pixel of organ" in flat and "spacing" not in flat


def test_a_train_split_of_one_class_is_refused():
    single = get_task("single_label")
    (line,) = single.train_problems(np.zeros(6, np.int64), ["normal", "tumour"], "volumes")
    assert "the train split holds normal only of the 2 classes" in line
    assert "every train volume has the same class" in line
    assert single.train_problems(np.array([0, 1, 0]), ["normal", "tumour"]) == []


def _job(tmp_path: Path, data: dict) -> Path:
    job = {
        "name": "empty", "storage": str(tmp_path / "runs"), "data": data,
        "train": {"epochs": 1, "batch_size": 2},
        "studies": {"s": {"teachers": ["unet3d-c4.8.16.32-s2.2.2-r1"],
                          "students": ["unet3d-c4.8.16.32-s2.2.2-r1"],
                          "method": {"name": "pixel_kd"}}},
    }  # fmt: skip
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    return tmp_path / "job.yaml"


@pytest.mark.parametrize("command", ["validate", "run"])
def test_label_volumes_without_foreground_are_one_line_before_anything_trains(tmp_path, command):
    root = decathlon_folder(tmp_path / "Task01_Organ")
    for label in (root / "labelsTr").iterdir():
        save_nifti(label, np.zeros(SHAPE, np.uint8))
    data = {"kind": "decathlon", "root": str(root), "patch": [16, 16, 8],
            "split_by": {"valid": 0.2, "test": 0.2}}  # fmt: skip
    result = CliRunner().invoke(app, [command, str(_job(tmp_path, data))])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if "nothing to segment" in ln]
    assert len(lines) == 1 and "no train volume has a voxel of organ, lesion" in lines[0]
    assert not list((tmp_path / "runs").glob("*/runs/*")), "nothing may have trained"
