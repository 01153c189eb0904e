"""No endless waits (issue 24): a trial whose resources never come stops the grid after
`faults.resource_wait_s`, with one line saying what it waited for and how long. The clock and
the warnings are tested without Ray; one test runs a grid on a Ray without GPUs (~30 s)."""

from __future__ import annotations

import pytest
import ray

from kdray.grid import resources
from kdray.grid.resources import ResourceError, ResourceWait, driver_warning, infeasible_bundles
from kdray.spec.load import parse_job
from kdray.store.experiment import Experiment
from kdray.store.status import status_rows
from tests.conftest import tiny_job_dict

GPU = [{"CPU": 1.0, "GPU": 1.0}]


def pg(state: str, scheduling: str, bundles=GPU) -> dict:
    return {
        "state": state,
        "bundles": dict(enumerate(bundles)),
        "stats": {"scheduling_state": scheduling},
    }


def test_only_groups_no_node_can_host_count_not_busy_ones():
    table = {
        "a": pg("PENDING", "INFEASIBLE"),
        "b": pg("PENDING", "NO_RESOURCES", [{"CPU": 1.0}]),  # waits for other trials: fine
        "c": pg("CREATED", "FINISHED", [{"CPU": 1.0}]),
        "d": pg("REMOVED", "REMOVED"),
    }
    assert infeasible_bundles(table) == [GPU]


def test_the_wait_is_counted_across_trains_retries_and_restarts_after_a_gap(monkeypatch):
    monkeypatch.setattr(resources, "_nodes_line", lambda: "2 nodes alive")
    wait = ResourceWait(100, "/runs/x")
    wait.observe([GPU], 0)
    wait.observe([], 10)  # Ray Train replaced a timed-out placement group: no gap to speak of
    wait.observe([GPU], 60)
    assert wait.message is None
    wait.observe([], 60 + resources.RESET_AFTER_S + 1)  # the demand was met: the clock restarts
    wait.observe([GPU], 200)
    wait.observe([GPU], 299)
    assert wait.message is None
    wait.observe([GPU], 300)
    assert wait.message is not None and "\n" not in wait.message
    for text in ("waited 100 s", "resource_wait_s: 100", "1 x {CPU: 1, GPU: 1}", "kdray resume"):
        assert text in wait.message


def test_a_cluster_without_trial_driver_is_warned_about(monkeypatch):
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0})
    assert "trial drivers may run on worker nodes" in driver_warning()
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0, "trial_driver": 2.0})
    assert driver_warning() is None


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_a_grid_asking_for_a_resource_no_node_has_stops_within_its_wait(tmp_path):
    import re

    from kdray.grid.run import run_experiment

    # a running Ray with no GPU and no autoscaler, joined as a cluster (as `--address` does)
    ray.init(num_cpus=1, resources={"trial_driver": 2}, include_dashboard=False)
    address = ray.get_runtime_context().gcs_address
    raw = tiny_job_dict(tmp_path)
    raw["resources"]["gpus_per_worker"] = 1
    raw["faults"] = {"resource_wait_s": 3}
    job = parse_job(raw)
    exp = Experiment.create(job)
    try:
        with pytest.raises(ResourceError) as refused:
            run_experiment(exp, job, address=address)
    finally:
        ray.shutdown()
    message = str(refused.value)
    assert "\n" not in message and "GPU: 1" in message, message
    waited = int(re.search(r"waited (\d+) s", message).group(1))
    assert 3 <= waited <= 3 + resources.POLL_S + 1, message  # its wait, not Train's 60 s retries
    states = {r["state"] for r in status_rows(exp)}
    assert states <= {"interrupted", "pending"}, states  # resumable once the nodes exist
