"""How the `kdray` command ends: with its exit code, after what a normal Python exit does
first (other threads waited for, atexit handlers run, output flushed), skipping only the
interpreter's own teardown (`kdray.cli.exit_now`)."""

from __future__ import annotations

import subprocess
import sys

COMMAND = """
import atexit, sys, threading, time
from pathlib import Path
import kdray.cli
out = Path(sys.argv[1])
atexit.register(lambda: (out / "atexit").write_text("ran"))
def late():
    time.sleep(0.3)
    (out / "thread").write_text("done")
threading.Thread(target=late).start()
sys.argv = ["kdray", *sys.argv[2:]]
kdray.cli.main()
raise SystemExit("main() returned")
"""


def kdray(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", COMMAND, str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_refusal_exits_2_after_threads_and_atexit_handlers(tmp_path):
    done = kdray(tmp_path, "validate", str(tmp_path / "missing.yaml"))
    assert done.returncode == 2, done.stderr
    assert "no such job file" in done.stderr
    assert (tmp_path / "atexit").read_text() == "ran"
    assert (tmp_path / "thread").read_text() == "done"


def test_output_to_a_pipe_is_flushed_before_the_exit(tmp_path):
    done = kdray(tmp_path, "--help")
    assert done.returncode == 0, done.stderr
    assert "Usage" in done.stdout and "validate" in done.stdout
    assert (tmp_path / "atexit").read_text() == "ran"


def test_each_command_is_one_line_in_the_command_list():
    """`kdray --help` lists a command by its docstring's first paragraph, line breaks kept: a
    newcomer's first screen reads one line a command."""
    from kdray.cli import app

    for command in app.registered_commands:
        summary = command.callback.__doc__.strip().split("\n\n")[0]
        assert "\n" not in summary and len(summary) <= 96, (command.callback.__name__, summary)
