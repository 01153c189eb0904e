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
    waits 60 s and exits 1). The price: `ray.shutdown` waits its 1 s per process before it
    kills them, a few seconds at the end of a grid, so only `kdray run` / `resume` pay it.
    On leaving, SIGTERM is again this module's (`ray.init` sets its own)."""
    if not _state["active"] or threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, _as_ctrl_c)  # before a SIGTERM sent meanwhile arrives
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _as_ctrl_c(signum: int, frame) -> None:
    _state["received"] = True
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):  # Tune's handler, or Python's default (raises KeyboardInterrupt)
        handler(signal.SIGINT, frame)
    else:  # SIGINT ignored or left to the system: stop all the same
        raise KeyboardInterrupt


def terminated() -> bool:
    """Whether a SIGTERM stopped the grid of the current `sigterm_as_ctrl_c`."""
    return _state["received"]
