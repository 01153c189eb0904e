"""MLflow tracking: one MLflow run per grid, one nested run per kdray run.

Where: `tracking.mlflow.tracking_uri` (the hospital's `mlflow server`), or by default a SQLite
store inside the experiment folder, `<experiment>/mlflow/mlflow.db` (artifacts, of which kdray
logs none, under `mlflow/artifacts/`): nothing leaves the machine. SQLite, not MLflow's file
store: MLflow 3 refuses the file store unless `MLFLOW_ALLOW_FILE_STORE=true` (it is in
maintenance mode), and SQLite serialises the concurrent trials' writes with locks.

Identity, so that `kdray resume`, a Ray Train restart or a Ray Tune retry never adds a run: the
grid's run carries the tag `kdray.key` = a hash of the experiment folder, each nested run
`kdray.key` = a hash of (folder, run id); a run that starts looks its key up and continues the
MLflow run it finds (metric steps already logged are not logged again). The driver creates the
grid's run before the grid starts and closes it after; a worker never creates it.

A server that is down never stalls training: an http(s) server is probed once with a short
timeout before anything is logged, and MLflow's HTTP client retries 2 times with a 5 s timeout
(its defaults: 7 retries with exponential backoff, 120 s timeout, minutes per call) unless the
environment sets MLFLOW_HTTP_REQUEST_* itself. MLflow's usage telemetry is off
(MLFLOW_DISABLE_TELEMETRY) unless the environment says otherwise.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from pathlib import Path

from kdray.tracking.common import numbers, searches, studies

# set before mlflow is imported; a value already in the environment wins
ENVIRONMENT = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
}
PROBE_TIMEOUT_S = (3.0, 5.0)  # connect, read
STORE_FOLDER = "mlflow"
ERROR_TAG_CHARS = 2000


def store_uri(cfg, root: Path) -> str:
    """The tracking URI: the job's, or the SQLite store inside the experiment folder."""
    if cfg.tracking_uri:
        return cfg.tracking_uri
    return f"sqlite:///{Path(root) / STORE_FOLDER / 'mlflow.db'}"


def grid_key(root: Path) -> str:
    return hashlib.sha256(str(root).encode()).hexdigest()[:24]


def run_key(root: Path, run_id: str) -> str:
    return hashlib.sha256(f"{root}\0{run_id}".encode()).hexdigest()[:24]


def client_for(cfg, root: Path):
    """An `MlflowClient` for the job's store, after a short probe of an http(s) server."""
    for name, value in ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    for noisy in ("alembic", "mlflow.store.db.utils"):  # "Creating initial tables...", per store
        logging.getLogger(noisy).setLevel(logging.WARNING)
    uri = store_uri(cfg, root)
    if uri.startswith(("http://", "https://")):
        probe(uri)
    elif uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri), uri


def probe(uri: str) -> None:
    """Raise at once when nothing answers at `uri` (an HTTP error or a TLS setting of MLflow's
    own is for MLflow to report, not a server that is down)."""
    import requests

    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=PROBE_TIMEOUT_S)
    except requests.exceptions.SSLError:
        return
    except requests.exceptions.Timeout:
        raise ConnectionError(f"no MLflow server answers at {uri} (timed out)") from None
    except requests.exceptions.ConnectionError:
        raise ConnectionError(f"no MLflow server answers at {uri} (cannot connect)") from None


@contextlib.contextmanager
def quiet():
    """urllib3 warns on every retry; the tracker warns once, when it gives up."""
    pool = logging.getLogger("urllib3.connectionpool")
    level = pool.level
    pool.setLevel(logging.ERROR)
    try:
        yield
    finally:
        pool.setLevel(level)


def experiment_id(client, cfg, job, root: Path, uri: str) -> str:
    """The MLflow experiment's id, created if missing (local store: artifacts in the folder)."""
    from mlflow.exceptions import MlflowException

    name = cfg.experiment or job.name
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage != "active":
            raise RuntimeError(f"MLflow experiment {name!r} is deleted; restore or rename it")
        return found.experiment_id
    location = None
    if uri.startswith("sqlite:///") and not cfg.tracking_uri:
        location = (Path(root) / STORE_FOLDER / "artifacts").as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # created meanwhile by another process
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def find_run(client, experiment: str, key: str):
    """The active run tagged `kdray.key` = key (the first one, should there be several)."""
    from mlflow.entities import ViewType

    runs = client.search_runs(
        [experiment],
        filter_string=f"tags.`kdray.key` = '{key}'",
        run_view_type=ViewType.ACTIVE_ONLY,
        max_results=5,
        order_by=["attributes.start_time ASC"],
    )
    return runs[0] if runs else None


