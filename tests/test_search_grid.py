"""A searched study on a real local Ray grid: samples judged by the search from inside Ray Train
workers, stopped samples recorded as such in the run folders, `kdray status`, trials.parquet and
MLflow, the best confirmed on every seed and reported in the KD tables."""

from __future__ import annotations

import json
import os
import signal

import pytest
import ray
import yaml

from kdray.data import prepare_data
from kdray.grid.run import run_experiment
from kdray.results.cells import study_cells
from kdray.results.tables import read_trials
from kdray.spec.load import parse_job
from kdray.store.experiment import Experiment
from kdray.store.status import status_rows
from tests.conftest import run_grid, tiny_job_dict
from tests.test_faults import stop_driver_once
from tests.test_tracking_mlflow import epochs, runs_of, steps

pytestmark = [
    pytest.mark.ray,
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning"),
]


def searched_raw(tmp_path) -> dict:
    """Four learning rates on a grid (Optuna's GridSampler, seed 0 draws 1e-6 first); successive
    halving from epoch 1 keeps about one in two. On this CPU the 1e-7 and 0.003 samples are
    stopped (at epochs 1 and 2): the assertions below hold for any such outcome."""
    studies = {
        "tuned": {
            "teachers": ["resnet10t"],
            "students": ["test_resnet"],
            "method": {"name": "kd"},
            "search": {
                "space": {"lr": {"choice": [1.0e-7, 0.01, 1.0e-6, 0.003]}},
                "samples": 4,
                "algorithm": "grid",
                "seed": 0,
                "early_stop": {"rule": "asha", "grace_epochs": 1, "reduction_factor": 2},
            },
        }
    }
    baseline = {  # searched too: two learning rates, each trained to the end
        "search": {
            "space": {"lr": {"choice": [0.003, 0.01]}},
            "samples": 2,
            "algorithm": "grid",
            "early_stop": "none",
        }
    }
    raw = tiny_job_dict(tmp_path, studies=studies, seeds=[0, 1], baseline=baseline)
    raw["train"]["epochs"] = 3
    raw["tracking"] = {"mlflow": {}}
    return raw


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The searched grid run once, to the end, without a stop: (job, experiment, report)."""
    job = parse_job(searched_raw(tmp_path_factory.mktemp("uninterrupted")))
    exp, report = run_grid(job)
    return job, exp, report


def samples_of(trials):
    return trials[trials.roles.apply(lambda rs: "sample:tuned" in list(rs))]


def test_a_searched_study_stops_samples_and_reports_its_confirmed_best(uninterrupted):
    job, exp, report = uninterrupted
    assert report.ok, report.failed
    trials = read_trials(exp).to_pandas()
    samples = samples_of(trials)
    assert sorted(json.loads(s)["lr"] for s in samples.setting) == [1e-7, 1e-6, 0.003, 0.01]
    stopped = samples[samples.status == "stopped"]
    assert len(stopped) >= 1 and set(samples.status) == {"finished", "stopped"}
    assert sorted(report.stopped) == sorted(stopped.trial_id)
    assert (stopped.epochs == stopped.stopped_at_epoch).all()
    assert set(stopped.stopped_at_epoch) <= {1, 2}  # the rungs below the last epoch
    assert stopped.test_score.isna().all() and stopped.checkpoint.isna().all()
    for run_id, trained in zip(stopped.trial_id, stopped.epochs, strict=True):
        assert len(exp.run(run_id).epochs()) == trained  # its validation curve, up to the stop
    states = {row["trial_id"]: row["state"] for row in status_rows(exp)}
    assert {states[r] for r in stopped.trial_id} == {"stopped"}

    # the best finished sample on validation, confirmed on both seeds: the KD cell's runs
    finished = samples[samples.status == "finished"]
    best = finished.sort_values("val_score", ascending=False, kind="stable").iloc[0]
    (cell,) = study_cells(trials, "tuned")
    assert sorted(cell.runs.seed) == [0, 1]
    assert set(cell.runs.setting) == {best.setting}
    assert best.trial_id in set(cell.runs.trial_id)  # seed 0's confirmation is the sample
    assert cell.gain.n == 2

    # the searched baseline: its best sample on validation confirmed on both seeds, the
    # baseline the KD gain is measured against
    base_samples = trials[trials.roles.apply(lambda rs: "sample:baseline" in list(rs))]
    assert len(base_samples) == 2 and set(base_samples.status) == {"finished"}
    best_base = base_samples.sort_values("val_score", ascending=False, kind="stable").iloc[0]
    assert sorted(cell.baseline.seed) == [0, 1]
    assert set(cell.baseline.setting) == {best_base.setting}

    # MLflow: one run per sample, tagged with its search, stopped ones say so
    tagged = mlflow_runs(exp, job)
    for run_id, status in zip(samples.trial_id, samples.status, strict=True):
        run = tagged[run_id]
        assert run.data.tags["kdray.search"] == "tuned"
        assert run.data.tags["kdray.status"] == status and run.info.status == "FINISHED"
    assert {tagged[r].data.tags["kdray.search"] for r in base_samples.trial_id} == {"baseline"}
    confirmed = tagged[cell.runs.trial_id.iloc[0]]
    params = confirmed.data.params
    assert params["teachers"] == "resnet10t" and params["teacher_outputs"] == "cached"
    assert params["studies"] == "tuned" and params["method"] == "kd"
    assert params["method.temperature"] == "4.0" and params["method.alpha"] == "0.9"
    assert [s for s, _ in steps(uri(exp), confirmed.info.run_id, "loss_kd")] == [1, 2, 3]


def uri(exp: Experiment) -> str:
    """The default MLflow store: SQLite in the experiment folder."""
    return f"sqlite:///{exp.root / 'mlflow' / 'mlflow.db'}"


def mlflow_runs(exp: Experiment, job) -> dict:
    """The grid's MLflow runs as an ended grid has them: one grid run, and under it exactly one
    run per kdray run (samples and confirmations included), every epoch logged once, the final
    metrics of each finished run; {kdray run id or "grid": MLflow run}."""
    fingerprint = prepare_data(job.data, exp.data_dir).fingerprint
    found = runs_of(uri(exp), job.name)
    (grid,) = [r for r in found if r.data.tags.get("kdray.level") == "grid"]
    nested = [r for r in found if r is not grid]
    runs = exp.plan().runs
    assert sorted(r.data.tags["kdray.run_id"] for r in nested) == sorted(runs)  # none twice
    summaries = {run_id: exp.summary(run_id) for run_id in runs}
    finished = [r for r, s in summaries.items() if s["status"] == "finished"]
    assert grid.info.status == "FINISHED" and grid.data.tags["kdray.status"] == "finished"
    assert grid.data.params["data_fingerprint"] == fingerprint
    assert grid.data.metrics["runs_finished"] == len(finished)
    for run in nested:
        run_id = run.data.tags["kdray.run_id"]
        spec, summary = runs[run_id], summaries[run_id]
        assert run.data.tags["mlflow.parentRunId"] == grid.info.run_id
        assert run.info.status == "FINISHED", run_id
        assert run.data.tags["kdray.stage"] == spec.stage
        assert run.data.tags["kdray.status"] == summary["status"]
        params = run.data.params
        assert params["model"] == spec.model and params["seed"] == str(spec.seed)
        assert params["data_fingerprint"] == fingerprint
        rows = epochs(exp.run_dir(run_id))  # every epoch once, as epochs.jsonl has it
        for key in ("train_loss", "val_acc", "train_acc"):
            assert steps(uri(exp), run.info.run_id, key) == [(r["epoch"], r[key]) for r in rows]
        if run_id in finished:
            for split in ("train", "val", "test"):
                for metric in ("acc", "loss", "f1"):
                    key = f"{split}_{metric}"
                    assert run.data.metrics[f"final/{key}"] == pytest.approx(summary[key])
    return {**{r.data.tags["kdray.run_id"]: r for r in nested}, "grid": grid}


def ended_samples(exp: Experiment) -> dict[str, tuple[str, bytes]]:
    """Each sample that has ended: its status and its summary's bytes."""
    out = {}
    for summary in exp.root.glob("runs/*-lr*-s0-*/summary.json"):
        out[summary.parent.name] = (json.loads(summary.read_text())["status"], summary.read_bytes())
    return out


