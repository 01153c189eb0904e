"""Ray's start for `kdray run`: in the background while the driver prepares the rest, and its
local processes (which hold SIGTERM blocked) shut down without a graceful SIGTERM they cannot
receive. That a Ray started in the background outlives its start's thread and spares SIGTERM
is what every grid test and the SIGTERM fault test (`tests/test_faults.py`) go through."""

from __future__ import annotations

import threading
import time

import pytest
import ray
import ray._private.worker

from kdray.grid import local_ray
from kdray.grid.local_ray import init_ray, start_in_background
from kdray.grid.signals import kill_at_shutdown
from kdray.spec.job import Job
from tests.conftest import tiny_job_dict


class FakeNode:
    def __init__(self):
        self.calls: list[dict] = []

    def kill_all_processes(self, check_alive=True, allow_graceful=False, wait=False):
        self.calls.append(
            {"check_alive": check_alive, "allow_graceful": allow_graceful, "wait": wait}
        )


def test_shutdown_kills_the_local_node_without_waiting_for_a_sigterm(monkeypatch):
    node = FakeNode()
    monkeypatch.setattr(ray._private.worker, "_global_node", node)
    kill_at_shutdown()
    # what ray.shutdown() calls (ray/_private/worker.py)
    ray._private.worker._global_node.kill_all_processes(
        check_alive=False, allow_graceful=True, wait=True
    )
    assert node.calls == [{"check_alive": False, "allow_graceful": False, "wait": True}]


def test_no_local_node_nothing_to_change(monkeypatch):
    monkeypatch.setattr(ray._private.worker, "_global_node", None)
    kill_at_shutdown()
    assert ray._private.worker._global_node is None


def test_init_ray_waits_for_the_start_in_the_background_and_raises_its_error(tmp_path, monkeypatch):
    job = Job.model_validate(tiny_job_dict(tmp_path))
    began = threading.Event()

    def failing_start(*args):
        began.set()
        time.sleep(0.2)
        raise ConnectionError("no cluster at that address")

    monkeypatch.setattr(local_ray, "_init", failing_start)
    start_in_background(job, "10.0.0.1:6379")
    assert began.wait(5)  # the caller went on while the start ran
    with pytest.raises(ConnectionError, match="no cluster"):
        init_ray(job, "10.0.0.1:6379")
    assert not local_ray._started
