"""One run's folder and its files (kdray.store.run_folder), without training."""

from __future__ import annotations

import pytest
import torch

from kdray.store.json_files import ExperimentError
from kdray.store.run_folder import RunFolder


def test_the_checkpoint_comes_from_the_run_folder_else_from_ray_trains_storage(tmp_path):
    folder = RunFolder(tmp_path / "runs" / "r1")
    train = tmp_path / "train"
    assert folder.load_checkpoint("cpu", train) is None
    for stamp, epoch in (("2026-01-01_00-00-01.1", 1), ("2026-01-01_00-00-09.5", 2)):
        ray_dir = train / "r1" / f"checkpoint_{stamp}"  # a run started before packed runs
        ray_dir.mkdir(parents=True)
        torch.save({"epoch": epoch}, ray_dir / "state.pt")
    assert folder.load_checkpoint("cpu", train) == {"epoch": 2}  # the newest
    folder.save_checkpoint({"epoch": 3})
    assert folder.load_checkpoint("cpu", train) == {"epoch": 3}  # its own wins
    folder.drop_checkpoint()
    assert not folder.checkpoint_file.exists()


def test_attempts_failures_and_summaries_have_one_owner(tmp_path):
    folder = RunFolder(tmp_path / "runs" / "r1")
    assert (folder.attempts(), folder.failure(), folder.summary()) == (0, None, None)
    assert [folder.start_attempt(), folder.start_attempt()] == [1, 2] and folder.started()
    folder.record_failure("the worker died")
    assert folder.failure() == "the worker died"
    folder.clear_failure()
    assert folder.failure() is None
    folder.write_summary({"run_id": "r1", "status": "finished"})
    assert folder.summary()["status"] == "finished"
    (folder.path / "summary.json").write_text('{"run_id": "r1"}')
    with pytest.raises(ExperimentError, match="damaged .no status."):
        folder.summary()


def test_a_damaged_summary_says_whether_its_run_continues_or_trains_again(tmp_path):
    folder = RunFolder(tmp_path / "runs" / "r1")
    folder.path.mkdir(parents=True)
    (folder.path / "summary.json").write_text('{"status": "fini')
    with pytest.raises(ExperimentError, match="trains again from its start: it kept no checkpoint"):
        folder.summary()  # a finished run's state is dropped: only model.pt is left
    folder.save_checkpoint({"epoch": 3})
    with pytest.raises(ExperimentError, match="continues from its last checkpoint"):
        folder.summary()
