"""Ray's start for a grid: a new local Ray (the default) or a running cluster's.

`ray.init` of a local Ray takes seconds that are mostly waiting for the processes it starts
(GCS, raylet, monitors) to come up, while the driver has its own seconds of work before the
grid (importing Ray Tune and Ray Train). `start_in_background` begins the start in a thread so
that both go on at once; the next `init_ray` waits for it and raises what it raised. Kept light
(Ray and the job only), so the start begins before the driver imports the rest.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from kdray.grid.signals import ray_processes_spared_by_sigterm, reclaim_sigterm
from kdray.spec.job import Job

DRIVER_RESOURCE = "trial_driver"  # one unit per trial driver (`kdray.grid.resources`)


class _NoSigtermHandlerWarning(logging.Filter):
    """`ray.init` outside the main thread warns that it set no SIGTERM handler: under `kdray run`
    SIGTERM is kdray's own (`kdray.grid.signals`), so there is nothing to warn of."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("SIGTERM handler is not set")


logging.getLogger("ray._private.worker").addFilter(_NoSigtermHandlerWarning())


class _Start(threading.Thread):
    """`init_ray` in a thread; `done` once it returned, `error`: what it raised. The thread
    then lives until Ray is shut down: Ray's processes die with the thread that started them
    (Ray sets PR_SET_PDEATHSIG on them, which Linux fires when the parent *thread* exits)."""

    def __init__(self, job: Job, address: str | None, verbose: bool):
        super().__init__(name="kdray-ray-start", daemon=True)
        self.args_ = (job, address, verbose)
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            _init(*self.args_)
        except BaseException as exc:  # raised again by `wait_for_start`, in the driver's thread
            self.error = exc
        self.done.set()
        import ray

        while ray.is_initialized():  # Ray's processes live while this thread does
            time.sleep(2)


_started: list[_Start] = []  # the start in progress, if any


def start_in_background(job: Job, address: str | None = None, verbose: bool = False) -> None:
    """Begin `init_ray(job, address, verbose)` in a thread (see the module docstring)."""
    import ray

    if not _started and not ray.is_initialized():
        _started.append(_Start(job, address, verbose))
        _started[0].start()


def wait_for_start() -> None:
    """Wait for a start begun by `start_in_background`, and raise its error; nothing if none."""
    if not _started:
        return
    start = _started.pop()
    start.done.wait()
    reclaim_sigterm()
    if start.error is not None:
        raise start.error


def init_ray(job: Job, address: str | None = None, verbose: bool = False) -> None:
    """Start a local Ray (default) or join a cluster; idempotent, and it waits for a start in
    the background. Under `kdray run`, a SIGTERM then stops the grid as Ctrl-C does
    (`kdray.grid.signals`), not as `ray.init`'s handler."""
    import ray

    wait_for_start()
    if not ray.is_initialized():
        _init(job, address, verbose)


def _init(job: Job, address: str | None, verbose: bool) -> None:
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the legacy reporter is silent at verbose=0
    with ray_processes_spared_by_sigterm():
        if address:
            ray.init(address=address, log_to_driver=verbose, **worker_env(job))
        else:
            ray.init(
                address="local",  # a new local Ray, even if another one runs on this machine
                resources={DRIVER_RESOURCE: job.resources.max_concurrent_trials},
                include_dashboard=False,
                log_to_driver=verbose,
                configure_logging=verbose,
                **worker_env(job),
            )


def worker_env(job: Job) -> dict:
    """For a job with pretrained weights: `ray.init`'s runtime environment that starts every
    worker offline (HF_HUB_OFFLINE) with the weights caches this driver found them in, before
    it imports huggingface_hub (which reads them once). Nothing for other jobs."""
    if not job.weights_sources():
        return {}
    from kdray.tasks.weights import offline_env

    return {"runtime_env": {"env_vars": offline_env(job.weights_caches())}}
