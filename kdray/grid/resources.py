"""What the grid asks of the Ray cluster, and how long it waits for it.

A trial's worker group that no node can host waits forever in Ray Train 2.60: the worker-group
start times out after `RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S` (60 s) and the controller retries
without limit (`FailureConfig.controller_failure_limit` defaults to -1). kdray keeps Train's
retries (each new placement group keeps the demand in front of an autoscaler) and bounds the
wait itself: `ResourceWait`, a Tune stopper, watches the cluster's placement groups and stops
the grid once one has been *infeasible* (no node of the cluster, busy or not, could ever host it)
for `faults.resource_wait_s`. A group that only waits for busy resources (`NO_RESOURCES`: other
trials hold them) is not counted: it gets them when those trials end.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import ray
from ray import tune

from kdray.grid.local_ray import DRIVER_RESOURCE
from kdray.spec.job import Job

# Ray Train removes a placement group that timed out and makes the next one at once; a gap this
# long with no infeasible group means the demand was met (or went away), and the clock restarts
RESET_AFTER_S = 30.0
POLL_S = 2.0


class ResourceError(Exception):
    pass


def driver_resources() -> dict[str, float]:
    if ray.cluster_resources().get(DRIVER_RESOURCE, 0) > 0:
        return {DRIVER_RESOURCE: 1}
    return {"CPU": 0.01}  # a cluster without the custom resource (see cluster.yaml)


def driver_warning() -> str | None:
    """A cluster without `trial_driver` lets Tune put trial drivers on worker nodes."""
    if ray.cluster_resources().get(DRIVER_RESOURCE, 0) > 0:
        return None
    return (
        f"this Ray cluster has no `{DRIVER_RESOURCE}` resource, so trial drivers may run on "
        "worker nodes and die with them (their runs then restart from their last checkpoint); "
        f"give the head node `{DRIVER_RESOURCE}: N` (N >= resources.max_concurrent_trials, "
        "see cluster.yaml)"
    )


def worker_bundle(job: Job) -> dict[str, float]:
    r = job.resources
    return {"CPU": r.cpus_per_worker, **({"GPU": r.gpus_per_worker} if r.gpus_per_worker else {})}


def _autoscaler_maximum() -> dict[str, float] | None:
    """The most the cluster's autoscaler may ever add up to (None: no autoscaler config)."""
    try:
        from ray._private import state as ray_private_state

        return ray_private_state.get_max_resources_from_cluster_config() or None
    except Exception:  # an older or newer Ray without it: no upper bound known
        return None


def check_resources(job: Job, local: bool) -> list[str]:
    """Refuse a grid that can never run; returns warnings for one that waits for nodes.

    On a local Ray (kdray started it, nothing can join) a worker group that no node can host
    is refused at once. On a joined cluster it is refused at once only when its autoscaler's
    maximum cannot host it; otherwise the grid starts and waits up to `faults.resource_wait_s`
    for nodes to join (an autoscaler adding GPU nodes from zero, a lost node replaced).
    """
    r, bundle = job.resources, worker_bundle(job)
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    problem = _fit_problem(job, nodes)
    if problem is None:
        return []
    maximum = _autoscaler_maximum()
    if local or (maximum is not None and any(maximum.get(k, 0) < v * r.workers_per_trial
                                             for k, v in bundle.items())):  # fmt: skip
        raise ResourceError(problem)
    return [
        f"{problem.split(';')[0]} now: the grid waits up to {job.faults.resource_wait_s:g} s "
        "(faults.resource_wait_s) for such nodes to join the cluster"
    ]


def _fit_problem(job: Job, nodes: list[dict]) -> str | None:
    """Why no node (or the nodes together) can host one trial's workers, or None."""
    r = job.resources
    cpu_fit = [n for n in nodes if n.get("CPU", 0) >= r.cpus_per_worker]
    if not cpu_fit:
        most = max((n.get("CPU", 0) for n in nodes), default=0)
        return (
            f"resources.cpus_per_worker={r.cpus_per_worker}: no node has that many CPUs "
            f"(largest: {most}); lower it"
        )
    if r.gpus_per_worker > 0 and not [n for n in cpu_fit if n.get("GPU", 0) >= r.gpus_per_worker]:
        return (
            f"resources.gpus_per_worker={r.gpus_per_worker}: no node of this Ray cluster has "
            "that many GPUs; set gpus_per_worker: 0 to train on CPU"
        )
    total_cpu = sum(n.get("CPU", 0) for n in nodes)
    if r.cpus_per_worker * r.workers_per_trial > total_cpu:
        return (
            f"resources: {r.workers_per_trial} workers x {r.cpus_per_worker} CPUs exceeds the "
            f"cluster's {total_cpu} CPUs; lower workers_per_trial or cpus_per_worker"
        )
    return None


def infeasible_bundles(table: dict) -> list[list[dict]]:
    """The bundles of every pending placement group that no node of the cluster can host."""
    return [
        list(pg["bundles"].values())
        for pg in table.values()
        if pg.get("state") in ("PENDING", "RESCHEDULING")
        and (pg.get("stats") or {}).get("scheduling_state") == "INFEASIBLE"
    ]


def _shown(bundles: list[dict]) -> str:
    parts = []
    for bundle in bundles:
        text = ", ".join(f"{k}: {v:g}" for k, v in bundle.items())
        parts.append("{" + text + "}")
    counts = {p: parts.count(p) for p in parts}
    return " + ".join(f"{n} x {p}" for p, n in counts.items())


class ResourceWait(tune.Stopper):
    """Stop the grid once some placement group has been infeasible for `limit_s` seconds;
    `message` then says what it waited for, how long and what to do (one line)."""

    def __init__(
        self,
        limit_s: float,
        experiment: str,
        clock: Callable[[], float] = time.monotonic,
        on_stop: Callable[[], object] | None = None,
    ):
        self.limit_s = limit_s
        self.experiment = experiment
        self.clock = clock
        self.on_stop = on_stop  # called once, when the wait is over
        self.since: float | None = None
        self.last_seen = self.last_poll = float("-inf")
        self.message: str | None = None

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        now = self.clock()
        if self.message is None and now - self.last_poll >= POLL_S:
            self.last_poll = now
            self.observe(infeasible_bundles(ray.util.placement_group_table()), now)
            if self.message is not None and self.on_stop is not None:
                self.on_stop()
        return self.message is not None

    def observe(self, waiting: list[list[dict]], now: float) -> None:
        if not waiting:
            if self.since is not None and now - self.last_seen > RESET_AFTER_S:
                self.since = None
            return
        self.since = now if self.since is None else self.since
        self.last_seen = now
        if now - self.since >= self.limit_s:
            self.message = (
                f"resources: waited {now - self.since:.0f} s (faults.resource_wait_s: "
                f"{self.limit_s:g}) for {_shown(waiting[0])}, which no node of this Ray cluster "
                f"can host ({_nodes_line()}); add such a node or lower resources, then "
                f"`kdray resume {self.experiment}`"
            )


def _nodes_line() -> str:
    try:
        alive = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    except Exception:
        return "nodes unknown"
    largest = max(alive, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), default={})
    shown = {k: largest[k] for k in ("CPU", "GPU") if k in largest}
    return f"{len(alive)} nodes alive, the largest {shown}"
