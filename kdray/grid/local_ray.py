"""Ray's start for a grid: a new local Ray (the default) or a running cluster's. Kept light
(Ray and the job only): `kdray.grid.run` imports Ray Tune and Ray Train only once the data's
checks passed. (Starting Ray in a background thread while the driver imported them left the
raylet's dashboard and runtime-env agents running, orphaned, after a Ctrl-C: Ray starts in the
main thread.)
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys

from kdray.grid.processes import descendants
from kdray.grid.signals import ray_processes_spared_by_sigterm
from kdray.spec.job import Job

DRIVER_RESOURCE = "trial_driver"  # one unit per trial driver (`kdray.grid.resources`)
JOIN_HINT = "start one there (ray start --head) or leave --address out to run on a new local Ray"
PROBE_TIMEOUT_S = 30


class ClusterError(Exception):
    """`--address` names no Ray cluster that answers (one line, exit 2)."""


def init_ray(job: Job, address: str | None = None, verbose: bool = False) -> None:
    """Start a local Ray (default) or join a cluster; idempotent. Under `kdray run`, a SIGTERM
    then stops the grid as Ctrl-C does (`kdray.grid.signals`), not as `ray.init`'s handler."""
    import ray

    if not ray.is_initialized():
        _init(job, address, verbose)


def _init(job: Job, address: str | None, verbose: bool) -> None:
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the legacy reporter is silent at verbose=0
    with ray_processes_spared_by_sigterm():
        if address:
            try:
                ray.init(address=address, log_to_driver=verbose, **worker_env(job))
            except (ConnectionError, RuntimeError) as exc:
                first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else repr(exc)
                raise ClusterError(
                    f"--address {address}: cannot join its Ray cluster: {first}"
                ) from None
        else:
            logging.getLogger(RAY_TOKEN_LOGGER).addFilter(_default_token_line_dropped)
            ray.init(
                address="local",  # a new local Ray, even if another one runs on this machine
                resources={DRIVER_RESOURCE: job.resources.max_concurrent_trials},
                include_dashboard=False,
                log_to_driver=verbose,
                configure_logging=verbose,
                **worker_env(job),
            )


def check_address(address: str) -> None:
    """Refuse an `--address` at which no Ray cluster answers, in seconds rather than Ray's own
    minutes of retries: `auto` with no cluster on this machine (nor in RAY_ADDRESS), a closed
    port, or a host that accepts the connection but is no Ray GCS. Called before the experiment
    folder is made, so a refused join leaves nothing behind."""
    from ray._common.network_utils import parse_address
    from ray._private.services import canonicalize_bootstrap_address

    if address.startswith("ray://"):
        return  # Ray Client: ray.init's own connection says what is wrong
    try:
        gcs = canonicalize_bootstrap_address(address)
    except ConnectionError:
        raise ClusterError(
            f"--address {address}: no running Ray cluster found on this machine (nor in "
            f"RAY_ADDRESS); {JOIN_HINT}"
        ) from None
    except ValueError:
        raise ClusterError(
            f"--address {address}: not a host:port address; give the head's host:port "
            "(e.g. 10.0.0.5:6379), or auto"
        ) from None
    if gcs is None:  # "local": a new local Ray
        return
    host, port = parse_address(gcs)
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        raise ClusterError(
            f"--address {address}: no Ray cluster answered at {gcs} ({reason}); {JOIN_HINT}"
        ) from None
    _gcs_answers(address, gcs)


# One GCS client, in a child process: its timeouts are Ray settings read once per process, and
# its retries print C++ warnings, both kept out of the driver.
_PROBE = "import sys; from ray._raylet import GcsClient; GcsClient(address=sys.argv[1])"


def _gcs_answers(address: str, gcs: str) -> None:
    env = {
        **os.environ,
        "RAY_gcs_rpc_server_connect_timeout_s": "5",
        "RAY_py_gcs_connect_timeout_s": "10",
    }
    try:
        probe = subprocess.run(
            [sys.executable, "-c", _PROBE, gcs],
            env=env,
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        reason = f"no answer within {PROBE_TIMEOUT_S} s"
    else:
        if probe.returncode == 0:
            return
        lines = probe.stderr.strip().splitlines()
        reason = lines[-1][:200] if lines else f"exit {probe.returncode}"
    raise ClusterError(
        f"--address {address}: no Ray cluster answered at {gcs} ({reason}); {JOIN_HINT}"
    )


# A new local Ray turns token authentication on by default and says so in a warning on every
# run, telling the user how to turn it off; kdray keeps Ray's default and drops that one line
# (only that one: `RAY_AUTH_MODE` set by the user, or another of Ray's warnings, still shows).
RAY_TOKEN_LOGGER = "ray._private.authentication.authentication_token_setup"


def _default_token_line_dropped(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Token authentication is enabled for this Ray")


def worker_env(job: Job) -> dict:
    """For a job with pretrained weights: `ray.init`'s runtime environment that starts every
    worker offline (HF_HUB_OFFLINE) with the weights caches this driver found them in, before
    it imports huggingface_hub (which reads them once). Nothing for other jobs."""
    if not job.weights_sources():
        return {}
    from kdray.tasks.weights import offline_env

    return {"runtime_env": {"env_vars": offline_env(job.weights_caches())}}


def shutdown_ray() -> None:
    """`ray.shutdown` without its graceful wait. The processes of a local Ray that `kdray run`
    started have SIGTERM blocked (`kdray.grid.signals`), so the SIGTERM that `ray.shutdown`
    sends each of them (raylet, GCS, ...) before waiting 1 s and killing it is never received:
    5 s at the end of every grid. Killed at once instead, with what the raylet started (its
    workers and its dashboard and runtime-env agents), which would otherwise outlive it. A
    joined cluster is only disconnected from, as `ray.shutdown` does."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    processes = getattr(node, "all_processes", None)
    if not ray.is_initialized() or not isinstance(processes, dict):
        ray.shutdown()
        return
    kill_all = node.kill_all_processes
    started = [p.process.pid for infos in processes.values() for p in infos if p.process]
    theirs = [pid for root in started for pid in descendants(root)]
    node.kill_all_processes = lambda **kwargs: kill_all(**{**kwargs, "allow_graceful": False})
    try:
        ray.shutdown()
    finally:
        node.kill_all_processes = kill_all
    for pid in theirs:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
