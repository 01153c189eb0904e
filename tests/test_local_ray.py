"""Ray's start for `kdray run`: in the background while the driver prepares the rest, and its
local processes (which hold SIGTERM blocked) shut down without a graceful SIGTERM they cannot
receive."""

from __future__ import annotations

import signal
import threading
import time

import pytest
import ray
import ray._private.worker

from kdray.grid import local_ray
from kdray.grid.local_ray import init_ray, start_in_background
from kdray.grid.signals import kill_at_shutdown, sigterm_as_ctrl_c
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


@pytest.mark.ray
def test_a_local_ray_started_in_the_background_outlives_its_start_and_spares_sigterm(tmp_path):
    """Ray kills its processes when the thread that started them ends (PR_SET_PDEATHSIG): they
    must still serve once the start returned; and they hold SIGTERM blocked, as when the main
    thread starts them (`ray_processes_spared_by_sigterm`)."""
    job = Job.model_validate(tiny_job_dict(tmp_path))
    assert not ray.is_initialized()
    with sigterm_as_ctrl_c():
        start_in_background(job)
        init_ray(job)
        try:
            time.sleep(1)
            assert ray.get(ray.remote(lambda: 42).remote(), timeout=60) == 42
            raylet = ray._private.worker._global_node.all_processes["raylet"][0].process
            with open(f"/proc/{raylet.pid}/status") as fh:
                blocked = next(line for line in fh if line.startswith("SigBlk:")).split()[1]
            assert int(blocked, 16) & (1 << (signal.SIGTERM - 1))
            assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
        finally:
            ray.shutdown()