def log_batch(client, run_id: str, metrics=None, step: int = 0, params=None, tags=None) -> None:
    """Metrics at one step, params and tags in as few requests as MLflow's limits allow."""
    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, step) for k, v in (metrics or {}).items()]
    params = [Param(k, str(v)) for k, v in (params or {}).items()]
    tags = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
    while metrics or params or tags:  # per request: 1000 metrics, 100 params, 100 tags
        client.log_batch(run_id, metrics=metrics[:900], params=params[:100], tags=tags[:100])
        metrics, params, tags = metrics[900:], params[100:], tags[100:]


def new_params(run, params: dict) -> dict:
    """The params the run does not hold yet (an MLflow param cannot change)."""
    return {k: v for k, v in params.items() if k not in run.data.params}


def run_params(job, spec, info) -> dict:
    """What determines a kdray run: model, teachers, studies, method and its settings, seed,
    data (kind and cache fingerprint) and training settings."""
    params = {
        "run_id": spec.run_id,
        "model": spec.model,
        "stage": spec.stage,
        "seed": spec.seed,
        "method": spec.method,
        "teachers": ",".join(spec.teacher_models) or "none",
        "teacher_runs": ",".join(spec.teacher_runs) or "none",
        "teacher_outputs": spec.teacher_outputs or "none",
        "studies": ",".join(studies(spec)) or "none",
        "roles": ",".join(spec.roles) or "none",
        "data": job.data.kind,
    }
    for key, value in (spec.method_params or {}).items():
        if key != "name":
            params[f"method.{key}"] = _text(value)
    if getattr(spec, "labels", None):  # a label budget: {fraction: 0.1} or {per_class: 50}
        params["labels"] = _text(spec.labels)
        params["unlabelled"] = _text(getattr(spec, "unlabelled", False))
    if spec.band is not None:
        params["band"] = "{:.2f}-{:.2f}".format(*spec.band)
        params["eval_every_steps"] = spec.eval_every_steps
    if info is not None:
        params.update(
            data_fingerprint=info.fingerprint,
            image_size=info.image_size,
            channels=info.channels,
            classes=",".join(info.classes),
        )
    for key, value in job.train.model_dump(mode="json").items():
        params[f"train.{key}"] = _text(value)
    params["workers_per_trial"] = job.resources.workers_per_trial
    return params


def _text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


class MlflowRun:
    """One kdray run's MLflow run, nested in the grid's run; started on rank 0."""

    name = "MLflow"

    def __init__(self, client, run, steps: set[int], latest: dict[str, float]):
        self.client = client
        self.run_id = run.info.run_id
        self.steps = steps  # epochs already logged (a resumed run)
        self.latest = latest  # the run's last metric values when it was resumed

    @classmethod
    def start(cls, job, spec, run_dir: Path, info=None, history=()) -> MlflowRun | None:
        cfg = job.tracking.mlflow
        if cfg is None:
            return None
        root = Path(run_dir).parent.parent
        with quiet():
            client, uri = client_for(cfg, root)
            experiment = experiment_id(client, cfg, job, root, uri)
            parent = find_run(client, experiment, grid_key(root))
            tags = {
                **cfg.tags,
                "kdray.key": run_key(root, spec.run_id),
                "kdray.grid": grid_key(root),
                "kdray.level": "run",
                "kdray.run_id": spec.run_id,
                "kdray.experiment": str(root),
                "kdray.job": job.name,
                "kdray.stage": spec.stage,
                "kdray.method": spec.method,
                "kdray.status": "running",
            }
            if searches(spec):  # a searched sample: tagged with the studies it searches
                tags["kdray.search"] = ",".join(searches(spec))
            if parent is not None:
                tags["mlflow.parentRunId"] = parent.info.run_id
            run = find_run(client, experiment, tags["kdray.key"])
            if run is None:
                run = client.create_run(experiment, run_name=spec.run_id, tags=tags)
                steps, latest, changed = set(), {}, {}
            else:  # resumed, restarted or retried: the same MLflow run goes on
                client.update_run(run.info.run_id, status="RUNNING")
                changed = {k: v for k, v in tags.items() if run.data.tags.get(k) != v}
                history_of = client.get_metric_history(run.info.run_id, "train_loss")
                steps, latest = {m.step for m in history_of}, dict(run.data.metrics)
            params = new_params(run, run_params(job, spec, info))
            log_batch(client, run.info.run_id, params=params, tags=changed)
            tracker = cls(client, run, steps, latest)
            for row in history:  # epochs restored from a checkpoint and not logged yet
                tracker.log(row)
        return tracker

    def log(self, metrics: dict) -> None:
        step = int(metrics["epoch"])
        if step in self.steps:
            return
        values = {k: v for k, v in numbers(metrics).items() if k != "epoch"}
        with quiet():
            log_batch(self.client, self.run_id, values, step)
        self.steps.add(step)

    def finish(self, summary: dict) -> None:
        """Every split's final metrics (`final/<name>`), the kdray status and error as tags, and
        the MLflow status: FINISHED, or FAILED (e.g. a defective teacher that missed its band)."""
        final = {
            f"final/{k}": v
            for k, v in numbers(summary).items()
            if self.latest.get(f"final/{k}") != v
        }
        status = summary.get("status", "finished")
        status = status if status in ("finished", "stopped") else "failed"
        tags = {}
        if summary.get("error"):
            tags["kdray.error"] = str(summary["error"])[:ERROR_TAG_CHARS]
        if summary.get("cost_device"):
            tags["kdray.cost_device"] = summary["cost_device"]
        with quiet():
            log_batch(self.client, self.run_id, final, int(summary.get("epochs") or 0))
            close(self.client, self.run_id, status, tags)


