"""Submitting a grid to a running Ray cluster through the Ray Jobs API.

The project folder travels as the job's working directory (without virtualenvs and results), so
the job file must live inside it; the entrypoint is `kdray run <job> --address auto`, which
resumes by itself if the experiment already exists (Ray never retries an entrypoint).
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path

from kdray.spec.job import JobError
from kdray.spec.load import load_job


class SubmitError(Exception):
    """The Ray Jobs API cannot be reached, or refused a request."""


EXCLUDES = [".venv", ".git", "kdray-runs", "results", "wandb", "**/__pycache__", "*.egg-info"]


def entrypoint(job_path: str, overrides: list[str], python: str = "python") -> str:
    words = [python, "-m", "kdray", "run", job_path, "--address", "auto"]
    for assignment in overrides:
        words += ["--set", assignment]
    return " ".join(shlex.quote(w) for w in words)


def submit(
    job_file: Path, overrides: list[str], address: str, working_dir: Path, python: str = "python"
) -> str:
    """Validate the job here, then submit it; returns the submission id."""
    import logging

    logging.getLogger("ray").setLevel(logging.WARNING)  # packaging chatter
    job = load_job(job_file, overrides)  # a bad job fails here, not minutes later on the cluster
    try:
        relative = job_file.resolve().relative_to(working_dir.resolve())
    except ValueError:
        raise JobError(
            [
                f"{job_file}: the job file must be inside the project folder {working_dir}, "
                "which is what travels to the cluster"
            ]
        ) from None
    return submit_when_an_agent_answers(
        client(address),
        entrypoint=entrypoint(relative.as_posix(), overrides, python),
        runtime_env={"working_dir": str(working_dir), "excludes": EXCLUDES},
        metadata={"kdray_job": job.name},
    )


AGENT_WAIT_S = 60.0


def submit_when_an_agent_answers(jobs, wait_s: float = AGENT_WAIT_S, **request) -> str:
    """`jobs.submit_job(**request)`. The Jobs API answers "No available agent to submit job"
    until the head node's job agent is up, seconds after `ray start` (longer on a busy head):
    asked again every 2 s for up to `wait_s`, then a SubmitError saying so."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return jobs.submit_job(**request)
        except RuntimeError as exc:
            if "No available agent" not in str(exc):
                raise
            if time.monotonic() >= deadline:
                raise SubmitError(
                    f"the cluster's Ray Jobs agent did not answer within {wait_s:.0f} s "
                    f"({exc}); check the head node with `ray status` and submit again"
                ) from None
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))


def client(address: str):
    """A Ray Jobs client; an address that is malformed or does not answer raises SubmitError."""
    import requests
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except (ConnectionError, ValueError) as exc:
        raise SubmitError(
            f"cannot reach the Ray Jobs API at {address} ({exc}); start the cluster or its "
            "SSH tunnel (docs/cluster.md), or give its dashboard with --address "
            "http://HOST:8265"
        ) from None
    except (RuntimeError, requests.RequestException) as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if isinstance(exc, RuntimeError) and "Version check returned 404" in str(exc):
            status = 404
        if status is None:
            raise  # an older Ray's dashboard: Ray's own words say which version it needs
        raise SubmitError(
            f"no Ray dashboard answered at {address}: its Jobs API version check got HTTP "
            f"{status} (another server, or the wrong port); give the cluster's dashboard with "
            "--address http://HOST:8265 (docs/cluster.md)"
        ) from None
