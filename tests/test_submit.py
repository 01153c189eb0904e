"""`kdray submit` against a real local Ray head with its dashboard (Ray Jobs API)."""

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from kdray.cli import app
from kdray.grid.submit import SubmitError, entrypoint, submit, submit_when_an_agent_answers
from tests.conftest import tiny_job_dict

pytestmark = pytest.mark.ray
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_cluster(temp_dir: Path) -> None:
    """Stop only this test's Ray processes (plain `ray stop` would stop every Ray here)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="ignore")
        except OSError:
            continue
        if str(temp_dir) in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), 9)


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    temp_dir = Path("/tmp") / f"kdray-submit-{os.getpid()}"
    port, dashboard = free_port(), free_port()
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled"}
    subprocess.run(
        [
            str(VENV_BIN / "ray"),
            "start",
            "--head",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            # the job agent's own port: its default (52365) may be held by another Ray on this
            # machine (the suite runs two at once), and then no agent ever takes a submission
            f"--dashboard-agent-listen-port={free_port()}",
            "--num-cpus=2",
            '--resources={"trial_driver": 2}',
            f"--temp-dir={temp_dir}",
            "--disable-usage-stats",
        ],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    yield f"http://127.0.0.1:{dashboard}"
    kill_cluster(temp_dir)


def test_entrypoint_quotes_and_resumes_on_its_own():
    line = entrypoint("jobs/a b.yaml", ["train.epochs=1", "seeds=[0, 1]"])
    assert line == (
        "python -m kdray run 'jobs/a b.yaml' --address auto "
        "--set train.epochs=1 --set 'seeds=[0, 1]'"
    )


def test_submit_refuses_a_job_file_outside_the_project(tmp_path, monkeypatch):
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(tiny_job_dict(tmp_path)))
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    result = CliRunner().invoke(app, ["submit", str(job_file), "--address", "http://127.0.0.1:9"])
    assert result.exit_code == 2
    assert "must be inside the project folder" in result.output


def test_a_head_whose_job_agent_is_not_up_yet_is_asked_again_then_named():
    """Right after `ray start` the Jobs API answers "No available agent to submit job": the
    submission is asked again until the agent answers; one that never does is one clear error."""

    class Head:
        def __init__(self, busy: int):
            self.busy, self.asked = busy, 0

        def submit_job(self, **request):
            self.asked += 1
            if self.asked <= self.busy:
                raise RuntimeError(
                    "Request failed with status code 500: No available agent to submit job, "
                    "please try again later.."
                )
            return f"raysubmit_{request['entrypoint']}"

    starting = Head(busy=1)
    assert submit_when_an_agent_answers(starting, wait_s=10, entrypoint="x") == "raysubmit_x"
    assert starting.asked == 2
    with pytest.raises(SubmitError, match="Jobs agent did not answer within 0 s"):
        submit_when_an_agent_answers(Head(busy=99), wait_s=0, entrypoint="x")

    class Refusing(Head):
        def submit_job(self, **request):
            raise RuntimeError("Request failed with status code 400: bad runtime_env")

    with pytest.raises(RuntimeError, match="bad runtime_env"):  # other errors are not retried
        submit_when_an_agent_answers(Refusing(busy=0), wait_s=10, entrypoint="x")


def test_submitted_quickstart_runs_to_completion_on_the_cluster(tmp_path, ray_head):
    from ray.job_submission import JobStatus, JobSubmissionClient

    project = tmp_path / "project"
    (project / "jobs").mkdir(parents=True)
    raw = tiny_job_dict(tmp_path)
    raw["baseline"] = False
    job_file = project / "jobs" / "tiny.yaml"
    job_file.write_text(yaml.safe_dump(raw))
    submission_id = submit(job_file, ["train.epochs=1"], ray_head, project)
    client = JobSubmissionClient(ray_head)
    deadline = time.time() + 300
    while time.time() < deadline:
        status = client.get_job_status(submission_id)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            break
        time.sleep(2)
    logs = client.get_job_logs(submission_id)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    trials = pq.read_table(tmp_path / "runs" / "tiny" / "results" / "trials.parquet").to_pylist()
    assert len(trials) == 2 and all(r["status"] == "finished" for r in trials)
    assert all(r["epochs"] == 1 for r in trials)  # the --set override travelled with the job