class MlflowGrid:
    """The grid's MLflow run (the driver's): found again by the experiment folder's key, so a
    resumed grid goes on in the same run; its nested runs are the kdray runs."""

    def __init__(self, client, experiment: str, run, key: str):
        self.client = client
        self.experiment = experiment
        self.run_id = run.info.run_id
        self.key = key

    @classmethod
    def start(cls, exp, job, data=None) -> MlflowGrid:
        cfg = job.tracking.mlflow
        root = exp.root
        key = grid_key(root)
        plan = exp.plan()
        with quiet():
            client, uri = client_for(cfg, root)
            experiment = experiment_id(client, cfg, job, root, uri)
            tags = {
                **cfg.tags,
                "kdray.key": key,
                "kdray.grid": key,
                "kdray.level": "grid",
                "kdray.experiment": str(root),
                "kdray.job": job.name,
                "kdray.status": "running",
            }
            run = find_run(client, experiment, key)
            if run is None:
                run = client.create_run(experiment, run_name=job.name, tags=tags)
            else:  # a resumed grid
                client.update_run(run.info.run_id, status="RUNNING")
                client.set_tag(run.info.run_id, "kdray.status", "running")
            params = {
                "job": job.name,
                "data": job.data.kind,
                "studies": ",".join(job.studies),
                "methods": ",".join(sorted({s.method_name() for s in job.studies.values()})),
                "seeds": ",".join(map(str, job.seeds)),
                "runs": len(plan.runs),
                "train.epochs": job.train.epochs,
            }
            if data is not None:
                params["data_fingerprint"] = data.fingerprint
            log_batch(client, run.info.run_id, params=new_params(run, params))
        return cls(client, experiment, run, key)

    def finish(self, finished: list[str], failed: dict[str, str], complete: bool) -> None:
        """Close the grid's run: FINISHED, FAILED (some run failed) or KILLED (interrupted);
        nested runs left RUNNING by a trial that died for good are closed too."""
        from mlflow.entities import ViewType

        with quiet():
            left = self.client.search_runs(
                [self.experiment],
                filter_string=f"tags.`kdray.grid` = '{self.key}' and tags.`kdray.level` = 'run' "
                "and attributes.status = 'RUNNING'",
                run_view_type=ViewType.ACTIVE_ONLY,
                max_results=10000,
            )
            for run in left:
                run_id = run.data.tags.get("kdray.run_id")
                if run_id in failed:
                    error = failed[run_id][:ERROR_TAG_CHARS]
                    close(self.client, run.info.run_id, "failed", {"kdray.error": error})
                elif run_id in finished:  # its worker could not close it
                    close(self.client, run.info.run_id, "finished")
                else:  # cut short: `kdray resume` continues it
                    close(self.client, run.info.run_id, "interrupted")
            counts = {"runs_finished": float(len(finished)), "runs_failed": float(len(failed))}
            status = "interrupted" if not complete else "failed" if failed else "finished"
            log_batch(self.client, self.run_id, counts)
            close(self.client, self.run_id, status)


# a sample its search stopped ended as planned: FINISHED, its tag `kdray.status` says stopped
MLFLOW_STATUS = {
    "finished": "FINISHED", "stopped": "FINISHED", "failed": "FAILED", "interrupted": "KILLED",
}  # fmt: skip


def close(client, run_id: str, status: str, tags=None) -> None:
    """End an MLflow run with kdray's status (tag `kdray.status`) and MLflow's."""
    log_batch(client, run_id, tags={"kdray.status": status, **(tags or {})})
    client.set_terminated(run_id, MLFLOW_STATUS[status])
