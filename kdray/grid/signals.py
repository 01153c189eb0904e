"""SIGTERM stops a `kdray run` / `resume` grid as Ctrl-C does. It is what `timeout`, Slurm,
Kubernetes and Ray Jobs' stop send; Ray's own handler (set by `ray.init`) would exit mid-call,
leaving Ray's threads to dump their stacks or abort, and say nothing of how to resume."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

EXIT_CODE = 128 + signal.SIGTERM  # 143: what a shell reports for a process ended by SIGTERM

_state = {"active": False, "received": False}


@contextlib.contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """Inside, a SIGTERM does what SIGINT does at that moment: during a grid, Tune's graceful
    stop; elsewhere a `KeyboardInterrupt`. A local Ray started inside is spared it
    (`ray_processes_spared_by_sigterm`). Only the main thread can set handlers: elsewhere,
    nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _as_ctrl_c)
    _state.update(active=True, received=False)
    try:
        yield
    finally:
        _state["active"] = False
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def ray_processes_spared_by_sigterm() -> Iterator[None]:
    """Inside `sigterm_as_ctrl_c`: Ray's processes started here (a local Ray's GCS, raylet and,
    through it, workers) inherit SIGTERM blocked, as Ray blocks SIGINT in them. A SIGTERM sent
    to the whole process group (`timeout`) or job step (Slurm) then stops the grid through this
    driver, which shuts them down, instead of killing them under it (a driver that lost its GCS
    waits 60 s and exits 1). They cannot receive the SIGTERM of `ray.shutdown`'s graceful
    stop either, so the local node is set to kill them at once (`kill_at_shutdown`). On
    leaving, SIGTERM is again this module's (`ray.init`, in the main thread, sets its own). In
    another thread (Ray started in the background, `kdray.grid.local_ray`) the mask blocked is
    that thread's, the one its child processes inherit; the main thread still takes SIGTERM."""
    if not _state["active"]:
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
        kill_at_shutdown()
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _as_ctrl_c)  # before a SIGTERM sent meanwhile arrives
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def kill_at_shutdown() -> None:
    """Make `ray.shutdown` kill the processes of the local Ray started here (GCS, raylet,
    monitors) without first sending each a SIGTERM and waiting 1 s for it to exit: they hold
    SIGTERM blocked, so each was killed after its second anyway (5 s instead of 1 s at the
    end of every `kdray run`). The raylet's workers exit when it does, as before."""
    import ray._private.worker

    node = ray._private.worker._global_node
    if node is None:
        return
    kill_all = node.kill_all_processes

    def kill_all_processes(check_alive: bool = True, allow_graceful: bool = False, **kwargs):
        kill_all(check_alive=check_alive, allow_graceful=False, **kwargs)

    node.kill_all_processes = kill_all_processes


def _as_ctrl_c(signum: int, frame) -> None:
    _state["received"] = True
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):  # Tune's handler, or Python's default (raises KeyboardInterrupt)
        handler(signal.SIGINT, frame)
    else:  # SIGINT ignored or left to the system: stop all the same
        raise KeyboardInterrupt


def reclaim_sigterm() -> None:
    """After a local Ray started in another thread (`kdray.grid.local_ray`): SIGTERM is this
    module's again. Ray's core worker sets a C++ handler for it (stacks dumped, then abort) in
    whatever thread starts Ray; only the main thread can set it back."""
    if _state["active"] and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _as_ctrl_c)


def terminated() -> bool:
    """Whether a SIGTERM stopped the grid of the current `sigterm_as_ctrl_c`."""
    return _state["received"]
