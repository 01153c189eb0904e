"""Results tables and the export, on an experiment folder whose runs are written by hand."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from kdray.cli import app
from kdray.export.write import export
from kdray.results.tables import EPOCH_SCHEMA, TRIAL_SCHEMA, write_results
from kdray.spec.load import parse_job
from kdray.store.experiment import Experiment, ExperimentError
from tests.conftest import tiny_job_dict

STUDIES = {
    "normal": {"teachers": ["resnet18"], "students": ["resnet10t"]},
    "reverse": {"teachers": ["resnet10t"], "students": ["resnet18"]},
    "defective": {
        "teachers": ["resnet18"],
        "students": ["resnet10t"],
        "teacher_val_band": [0.5, 0.65],
    },
}


def fake_experiment(tmp_path, seeds=(0, 1), fail=None, studies=tuple(STUDIES)):
    """Every run of a small three-study job written as finished (summary, epochs), except `fail`."""
    raw = tiny_job_dict(tmp_path)
    raw["seeds"] = list(seeds)
    raw["studies"] = {name: STUDIES[name] for name in studies}
    job = parse_job(raw)
    exp = Experiment.create(job)
    for i, run in enumerate(exp.plan().runs.values()):
        run_dir = exp.run_dir(run.run_id)
        run_dir.mkdir(parents=True)
        if run.run_id == fail:
            (run_dir / "failure.json").write_text(json.dumps({"error": "worker died"}))
            continue
        acc = 0.55 if run.band else 0.7 + 0.01 * i + 0.02 * run.seed
        summary = {
            "run_id": run.run_id,
            "status": "finished",
            "error": None,
            "epochs": 2,
            "params": 1000 + i,
            "wall_s": 10.0,
            "train_s": 5.0,
            "setup_s": 0.5,
            "teacher_outputs": run.teacher_outputs,  # what the worker's teacher source was
        }
        for split in ("train", "val", "test"):
            summary[f"{split}_acc"] = acc
        (run_dir / "summary.json").write_text(json.dumps(summary))
        # each loss term the run's method returned: ce alone without a teacher, ce and kd with
        terms = {"loss_ce": 1.0} if run.method == "none" else {"loss_ce": 1.0, "loss_kd": 0.5}
        (run_dir / "epochs.jsonl").write_text(
            "".join(
                json.dumps({"epoch": e, "train_acc": acc, "val_acc": acc, **terms}) + "\n"
                for e in (1, 2)
            )
        )
        (run_dir / "attempts.json").write_text(json.dumps({"attempts": 1}))
    return exp


def test_trials_table_has_the_documented_schema_and_one_row_per_run(tmp_path):
    exp = fake_experiment(tmp_path)
    write_results(exp)
    trials = pq.read_table(exp.results_dir / "trials.parquet")
    fixed = pa.schema(list(trials.schema)[: len(TRIAL_SCHEMA)])
    assert fixed.equals(TRIAL_SCHEMA)
    # then one column per method parameter, to filter on
    params = trials.schema.names[len(TRIAL_SCHEMA) :]
    assert params == [
        "param_alpha", "param_class_beta", "param_class_weights", "param_kl_reduction",
        "param_temperature",
    ]  # fmt: skip
    assert trials.schema.field("param_alpha").type == pa.float64()
    kd_alpha = [
        a
        for a, m in zip(
            trials.column("param_alpha").to_pylist(),
            trials.column("method").to_pylist(),
            strict=True,
        )
        if m == "kd"
    ]
    assert kd_alpha and set(kd_alpha) == {0.9}  # fmt: skip
    for column in [
        "trial_id",
        "stage",
        "method",
        "method_params",
        "model",
        "teacher",
        "teacher_trial_ids",
        "teacher_outputs",
        "seed",
        "status",
        "epochs",
        "train_acc",
        "val_acc",
        "test_acc",
        "teacher_val_acc",
        "params",
        "wall_s",
        "checkpoint",
        "error",
    ]:
        assert column in trials.column_names
    assert trials.num_rows == len(exp.plan().runs)
    assert len(set(trials.column("trial_id").to_pylist())) == trials.num_rows
    epochs = pq.read_table(exp.results_dir / "epochs.parquet")
    assert epochs.column_names == [*EPOCH_SCHEMA.names, "loss_ce", "loss_kd"]
    assert epochs.schema.field("loss_kd").type == pa.float64()
    assert epochs.num_rows == 2 * trials.num_rows
    rows = trials.to_pylist()
    by_id = {r["trial_id"]: r for r in rows}
    kd = [r for r in rows if "kd:defective" in r["roles"]]
    assert len(kd) == 2  # one student, two seeds
    assert all(r["teacher_val_acc"] == 0.55 and r["teacher"] == "resnet18" for r in kd)
    for row in kd:  # a study without `method:` is Hinton KD, its settings from `distill`
        assert row["method"] == "kd" and row["teacher_outputs"] == "cached"
        params = json.loads(row["method_params"])
        assert params["name"] == "kd" and params["temperature"] == 4.0 and params["alpha"] == 0.9
        (teacher_id,) = row["teacher_trial_ids"]
        assert by_id[teacher_id]["band_low"] == 0.5 and by_id[teacher_id]["val_acc"] == 0.55
    for row in rows:
        if row["stage"] == "teacher":
            assert row["teacher"] is None and row["teacher_trial_ids"] == []
            assert row["method"] == "none" and row["method_params"] is None
            assert row["teacher_outputs"] is None
    # the loss terms: a teacher's epochs have no KD term
    losses = {(r["trial_id"], r["epoch"]): (r["loss_ce"], r["loss_kd"]) for r in epochs.to_pylist()}
    for row in rows:
        expected = (1.0, None) if row["method"] == "none" else (1.0, 0.5)
        assert losses[row["trial_id"], 1] == expected


def test_export_writes_every_file_in_the_thesis_layout(tmp_path):
    exp = fake_experiment(tmp_path)
    out = tmp_path / "results"
    written = export(exp.root, out)
    for name in [
        "trials.parquet",
        "trials.csv",
        "teachers.md",
        "normal.md",
        "reverse.md",
        "defective.md",
        "baseline.md",
        "summary.md",
    ]:
        assert (out / name).is_file() and name in written
    normal = (out / "normal.md").read_text().splitlines()
    assert normal[2].startswith("| Student | Split | resnet18 | no KD (baseline) |")
    assert [line.split("|")[2].strip() for line in normal[4:7]] == ["train", "valid", "test"]
    assert "±" in normal[4]  # two seeds: mean ± std
    defective = (out / "defective.md").read_text()
    assert "resnet18 [0.50, 0.65]" in defective
    summary = (out / "summary.md").read_text()
    assert "| normal | kd | resnet10t | resnet18 |" in summary and "Gain" in summary
    assert summary.splitlines()[2].startswith("| Study | Method | Student | Teacher |")
    assert normal[0] == "# normal (kd): student x teacher accuracy"


def test_failed_runs_are_rows_with_their_error(tmp_path):
    exp0 = fake_experiment(tmp_path / "a", seeds=(0,))
    victim = next(r.run_id for r in exp0.plan().stage("student") if "kd:normal" in r.roles)
    exp = fake_experiment(tmp_path / "b", seeds=(0,), fail=victim)
    rows = {r["trial_id"]: r for r in write_results(exp).to_pylist()}
    assert rows[victim]["status"] == "failed" and rows[victim]["error"] == "worker died"
    assert rows[victim]["checkpoint"] is None
    summary = (export(exp.root, tmp_path / "out") and (tmp_path / "out" / "summary.md")).read_text()
    assert "Unfinished trials" in summary and victim in summary


def test_a_different_job_under_the_same_name_is_refused(tmp_path):
    fake_experiment(tmp_path, seeds=(0,))
    raw = tiny_job_dict(tmp_path)
    raw["train"]["epochs"] = 7
    with pytest.raises(ExperimentError, match="different job"):
        Experiment.create(parse_job(raw))


def test_tracking_and_retries_may_change_in_a_started_grid(tmp_path):
    fake_experiment(tmp_path, seeds=(0,))
    raw = tiny_job_dict(tmp_path, seeds=[0], studies=dict(STUDIES))  # the same runs
    raw["tracking"] = {"mlflow": {}}
    raw["faults"] = {"trial_retries": 5}
    exp = Experiment.create(parse_job(raw))  # no refusal: the same runs train
    assert exp.job().tracking.mlflow is not None and exp.job().faults.trial_retries == 5


def test_cli_export_and_a_folder_that_is_not_an_experiment(tmp_path):
    exp = fake_experiment(tmp_path, seeds=(0,))
    runner = CliRunner()
    ok = runner.invoke(app, ["export", str(exp.root), "--out", str(tmp_path / "x")])
    assert ok.exit_code == 0 and "teachers.md" in ok.output
    bad = runner.invoke(app, ["export", str(tmp_path), "--out", str(tmp_path / "y")])
    assert bad.exit_code == 2 and "not a kdray experiment folder" in bad.output


def test_cli_status_lists_every_run_by_its_folder_name_and_state(tmp_path):
    exp0 = fake_experiment(tmp_path / "probe")
    victim = next(r.run_id for r in exp0.plan().stage("student") if "kd:reverse" in r.roles)
    exp = fake_experiment(tmp_path, fail=victim)
    result = CliRunner().invoke(app, ["status", str(exp.root)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for run_id in exp.plan().runs:
        (line,) = [ln for ln in lines if run_id in ln]  # whole, even though not a terminal
        assert ("failed" if run_id == victim else "finished") in line


def test_a_second_driver_of_a_running_experiment_is_refused(tmp_path):
    import socket
    import subprocess
    import time

    exp = fake_experiment(tmp_path)
    other = subprocess.Popen(["sleep", "60"])  # stands for a `kdray run` still going
    try:
        marker = {"pid": other.pid, "host": socket.gethostname(), "started": time.time()}
        (exp.root / "driver.json").write_text(json.dumps(marker))
        result = CliRunner().invoke(app, ["resume", str(exp.root)])
        assert result.exit_code == 2
        assert f"already being run by process {other.pid}" in result.output
    finally:
        other.kill()
        other.wait()


def test_epochs_read_whole_or_to_two_decimals():
    """A defective teacher stops mid-epoch (34 steps of 15 an epoch): its Epochs cell reads
    2.27, not 2.26667."""
    import pandas as pd

    from kdray.export.markdown import fmt_count

    assert fmt_count(pd.Series([4.0])) == "4"
    assert fmt_count(pd.Series([34 / 15])) == "2.27"
    assert fmt_count(pd.Series([1.5, 1.5])) == "1.5"
    assert fmt_count(pd.Series([None], dtype=float)) == "—"
