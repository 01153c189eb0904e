"""One driver per experiment folder: a second `kdray run`/`resume` of a running experiment (two
terminals, a retry script, a resubmitted Ray job) is refused, naming the first.

Two files in the experiment folder:

driver.lock   held with `flock` for as long as the driver runs. The kernel drops the lock when
              the process ends however it ends (kill -9 included), so a killed driver never
              blocks the next one. On NFS, Linux turns `flock` into a lock on the server (NLM or
              NFSv4), which other hosts see; a crashed host's lock is dropped when its lease
              runs out (90 s by default).
driver.json   who holds it: pid, host, the process's start time (so a reused pid is not taken
              for the driver), when it started, and a heartbeat rewritten every `HEARTBEAT_S`.

Whether a recorded driver is still alive: on this host, its pid runs and is the same process;
on another host (a shared folder), its heartbeat is younger than `STALE_AFTER_S`, measured in
the file server's clock (the modification time of a probe file written there), so the hosts'
clocks need not agree. The heartbeat is what refuses a second driver even where the folder is
mounted without working locks (NFS `nolock`): the lock then succeeds on both hosts, but the
other host's fresh heartbeat does not. A driver killed on another host frees the folder
`STALE_AFTER_S` after its last heartbeat.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from kdray.store.atomic import write_json
from kdray.store.json_files import ExperimentError, read_json

DRIVER_FILE = "driver.json"
LOCK_FILE = "driver.lock"
HEARTBEAT_S = 15.0
STALE_AFTER_S = 120.0  # 8 missed heartbeats: a driver stalled by a slow disk is not taken over
HOST = socket.gethostname()
DAMAGED_ADVICE = (
    "if no `kdray run`/`resume` is driving this experiment now, delete it (it only marks "
    "a live driver)"
)

_held: dict[str, int] = {}  # folder -> how many times this process entered `hold_driver`


class GridBusy(Exception):
    """Another `kdray run`/`resume` is driving this experiment."""


def process_start(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, after the command name in (...)


def read_driver(root: Path) -> dict | None:
    """The recorded driver, or None; a damaged record raises `ExperimentError`."""
    path = Path(root) / DRIVER_FILE
    if not path.is_file():
        return None
    driver = read_json(path, DAMAGED_ADVICE)
    if not isinstance(driver, dict) or not {"host", "pid", "started"} <= set(driver):
        raise ExperimentError(f"{path} is damaged (no host, pid, started): delete it")
    return driver


def folder_clock(root: Path) -> float:
    """Now, in the clock of the file system holding `root` (a file server's, on NFS)."""
    probe = Path(root) / f".clock-{HOST}-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        return probe.stat().st_mtime
    except OSError:
        return time.time()
    finally:
        probe.unlink(missing_ok=True)


def heartbeat_age(root: Path) -> float | None:
    try:
        beat = (Path(root) / DRIVER_FILE).stat().st_mtime
    except OSError:
        return None
    return max(0.0, folder_clock(root) - beat)


def driver_alive(root: Path, driver: dict) -> bool:
    """Whether the recorded driver still runs (see the module for how each case is told)."""
    if driver["host"] != HOST:
        age = heartbeat_age(root)
        return age is not None and age < STALE_AFTER_S
    if int(driver["pid"]) == os.getpid():
        return str(Path(root).resolve()) in _held  # else a record this process left behind
    try:
        os.kill(int(driver["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's live process
    recorded = driver.get("process_start")
    return recorded is None or recorded == process_start(int(driver["pid"]))


def busy_message(root: Path, driver: dict | None, note: str = "") -> str:
    if driver is None:
        return (
            f"{root} is already being run by another process (it holds {root / LOCK_FILE} and "
            "has not yet written who it is); wait for it, or try again in a few seconds"
        )
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(driver["started"]))
    age = heartbeat_age(root)
    beat = f", last heartbeat {age:.0f} s ago" if age is not None else ""
    freed = (
        "its lock goes with it"
        if driver["host"] == HOST
        else f"the folder is free {STALE_AFTER_S:.0f} s after its last heartbeat"
    )
    return (
        f"{root} is already being run by process {driver['pid']} on {driver['host']} (started "
        f"{since}{beat}){note}: wait for it, or stop it (Ctrl-C in its terminal, `kdray stop` "
        f"for a Ray job); if that process was killed, {freed}"
    )


def _lock(fd: int) -> bool:
    """Take the lock without waiting: True if taken, False if another process holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        if exc.errno != errno.ENOLCK:  # no locks on this file system: the heartbeat decides
            raise
    return True


def _other_driver(root: Path) -> dict | None:
    """The recorded driver as another process holding the lock left it (it may be writing)."""
    for _ in range(20):
        driver = read_driver(root)
        if driver is not None:
            return driver
        time.sleep(0.1)
    return None


def _heartbeat(root: Path, record: dict, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        try:
            current = read_driver(root)
            if current is None or current.get("token") != record["token"]:
                return  # no longer ours (deleted by hand): do not write it back
            write_json(root / DRIVER_FILE, {**record, "heartbeat": time.time()})
        except (OSError, ExperimentError):
            continue  # a hiccup of the shared folder; the next beat tries again


@contextlib.contextmanager
def hold_driver(root: Path) -> Iterator[None]:
    """Be the one driver of the experiment folder `root` (which must exist) while inside;
    raises `GridBusy` naming the other driver if there is one. Re-entrant in one process."""
    root = Path(root).resolve()
    key = str(root)
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _lock(fd):
            raise GridBusy(busy_message(root, _other_driver(root)))
        recorded = read_driver(root)  # a damaged record is the user's to judge
        if recorded is not None and driver_alive(root, recorded):
            note = (
                " (its lock was not seen from this host: is the shared folder mounted without "
                "locking, e.g. NFS `nolock`?)"
                if recorded["host"] != HOST
                else ""
            )
            raise GridBusy(busy_message(root, recorded, note))
        with _recorded(root):
            _held[key] = 1
            try:
                yield
            finally:
                del _held[key]
    finally:
        os.close(fd)  # drops the lock


@contextlib.contextmanager
def _recorded(root: Path) -> Iterator[None]:
    """Write driver.json for this process and keep its heartbeat until the driver ends."""
    pid = os.getpid()
    record = {
        "pid": pid,
        "host": HOST,
        "started": time.time(),
        "process_start": process_start(pid),
        "token": secrets.token_hex(8),
    }
    write_json(root / DRIVER_FILE, {**record, "heartbeat": record["started"]})
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(root, record, stop), daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        with contextlib.suppress(OSError, ExperimentError):
            current = read_driver(root)
            if current is not None and current.get("token") == record["token"]:
                (root / DRIVER_FILE).unlink()


def grid_alive(root: Path) -> bool:
    """Whether a live driver runs this experiment (for `kdray status`; takes no lock)."""
    driver = read_driver(root)
    return driver is not None and driver_alive(root, driver)
