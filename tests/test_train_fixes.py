"""kdray's fix for Ray Train 2.60's leaked worker groups (kdray.grid.train_fixes): a worker group
whose start fails after it was built releases its placement group. The last test shows it on a
real one-CPU Ray (~15 s); the others need no Ray."""

from __future__ import annotations

import pytest
import ray
from ray.train import FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.train.v2._internal.execution.callback import WorkerGroupCallback
from ray.train.v2._internal.execution.controller.controller import TrainController
from ray.train.v2._internal.execution.worker_group import WorkerGroup
from ray.train.v2.api.exceptions import TrainingFailedError

from kdray.grid.train_fixes import (
    ReleaseFailedWorkerGroups,
    ReleasingWorkerGroup,
    TorchTrainerWithoutRayData,
)


class FakeState:
    def __init__(self, log: list[str]):
        self.log = log
        self.placement_group_handle = self

    @property
    def placement_group(self):
        return type("PG", (), {"id": "pg-1"})()

    def shutdown(self) -> None:
        self.log.append("released")


def failing_start(built: bool, log: list[str]):
    """Ray's `WorkerGroup._start`, failing like the node-loss case: after (or before) the
    group's state was built."""

    def start(self) -> None:
        if built:
            self._worker_group_state = FakeState(log)
        raise RuntimeError("The actor is unavailable: Socket closed")

    return start


@pytest.mark.parametrize("built", [True, False], ids=["after-built", "before-built"])
def test_a_group_that_fails_after_it_was_built_releases_its_placement_group(monkeypatch, built):
    log: list[str] = []
    monkeypatch.setattr(WorkerGroup, "_start", failing_start(built, log))
    group = object.__new__(ReleasingWorkerGroup)
    group._worker_group_state = None
    group._replica_groups = group._worker_rank_to_replica_group_rank = None
    group._world_rank_to_ongoing_poll = {}
    with pytest.raises(RuntimeError, match="unavailable"):  # the failure still reaches Train
        group._start()
    # built: released by kdray (Ray 2.60 skips it); not built: Ray's own clean-up ran
    assert log == (["released"] if built else [])
    assert not group.has_started()


def test_the_callback_makes_the_controller_build_releasing_groups(monkeypatch):
    monkeypatch.setattr(TrainController, "worker_group_cls", WorkerGroup)
    ReleaseFailedWorkerGroups().after_controller_start(None)
    assert TrainController.worker_group_cls is ReleasingWorkerGroup


class KillTheWorkerOnce(WorkerGroupCallback):
    """The node-loss race made certain: the worker dies after its group was built, before the
    train function is launched on it."""

    killed = False

    def after_worker_group_start(self, worker_group) -> None:
        if not self.killed:
            self.killed = True
            ray.kill(worker_group.get_workers()[0].actor)


def _nothing(config: dict) -> None:
    pass


def test_kdray_s_trainer_leaves_out_only_the_ray_data_callback(tmp_path):
    """Ray 2.60's DatasetsCallback starts a DatasetManager actor (a process) every fit, datasets
    or none; kdray's trainer has every other callback a TorchTrainer has, and keeps that one
    for a trainer given datasets."""
    kwargs = {
        "scaling_config": ScalingConfig(num_workers=1),
        "run_config": RunConfig(name="x", storage_path=str(tmp_path)),
    }

    def kinds(trainer) -> list[str]:
        return [type(c).__name__ for c in trainer._create_default_callbacks()]

    ray_s, kdray_s = (
        kinds(TorchTrainer(_nothing, **kwargs)),
        kinds(TorchTrainerWithoutRayData(_nothing, **kwargs)),
    )
    assert "DatasetsCallback" in ray_s
    assert kdray_s == [k for k in ray_s if k != "DatasetsCallback"]
    with_data = TorchTrainerWithoutRayData(_nothing, datasets={"train": object()}, **kwargs)
    assert kinds(with_data) == ray_s


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_a_worker_lost_before_the_launch_leaves_no_placement_group_behind(tmp_path):
    ray.init(num_cpus=1, include_dashboard=False, address="local")
    try:
        trainer = TorchTrainer(
            _nothing,
            scaling_config=ScalingConfig(num_workers=1),
            run_config=RunConfig(
                name="lost-worker",
                storage_path=str(tmp_path),
                failure_config=FailureConfig(max_failures=0),
                callbacks=[KillTheWorkerOnce(), ReleaseFailedWorkerGroups()],
            ),
        )
        with pytest.raises(TrainingFailedError):  # the trial fails; kdray's Tune retries it
            trainer.fit()
        held = [
            pg["bundles"]
            for pg in ray.util.placement_group_table().values()
            if pg["state"] != "REMOVED"
        ]
        assert held == []  # Ray 2.60 alone leaves [{0: {'CPU': 1.0}}]: the only CPU, forever
    finally:
        ray.shutdown()
