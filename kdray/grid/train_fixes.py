"""Fixes for Ray Train 2.60 that kdray installs in each trial's TorchTrainer.

## Worker groups that failed to start keep their placement group

A worker group whose start fails *after* its state was built (its placement group reserved, its
workers created) is never shut down: `WorkerGroup._start` cleans up only a group that has not
started (`has_started()` is already true), `WorkerGroup.create` raises, so the controller never
holds the group to shut it down, and the controller's shutdown stops the PlacementGroupCleaner
without a clean-up. Its placement group stays reserved after the trial failed. When the start
failed because a node was lost (the worker died between its set-up and the launch of the train
function, `ActorUnavailableError`), GCS reschedules the lost bundles onto a surviving node,
where they hold CPUs that no live trial owns: the retried trial and every later one wait for
them forever (seen in tests/test_faults.py's node-loss test, issue 24).

`ReleaseFailedWorkerGroups` is a Train callback (Ray appends callbacks that are not
`UserCallback`s to its own, "for custom workarounds built on top of internal callbacks"). On
the controller's start it makes the controller build its worker groups as
`ReleasingWorkerGroup`, which shuts a group down when its own start fails after it was built.
Only the controller that created a group releases it, so no live trial's placement group is
ever touched.

## A Ray Data actor per fit that reads no Ray Data

kdray's runs read their data from the experiment's array cache, never through Ray Data, but a
TorchTrainer given no `datasets` still starts a DatasetManager actor every fit (its
`DatasetsCallback` creates one whatever the datasets): one more process per trial, importing Ray
Data (~1 s of CPU) while the fit starts. `TorchTrainerWithoutRayData` leaves that callback out;
`ray.train.get_dataset_shard` would then fail, and kdray never calls it.
"""

from __future__ import annotations

import logging

from ray.train.torch import TorchTrainer
from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
from ray.train.v2._internal.execution.callback import ControllerCallback
from ray.train.v2._internal.execution.worker_group import WorkerGroup

logger = logging.getLogger(__name__)


class ReleasingWorkerGroup(WorkerGroup):
    """A Ray Train worker group that releases its workers and placement group when its own
    start fails after the group was built."""

    def _start(self) -> None:
        try:
            super()._start()
        except Exception:
            if self.has_started():
                self._release()
            raise

    def _release(self) -> None:
        state = self.get_worker_group_state()
        logger.warning(
            "kdray: the worker group failed to start after it was built; releasing its "
            "workers and placement group %s",
            state.placement_group_handle.placement_group.id,
        )
        try:
            state.shutdown()  # workers, sync actor, then the placement group
        except Exception:
            logger.exception("kdray: shutting the failed worker group down; removing its group")
            state.placement_group_handle.shutdown()
        finally:
            self._clear_state()


class ReleaseFailedWorkerGroups(ControllerCallback):
    """Make this trial's Train controller start `ReleasingWorkerGroup`s (see the module)."""

    def after_controller_start(self, train_run_context) -> None:
        from ray.train.v2._internal.execution.controller.controller import TrainController

        if TrainController.worker_group_cls is WorkerGroup:  # one controller per process
            TrainController.worker_group_cls = ReleasingWorkerGroup


class TorchTrainerWithoutRayData(TorchTrainer):
    """A TorchTrainer that starts no DatasetManager actor when it is given no `datasets` (see
    the module)."""

    def _create_default_callbacks(self) -> list:
        callbacks = super()._create_default_callbacks()
        if self.datasets:
            return callbacks
        return [c for c in callbacks if not isinstance(c, DatasetsCallback)]
