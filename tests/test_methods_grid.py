"""Distillation methods in a real grid on a local Ray: logit, feature, teacher-free, self and
ensemble studies side by side on teachers trained once; every loss term recorded. (A feature
method under a crash: tests/test_faults.py; under DDP: tests/test_cluster_path.py.)"""

import json

import pyarrow.parquet as pq
import pytest
import torch

from kdray.data import load_split
from kdray.export.write import export
from kdray.spec.load import parse_job
from kdray.store.model_file import load_model
from kdray.train.evaluate import to_tensor
from tests.conftest import run_grid, tiny_job_dict

pytestmark = pytest.mark.ray

TEACHER = "resnet10t"
STUDENT = "test_resnet"
STUDIES = {
    "dkd": {"teachers": [TEACHER], "students": [STUDENT], "method": {"name": "dkd"}},
    "fitnets": {"teachers": [TEACHER], "students": [STUDENT], "method": {"name": "fitnets"}},
    "tf": {"students": [STUDENT], "method": {"name": "tfkd_virtual"}},
    "self_kd": {"teachers": ["self"], "students": [STUDENT]},
    "ens": {"teachers": [[TEACHER, "resnet18"]], "students": [STUDENT]},
}


def methods_job(tmp_path, studies=STUDIES, **resources):
    raw = tiny_job_dict(tmp_path)
    raw["train"]["epochs"] = 2
    raw["studies"] = studies
    raw["resources"].update(resources)
    return parse_job(raw)


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("methods")
    exp, report = run_grid(methods_job(tmp_path))
    return tmp_path, exp, report


def runs_of(exp, study):
    return [r for r in exp.plan().runs.values() if f"kd:{study}" in r.roles]


def test_every_study_finishes_each_teacher_trained_once(grid):
    _, exp, report = grid
    assert report.ok, report.failed
    teachers = [r for r in exp.plan().runs.values() if r.method == "none"]
    # resnet10t and resnet18 for the studies, test_resnet as the self teacher and baseline
    assert sorted(r.model for r in teachers) == sorted([TEACHER, "resnet18", STUDENT])
    for run in teachers:
        assert json.loads((exp.run_dir(run.run_id) / "attempts.json").read_text())["attempts"] == 1


def test_logit_methods_read_cached_soft_labels_feature_methods_run_the_teacher(grid):
    _, exp, _ = grid
    source = {s: exp.summary(runs_of(exp, s)[0].run_id)["teacher_outputs"] for s in STUDIES}
    assert source == {
        "dkd": "cached",
        "fitnets": "online",
        "tf": None,
        "self_kd": "cached",
        "ens": "cached",
    }
    trials = pq.read_table(exp.results_dir / "trials.parquet").to_pandas()
    ens = trials[trials.trial_id == runs_of(exp, "ens")[0].run_id].iloc[0]
    assert ens.teacher == f"{TEACHER}+resnet18" and len(ens.teacher_trial_ids) == 2
    teacher_vals = trials.set_index("trial_id").loc[list(ens.teacher_trial_ids)].val_acc
    assert ens.teacher_val_acc == pytest.approx(teacher_vals.mean())


def test_every_loss_term_is_recorded_per_epoch(grid):
    _, exp, _ = grid
    epochs = pq.read_table(exp.results_dir / "epochs.parquet").to_pandas()
    expected = {
        "dkd": {"loss_ce", "loss_tckd", "loss_nckd"},
        "fitnets": {"loss_ce", "loss_hint"},
        "tf": {"loss_ce", "loss_kd"},
        "ens": {"loss_ce", "loss_kd"},
    }
    for study, terms in expected.items():
        mine = epochs[epochs.trial_id == runs_of(exp, study)[0].run_id]
        assert len(mine) == 2
        assert mine[sorted(terms)].notna().all().all(), study
        others = {c for c in epochs.columns if c.startswith("loss_")} - terms
        assert mine[sorted(others)].isna().all().all(), study


def test_tables_group_by_study_and_drop_no_cell(grid):
    tmp_path, exp, _ = grid
    out = tmp_path / "export"
    export(exp.root, out)
    summary = (out / "summary.md").read_text()
    for study in STUDIES:
        assert f"| {study} |" in summary, study
        table = (out / f"{study}.md").read_text()
        assert "no KD (baseline)" in table and f"| {STUDENT} | test |" in table
    assert f"| tf | tfkd_virtual | {STUDENT} | no teacher |" in summary
    assert f"| ens | kd | {STUDENT} | {TEACHER}+resnet18 |" in summary
    assert "| dkd | dkd |" in summary
    assert "<h2>dkd (dkd): student x teacher accuracy</h2>" in (out / "report.html").read_text()


def test_deployable_student_is_the_network_alone(grid):
    _, exp, _ = grid
    run = runs_of(exp, "fitnets")[0]
    saved = torch.load(exp.run_dir(run.run_id) / "model.pt", weights_only=True)
    assert not [k for k in saved["state_dict"] if k.startswith(("method.", "student."))]
    model, meta = load_model(exp.run_dir(run.run_id) / "model.pt")  # strict: nothing missing
    images, labels = load_split(next(exp.data_dir.iterdir()), "test")
    with torch.no_grad():
        preds = model(to_tensor(images, meta["mean"], meta["std"], "cpu")).argmax(1).numpy()
    assert (preds == labels).mean() == pytest.approx(exp.summary(run.run_id)["test_acc"])