def test_a_search_stopped_by_ctrl_c_resumes_redoing_no_ended_sample_and_chooses_the_same(
    tmp_path, uninterrupted
):
    """`kdray run` stopped by Ctrl-C (SIGINT to its process group) once a sample has ended,
    then resumed: no sample that had ended is trained again, and the samples' outcomes and the
    chosen setting are those of the uninterrupted grid; in MLflow, the same grid run and one
    run per kdray run, none added by the resume. (Seed 0 only, no baseline: what the samples
    and the choice depend on, at a third of the grid's cost.)"""
    raw = {**searched_raw(tmp_path), "seeds": [0], "baseline": False}
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(raw))
    job = parse_job(raw)
    exp = Experiment.for_job(job)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    code = stop_driver_once(["run", str(job_file)], signal.SIGINT, env, lambda: ended_samples(exp))
    assert code == 130
    before = ended_samples(exp)
    assert before and exp.plan().searches  # stopped mid-search, with a sample ended
    found = runs_of(uri(exp), job.name)
    (grid_run,) = [r for r in found if r.data.tags.get("kdray.level") == "grid"]
    assert grid_run.info.status == "KILLED"
    try:
        report = run_experiment(exp, job)  # what `kdray resume` runs
    finally:
        ray.shutdown()
    assert report.ok, report.failed
    after = ended_samples(exp)
    assert {run: after[run] for run in before} == before  # ended samples left as they were
    for run in before:
        assert exp.run(run).attempts() == 1
    assert mlflow_runs(exp, job)["grid"].info.run_id == grid_run.info.run_id

    def outcome(e: Experiment):
        trials = read_trials(e).to_pandas()
        samples = samples_of(trials)
        (cell,) = study_cells(trials, "tuned")
        ended = sorted(zip(samples.setting, samples.status, samples.epochs, strict=True))
        return ended, set(cell.runs.setting)

    assert outcome(exp) == outcome(uninterrupted[1])


def test_a_finished_search_resumed_trains_nothing_and_ends_ok(uninterrupted):
    """`kdray resume` of a search that already chose and confirmed: Tune runs no trial, and
    reading back its empty experiment unpickled the grid's ledger handle, which recursed in
    its `__getattr__` (a traceback). Since every search settled and every run ended, no Tune
    experiment starts at all (it left an empty `tune/<time>/`). Last in this file: it runs the
    finished grid again."""
    job, exp, _ = uninterrupted
    summaries = {p: p.read_bytes() for p in exp.root.glob("runs/*/summary.json")}
    tune_runs = sorted((exp.root / "tune").iterdir())
    try:
        report = run_experiment(exp, job)  # what `kdray resume` runs
    finally:
        ray.shutdown()
    assert report.ok, report.failed
    assert {p: p.read_bytes() for p in exp.root.glob("runs/*/summary.json")} == summaries
    assert sorted((exp.root / "tune").iterdir()) == tune_runs
