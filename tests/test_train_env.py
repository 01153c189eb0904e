"""The Ray Train settings a trial driver sets reach what Ray Train 2.60 reads: the metrics switch
in the driver, the others in the runtime env of the controller it starts. No Ray cluster."""

from __future__ import annotations

import os

import pytest
from ray._private.ray_constants import env_bool
from ray.train.v2._internal import constants

from kdray.grid.tune import TRAIN_ENV, apply_train_env


@pytest.fixture
def environ(monkeypatch) -> dict:
    """A copy of the environment without kdray's settings, dropped after the test."""
    env = {k: v for k, v in os.environ.items() if k not in TRAIN_ENV}
    monkeypatch.setattr(os, "environ", env)
    return env


def test_trial_settings_reach_the_controller_and_turn_off_the_preemption_watcher(environ):
    apply_train_env()
    controller_env = constants.get_env_vars_to_propagate()  # fit(): the controller's env_vars
    assert controller_env[constants.ENABLE_PREEMPTION_WATCHER_ENV_VAR] == "0"
    assert controller_env[constants.HEALTH_CHECK_INTERVAL_S_ENV_VAR] == "0.5"
    assert not env_bool(constants.ENABLE_PREEMPTION_WATCHER_ENV_VAR, True)
    assert not env_bool(constants.METRICS_ENABLED_ENV_VAR, True)  # read by the trainer itself


def test_a_setting_already_in_the_environment_wins(environ):
    environ["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = "1"
    apply_train_env()
    assert constants.get_env_vars_to_propagate()["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "1"
    assert environ["RAY_TRAIN_METRICS_ENABLED"] == "0"
