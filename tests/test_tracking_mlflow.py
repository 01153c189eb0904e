"""MLflow tracking against a real `mlflow server` on 127.0.0.1 (and the default SQLite store in
the experiment folder), read back with the MLflow client: parameters, metric history, nesting,
and that a resumed or restarted run adds no MLflow run. A whole grid's runs in MLflow, resumed
after a Ctrl-C, are checked on the searched grid (`tests/test_search_grid.py`)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from kdray.data import prepare_data
from kdray.spec.load import parse_job
from kdray.spec.plan import make_plan
from kdray.store.experiment import Experiment
from kdray.tracking.tracker import Tracker
from tests.conftest import tiny_job_dict
from tests.test_worker import run_local

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# MLflow's SQLite store, in this process: SQLAlchemy deprecates a loader option MLflow uses
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module", autouse=True)
def mlflow_server_process(tmp_path_factory):
    """`mlflow server` on a free port of 127.0.0.1, its store a SQLite file, started as the module
    starts (it takes a few seconds, while the first tests, which need no server, run); killed
    after."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # no job runner, no huey workers
    }
    env.pop("PYTEST_CURRENT_TEST", None)  # MLflow checks its own sessions under pytest
    log = (folder / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{folder}/mlflow.db",
         "--artifacts-destination", str(folder / "artifacts"), "--workers", "1"],
        cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        yield server, f"http://127.0.0.1:{port}", folder / "server.log"
    finally:
        os.killpg(server.pid, signal.SIGKILL)  # the server, its uvicorn worker: nothing to keep
        server.wait()
        log.close()


@pytest.fixture
def mlflow_server(mlflow_server_process) -> str:
    """The server's URI, once it answers."""
    server, uri, log = mlflow_server_process
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                if answer.status == 200:
                    return uri
        except OSError:
            pass
        if server.poll() is not None or time.time() > deadline:
            raise RuntimeError("mlflow server did not start:\n" + _tail(log))
        time.sleep(0.3)


def _tail(path: Path) -> str:
    return "\n".join(path.read_text().splitlines()[-20:])


def client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def runs_of(uri: str, experiment: str) -> list:
    mlflow = client(uri)
    found = mlflow.get_experiment_by_name(experiment)
    return mlflow.search_runs([found.experiment_id], max_results=1000) if found else []


def steps(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client(uri).get_metric_history(run_id, key))


def epochs(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "epochs.jsonl").read_text().splitlines()]


def kdray_warnings(text: str) -> list[str]:
    return [line for line in text.splitlines() if "kdray: warning: MLflow" in line]


def teacher_run(tmp_path: Path, mlflow: dict):
    raw = tiny_job_dict(tmp_path)
    raw["tracking"] = {"mlflow": mlflow}
    job = parse_job(raw)
    spec = make_plan(job).stage("teacher")[0]
    return job, spec, prepare_data(job.data, tmp_path / "data")


