"""A searched study on a real local Ray grid: samples judged by the search from inside Ray Train
workers, stopped samples recorded as such in the run folders, `kdray status`, trials.parquet and
MLflow, the best confirmed on every seed and reported in the KD tables."""

from __future__ import annotations

import json

import pytest

from kdray.results.cells import study_cells
from kdray.results.tables import read_trials
from kdray.spec.load import parse_job
from kdray.store.status import status_rows
from tests.conftest import run_grid, tiny_job_dict
from tests.test_tracking_mlflow import runs_of

pytestmark = [
    pytest.mark.ray,
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning"),
]


def searched_job(tmp_path):
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
    raw = tiny_job_dict(tmp_path, studies=studies, seeds=[0, 1], baseline=True)
    raw["train"]["epochs"] = 3
    raw["tracking"] = {"mlflow": {}}
    return parse_job(raw)


def test_a_searched_study_stops_samples_and_reports_its_confirmed_best(tmp_path):
    job = searched_job(tmp_path)
    exp, report = run_grid(job)
    assert report.ok, report.failed
    trials = read_trials(exp).to_pandas()
    samples = trials[trials.roles.apply(lambda rs: "sample:tuned" in list(rs))]
    assert sorted(json.loads(s)["lr"] for s in samples.setting) == [1e-7, 1e-6, 0.003, 0.01]
    stopped = samples[samples.status == "stopped"]
    assert len(stopped) >= 1 and set(samples.status) == {"finished", "stopped"}
    assert sorted(report.stopped) == sorted(stopped.trial_id)
    assert (stopped.epochs == stopped.stopped_at_epoch).all()
    assert set(stopped.stopped_at_epoch) <= {1, 2}  # the rungs below the last epoch
    assert stopped.test_score.isna().all() and stopped.checkpoint.isna().all()
    for run_id, epochs in zip(stopped.trial_id, stopped.epochs, strict=True):
        assert len(exp.run(run_id).epochs()) == epochs  # its validation curve, up to the stop
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

    # MLflow: one run per sample, tagged with its search, stopped ones say so
    uri = f"sqlite:///{exp.root / 'mlflow' / 'mlflow.db'}"
    tagged = {r.data.tags.get("kdray.run_id"): r for r in runs_of(uri, job.name)}
    for run_id, status in zip(samples.trial_id, samples.status, strict=True):
        run = tagged[run_id]
        assert run.data.tags["kdray.search"] == "tuned"
        assert run.data.tags["kdray.status"] == status and run.info.status == "FINISHED"
