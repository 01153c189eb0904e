"""The local Ray that `kdray run` starts (its processes hold SIGTERM blocked) is shut down
without the graceful SIGTERM they cannot receive. No Ray cluster: a stand-in node."""

from __future__ import annotations

import ray._private.worker

from kdray.grid.signals import kill_at_shutdown


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
