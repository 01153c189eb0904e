"""One driver per experiment folder (kdray.store.lock, issue 24): a second `kdray run`/`resume`
is refused naming the first; a killed driver, a reused pid or another host's silent driver never
block for good. No Ray: the first driver is a process holding the lock (tests/test_faults.py
races two real `kdray run`s)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kdray.cli import app
from kdray.store import lock
from kdray.store.lock import DRIVER_FILE, STALE_AFTER_S, GridBusy, hold_driver
from tests.conftest import REPO

HOLDER = """
import sys, time
from kdray.store.lock import hold_driver
with hold_driver(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def folder(tmp_path: Path) -> Path:
    """An experiment folder with a few files a grid would have written."""
    root = tmp_path / "runs" / "exp"
    (root / "runs" / "r1").mkdir(parents=True)
    (root / "job.json").write_text('{"name": "exp"}')
    (root / "plan.json").write_text('{"runs": []}')
    (root / "runs" / "r1" / "summary.json").write_text('{"status": "finished"}')
    return root


def contents(root: Path) -> dict[str, bytes]:
    skip = {DRIVER_FILE, lock.LOCK_FILE}  # the driver's own record (its heartbeat moves)
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()
            and p.name not in skip}  # fmt: skip


def start_holder(root: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(root)], cwd=REPO, env=env, stdout=subprocess.PIPE
    )
    assert holder.stdout.readline().strip() == b"held"
    return holder


def test_a_second_driver_is_refused_naming_the_first_and_a_killed_one_frees_the_folder(tmp_path):
    root = folder(tmp_path)
    before = contents(root)
    holder = start_holder(root)
    try:
        with pytest.raises(GridBusy) as busy, hold_driver(root):
            pass
        message = str(busy.value)
        started = json.loads((root / DRIVER_FILE).read_text())["started"]
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))
        for text in (f"process {holder.pid}", f"on {lock.HOST}", f"started {since}"):
            assert text in message, message
        result = CliRunner().invoke(app, ["resume", str(root)])  # the CLI: one line, exit 2
        assert result.exit_code == 2, result.output
        assert f"already being run by process {holder.pid}" in result.output
        assert contents(root) == before  # nothing of the first driver's folder touched
    finally:
        holder.send_signal(signal.SIGKILL)  # killed: no clean-up of its own
        holder.wait()
    assert json.loads((root / DRIVER_FILE).read_text())["pid"] == holder.pid  # left behind
    with hold_driver(root):  # yet the folder is free at once: the lock died with the process
        assert json.loads((root / DRIVER_FILE).read_text())["pid"] == os.getpid()
    assert not (root / DRIVER_FILE).exists()
    assert contents(root) == before


def record(root: Path, **fields) -> None:
    driver = {"pid": 4242, "host": "other-host", "started": time.time() - 60, **fields}
    (root / DRIVER_FILE).write_text(json.dumps(driver))


def test_another_hosts_driver_is_alive_while_its_heartbeat_is_fresh(tmp_path):
    root = folder(tmp_path)
    record(root)  # its host's lock is not visible here (a shared folder without locking)
    busy = pytest.raises(GridBusy, match="on other-host .*mounted without locking")
    with busy, hold_driver(root):
        pass
    old = time.time() - STALE_AFTER_S - 5  # its heartbeat stopped: that host died
    os.utime(root / DRIVER_FILE, (old, old))
    with hold_driver(root):
        assert json.loads((root / DRIVER_FILE).read_text())["host"] == lock.HOST


def test_a_reused_pid_is_not_taken_for_the_driver(tmp_path):
    root = folder(tmp_path)
    sleeper = subprocess.Popen(["sleep", "30"])  # a live process that is not the driver
    try:
        record(root, pid=sleeper.pid, host=lock.HOST, process_start="1")  # another start time
        with hold_driver(root):
            pass
        record(root, pid=sleeper.pid, host=lock.HOST)  # an older kdray's record: no start time
        with pytest.raises(GridBusy, match=f"process {sleeper.pid}"), hold_driver(root):
            pass
    finally:
        sleeper.kill()
        sleeper.wait()


def test_the_lock_is_reentrant_within_one_driver(tmp_path):
    root = folder(tmp_path)
    with hold_driver(root):
        with hold_driver(root):  # `kdray run` holds it, and so does run_experiment inside
            assert (root / DRIVER_FILE).exists()
        assert (root / DRIVER_FILE).exists()
    assert not (root / DRIVER_FILE).exists()