def test_the_default_store_is_sqlite_inside_the_experiment_folder(tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    root = tmp_path / "exp"
    job, spec, data = teacher_run(root, {})
    run_dir, summary = run_local(root, job, spec, data, run_dir=root / "runs" / spec.run_id)
    store = root / "mlflow" / "mlflow.db"
    assert store.is_file() and not list(cwd.iterdir())  # nothing beside the experiment
    (run,) = runs_of(f"sqlite:///{store}", job.name)
    assert run.info.status == "FINISHED" and run.data.tags["kdray.experiment"] == str(root)
    assert run.data.metrics["final/val_acc"] == pytest.approx(summary["val_acc"])
    rows = epochs(run_dir)
    assert steps(f"sqlite:///{store}", run.info.run_id, "val_acc") == [
        (r["epoch"], r["val_acc"]) for r in rows
    ]
    # the same run again (a retried trial): the MLflow run goes on, no epoch logged twice
    run_local(root, job, spec, data, run_dir=run_dir)
    (again,) = runs_of(f"sqlite:///{store}", job.name)
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert [s for s, _ in steps(f"sqlite:///{store}", run.info.run_id, "val_acc")] == [1, 2]
    experiment = client(f"sqlite:///{store}").get_experiment_by_name(job.name)
    assert experiment.artifact_location == (root / "mlflow" / "artifacts").as_uri()


def test_a_server_that_is_down_warns_once_and_the_run_finishes(tmp_path, capfd):
    job, spec, data = teacher_run(tmp_path, {"tracking_uri": f"http://127.0.0.1:{free_port()}"})
    started = time.time()
    tracker = Tracker.start(job, spec, tmp_path / "runs" / spec.run_id, data)
    assert time.time() - started < 5 and not tracker.backends  # one probe, no retries
    _, summary = run_local(tmp_path, job, spec, data)
    assert summary["status"] == "finished"
    warned = kdray_warnings(capfd.readouterr().err)  # one per start: ours, then the worker's
    assert len(warned) == 2 and all("no MLflow server answers" in w for w in warned)


def test_the_tracker_as_the_worker_drives_it_and_again_after_a_restart(
    tmp_path, mlflow_server, capfd
):
    """Start, one row per epoch, finish; then a restart from the epoch-1 checkpoint (the worker
    passes the restored history): the same MLflow run, no epoch twice."""
    name = f"run-{tmp_path.name}"
    job, spec, data = teacher_run(tmp_path, {"tracking_uri": mlflow_server, "experiment": name})
    run_dir = tmp_path / "runs" / spec.run_id
    rows = [
        {"epoch": e, "train_loss": 1.0 / e, "loss_ce": 1.0 / e, "train_acc": 0.3 * e,
         "lr": 0.003, "val_acc": 0.25 * e}
        for e in (1, 2)
    ]  # fmt: skip
    tracker = Tracker.start(job, spec, run_dir, data, [])
    tracker.log(rows[0])  # the worker dies in epoch 2
    tracker = Tracker.start(job, spec, run_dir, data, rows[:1])
    tracker.log(rows[1])
    summary = {"status": "finished", "epochs": 2, "test_acc": 0.5, "val_f1": 0.4, "error": None}
    tracker.finish({**summary, "replicas_in_sync": None, "val_report": {"HAND": {"f1": 0.4}}})
    (run,) = runs_of(mlflow_server, name)
    assert run.info.run_name == spec.run_id and run.info.status == "FINISHED"
    assert "mlflow.parentRunId" not in run.data.tags  # no grid driver, no grid run
    assert run.data.tags["kdray.status"] == "finished" and run.data.tags["kdray.stage"] == "teacher"
    params = run.data.params
    assert params["model"] == "resnet10t" and params["method"] == "none"
    assert params["teachers"] == "none" and params["studies"] == "normal"
    assert params["train.epochs"] == "2" and params["data_fingerprint"] == data.fingerprint
    for key in ("train_loss", "val_acc", "loss_ce"):
        assert steps(mlflow_server, run.info.run_id, key) == [(r["epoch"], r[key]) for r in rows]
    assert run.data.metrics["final/test_acc"] == 0.5 and run.data.metrics["final/val_f1"] == 0.4
    assert not [k for k in run.data.metrics if "report" in k or "replicas" in k]
    assert not kdray_warnings(capfd.readouterr().err)


def test_a_server_lost_mid_run_warns_once_and_stops_costing_time(tmp_path, mlflow_server, capfd):
    name = f"lost-{tmp_path.name}"
    job, spec, data = teacher_run(tmp_path, {"tracking_uri": mlflow_server, "experiment": name})
    tracker = Tracker.start(job, spec, tmp_path / "runs" / spec.run_id, data)
    (backend,) = tracker.backends
    tracker.log({"epoch": 1, "train_loss": 1.0, "val_acc": 0.5})
    backend.client = client(f"http://127.0.0.1:{free_port()}")  # the server goes away
    started = time.time()
    for epoch in (2, 3):
        tracker.log({"epoch": epoch, "train_loss": 0.5, "val_acc": 0.6})
    tracker.finish({"status": "finished", "test_acc": 0.5, "epochs": 3})
    assert time.time() - started < 30  # 3 tries of one call, then nothing
    assert not tracker.backends
    assert len(kdray_warnings(capfd.readouterr().err)) == 1
    (run,) = runs_of(mlflow_server, name)
    assert [s for s, _ in steps(mlflow_server, run.info.run_id, "val_acc")] == [1]


def test_the_grid_run_is_found_again_and_closes_what_dead_trials_left_running(
    tmp_path, mlflow_server
):
    """The driver's side without training: a grid interrupted with one trial dead for good and
    one cut short, then resumed."""
    from kdray.tracking.tracker import GridTracker

    raw = tiny_job_dict(tmp_path)  # a teacher, its KD student, the student's baseline
    name = f"driver-{tmp_path.name}"
    raw["tracking"] = {"mlflow": {"tracking_uri": mlflow_server, "experiment": name}}
    job = parse_job(raw)
    exp = Experiment.create(job)
    dead, cut = sorted(exp.plan().runs)[:2]
    grid = GridTracker.start(exp, job)
    for run_id in (dead, cut):  # both die before their finish
        spec = exp.plan().runs[run_id]
        Tracker.start(job, spec, exp.run_dir(run_id)).log({"epoch": 1, "train_loss": 1.0})
    grid.finish([], {dead: "the worker died 3 times"}, complete=False)
    found = {r.data.tags.get("kdray.run_id", "grid"): r for r in runs_of(mlflow_server, name)}
    assert sorted(found) == sorted([dead, cut, "grid"])
    assert found[dead].info.status == "FAILED" and found[dead].data.tags["kdray.status"] == "failed"
    assert found[dead].data.tags["kdray.error"] == "the worker died 3 times"
    assert found[cut].info.status == "KILLED"
    assert found[cut].data.tags["kdray.status"] == "interrupted"
    assert found["grid"].info.status == "KILLED"
    # resumed: the same grid run, running again, and the cut-short run goes on in its own
    GridTracker.start(exp, job)
    Tracker.start(job, exp.plan().runs[cut], exp.run_dir(cut)).log({"epoch": 2, "train_loss": 0.5})
    again = {r.data.tags.get("kdray.run_id", "grid"): r for r in runs_of(mlflow_server, name)}
    assert {k: r.info.run_id for k, r in again.items()} == {
        k: r.info.run_id for k, r in found.items()
    }
    assert again["grid"].info.status == "RUNNING" and again[cut].info.status == "RUNNING"
    assert steps(mlflow_server, again[cut].info.run_id, "train_loss") == [(1, 1.0), (2, 0.5)]
