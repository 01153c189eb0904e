"""A 3D run killed mid-epoch resumes from its last checkpoint to the metrics of a run that was
never interrupted: the seeded patches, flips, affine and intensity changes and optimizer state
carry over (no Ray: the worker loop itself, as a Ray Train worker runs it)."""

from __future__ import annotations

import pytest
import torch

from kdray.data import prepare_data
from kdray.spec.load import parse_job
from kdray.spec.plan import make_plan
from kdray.store.run_folder import RunFolder
from kdray.train import run_loop
from kdray.train.run_loop import Worker, train_run


class Killed(Exception):
    """Stands for the worker process dying (the run's state in memory is lost)."""


def test_a_3d_run_killed_mid_epoch_resumes_to_the_uninterrupted_metrics(tmp_path, monkeypatch):
    job = parse_job(
        {
            "name": "vol-resume",
            "storage": str(tmp_path / "runs"),
            "data": {"kind": "synthetic_volumes", "shape": [24, 24, 12], "train_size": 4,
                     "valid_size": 1, "test_size": 1, "patch": [16, 16, 8], "foreground": 0.5,
                     "patch_augment": {"p": 1.0}},
            "train": {"epochs": 2, "batch_size": 2, "lr": 0.01, "augment": True},
            "studies": {"voxel": {"teachers": ["unet3d-c4.8-s2"],
                                  "students": ["unet3d-c2.4-s2"],
                                  "method": {"name": "pixel_kd"}}},
        }
    )  # fmt: skip
    spec = next(r for r in make_plan(job).runs.values() if "baseline" in r.roles)
    data = prepare_data(job.data, tmp_path / "data")

    def train(folder: RunFolder) -> dict:
        worker = Worker(0, 1, torch.device("cpu"), lambda m: m, lambda metrics: None)
        return train_run(job, spec, data, folder, [], worker)

    uninterrupted = train(RunFolder(tmp_path / "a" / spec.run_id))

    def die_in_epoch_2(run_id: str, epoch: int) -> None:
        if epoch == 2:
            raise Killed

    folder = RunFolder(tmp_path / "b" / spec.run_id)
    monkeypatch.setattr(run_loop, "_crash_once_if_asked", die_in_epoch_2)
    with pytest.raises(Killed):
        train(folder)
    assert len(folder.epochs()) == 1 and folder.summary() is None
    monkeypatch.undo()
    resumed = train(folder)
    assert resumed["restored_from_epoch"] == 1 and resumed["epochs"] == 2
    for key in ("train_dice", "val_dice", "test_dice", "test_hd95", "test_iou"):
        assert resumed[key] == pytest.approx(uninterrupted[key], abs=1e-6), key
