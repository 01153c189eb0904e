"""What distillation bought: model cost, the compression table, the Pareto frontier, and the
deployable ONNX students (no Ray: fixed tables, and real tiny models saved by hand)."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from kdray.cli import app
from kdray.data import load_split, prepare_data
from kdray.export import onnx as deploy
from kdray.export.write import export
from kdray.results.cells import study_cells
from kdray.results.cost_ratios import (
    compression_table,
    frontier_points,
    no_pareto_reason,
    pareto_optimal,
    pareto_runs,
)
from kdray.results.tables import COST_COLUMNS, write_results
from kdray.spec.load import parse_job
from kdray.store.experiment import Experiment
from kdray.store.model_file import load_model, save_model
from kdray.store.run_folder import RunFolder
from kdray.tasks import get_task
from kdray.tasks.models import count_params, create_model
from kdray.train import run_loop
from kdray.train.cost import count_macs, measure
from kdray.train.evaluate import predict
from kdray.train.session import build_session
from tests.conftest import tiny_job_dict
from tests.test_cells import run
from tests.test_export import fake_experiment
from tests.test_report import assert_self_contained


def test_macs_of_a_small_network_equal_a_hand_count(tmp_path):
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(256, 3))
    # each of 4 x 8 x 8 outputs: a 3 x 3 x 1 kernel; then 256 inputs to each of 3 logits
    assert count_macs(net, channels=1, size=8) == 1 * 4 * 9 * 64 + 256 * 3
    first = measure(net, "hand", 1, 8, 3, batch_size=16, cost_dir=tmp_path)
    assert first["latency_ms_p90"] >= first["latency_ms_p50"] > 0 and first["throughput"] > 0
    assert first["device"] == "cpu" and net.training  # the model is left as it was
    (record,) = tmp_path.iterdir()
    assert record.name == "hand-1x8x8-3cls-cpu.json"
    assert measure(net, "hand", 1, 8, 3, 16, tmp_path) == first  # measured once, then read


def test_pareto_optimal_on_a_fixed_table():
    accuracy = [0.90, 0.80, 0.85, 0.70, 0.90, np.nan, 0.95]
    cost = [10.0, 5.0, 20.0, 5.0, 10.0, 1.0, np.nan]
    # 2 is beaten by 0 (more accurate, cheaper), 3 by 1 (same cost, more accurate); 0 and 4 tie,
    # neither beats the other; a point missing a value is never optimal
    expected = [True, True, False, False, True, False, False]
    assert list(pareto_optimal(accuracy, cost)) == expected


def fixed_trials() -> pd.DataFrame:
    """One student (small) against a teacher (t1), an ensemble (t1+t2) and no teacher."""
    rows = [
        run("t1", "big", 0, 0.90, 0.90, ["teacher:normal", "teacher:ens"]),
        run("t2", "huge", 0, 0.92, 0.92, ["teacher:ens"]),
        run("b0", "small", 0, 0.80, 0.80, ["baseline"]),
        run("b1", "small", 1, 0.80, 0.80, ["baseline"]),
        run("k0", "small", 0, 0.85, 0.85, ["kd:normal"], ["t1"]),
        run("k1", "small", 1, 0.88, 0.86, ["kd:normal"], ["t1"]),  # the better seed on valid
        run("e0", "small", 0, 0.82, 0.82, ["kd:ens"], ["t1", "t2"]),
        run("f0", "small", 0, 0.81, 0.81, ["kd:free"], [], method="tfkd_virtual"),
    ]
    trials = pd.DataFrame(rows)
    trials.loc[trials.trial_id == "f0", "method"] = "tfkd_virtual"
    costs = {"big": (11e6, 1.8e9, 8.0), "huge": (21e6, 3.6e9, 12.0), "small": (5e6, 0.9e9, 2.0)}
    for column, i in (("params", 0), ("macs", 1), ("latency_ms_p50", 2)):
        trials[column] = [costs[m][i] for m in trials.model]
    return trials


def fixed_cells(trials):
    return [c for study in ("normal", "ens", "free") for c in study_cells(trials, study)]


def test_compression_ratios_on_fixed_numbers():
    trials = fixed_trials()
    table = compression_table(fixed_cells(trials), trials).set_index("Study")
    normal = table.loc["normal"]
    assert (normal["Params ratio"], normal["MACs ratio"], normal["Latency ratio"]) == (
        "2.20×",
        "2.00×",
        "4.00×",
    )
    assert normal["Accuracy kept"] == f"{0.855 / 0.90:.3f}"  # mean of the two seeds / teacher
    assert normal["Gain over baseline"] == "+0.055"
    ens = table.loc["ens"]  # an ensemble costs the sum of its teachers, scores their mean
    assert (ens["Params ratio"], ens["MACs ratio"], ens["Latency ratio"]) == (
        "6.40×",
        "6.00×",
        "10.00×",
    )
    assert ens["Teacher"] == "big+huge" and ens["Accuracy kept"] == f"{0.82 / 0.91:.3f}"
    free = table.loc["free"]  # no teacher: nothing to compare with, the gain still stands
    assert list(free[["Params ratio", "MACs ratio", "Latency ratio", "Accuracy kept"]]) == ["—"] * 4
    assert free["Teacher"] == "no teacher" and free["Gain over baseline"] == "+0.010"


def test_the_frontier_and_the_students_it_ships():
    trials = fixed_trials()
    points = frontier_points(fixed_cells(trials), trials).set_index("label")
    # the three KD cells, the student's baseline, and both teachers, once each
    assert sorted(points.index) == sorted(
        ["small ← big", "small ← big+huge", "small ← no teacher", "small", "big", "huge"]
    )
    assert (
        points.loc["small", "kind"] == "no-KD baseline" and points.loc["huge", "kind"] == "teacher"
    )
    optimal = set(points.index[points.pareto_macs])
    assert optimal == {"small ← big", "big", "huge"}  # at 0.9 GMACs KD with big is best
    assert points.loc["small ← big", "test_score"] == pytest.approx(0.855)
    # shipped: KD students and baselines on the MACs frontier, their best seed on validation
    assert pareto_runs(fixed_cells(trials), trials) == ["k1"]


def test_no_student_on_the_frontier_names_the_teachers_ahead():
    """Every run has a cost, but the teachers cost no more than the student and score higher:
    the reason is the frontier, not a missing cost."""
    trials = fixed_trials()
    trials["macs"] = 0.9e9
    points = frontier_points(fixed_cells(trials), trials)
    assert pareto_runs(fixed_cells(trials), trials) == []
    assert no_pareto_reason(points) == (
        "no KD student or baseline is on the accuracy/MACs frontier: teacher huge is as "
        "accurate and as cheap or better; export a student by id with --onnx RUN_ID"
    )
    trials["macs"] = None
    reason = no_pareto_reason(frontier_points(fixed_cells(trials), trials))
    assert reason == "no KD student or baseline has a measured cost (macs)"


def with_costs(exp: Experiment) -> Experiment:
    """Give every finished run of a fake experiment a cost by model."""
    per_model = {"resnet10t": (4.9e6, 0.9e9, 2.0), "resnet18": (11.2e6, 1.8e9, 5.0)}
    for spec in exp.plan().runs.values():
        path = exp.run_dir(spec.run_id) / "summary.json"
        summary = json.loads(path.read_text())
        params, macs, latency = per_model[spec.model]
        summary |= {
            "params": int(params), "macs": int(macs), "weights_mb": params * 4e-6,
            "latency_ms_p50": latency, "latency_ms_p90": latency * 1.2, "throughput": 900.0,
            "cost_device": "cpu",
        }  # fmt: skip
        path.write_text(json.dumps(summary))
    return exp


def test_costs_reach_the_table_the_summary_and_the_report(tmp_path):
    exp = with_costs(fake_experiment(tmp_path, seeds=(0,)))
    rows = write_results(exp).to_pylist()
    assert all(r["macs"] > 0 and r["cost_device"] == "cpu" for r in rows)
    assert set(COST_COLUMNS) <= set(rows[0])
    out = tmp_path / "out"
    export(exp.root, out)
    summary = (out / "summary.md").read_text()
    section = summary.split("## What distillation bought")[1]
    assert "| normal | kd | resnet10t | resnet18 | — | 2.29× | 2.00× | 2.50× |" in section
    assert "| reverse | kd | resnet18 | resnet10t | — | 0.44× | 0.50× | 0.40× |" in section
    page = (out / "report.html").read_text()
    assert 'id="frontier-' in page and "MACs per image" in page and "Pareto-optimal" in page
    assert page.count("<svg") == 6  # test_report's five figures and the frontier
    assert_self_contained(page)


def tiny_experiment(tmp_path, studies=None):
    """The tiny job's experiment folder and its decoded data, no run trained."""
    raw = tiny_job_dict(tmp_path)
    raw["studies"] = studies or raw["studies"]
    job = parse_job(raw)
    exp = Experiment.create(job)
    return job, exp, prepare_data(job.data, exp.data_dir)


def save_run(exp, spec, info, model=None) -> nn.Module:
    """A finished run's `model.pt` as `kdray.train.run_loop.finish` writes it (untrained)."""
    model = model or create_model(spec.model, info.num_classes, info.channels)
    exp.run_dir(spec.run_id).mkdir(parents=True, exist_ok=True)
    save_model(
        exp.run_dir(spec.run_id) / "model.pt", model, model=spec.model,
        num_classes=info.num_classes, in_chans=info.channels, classes=info.classes,
        mean=info.mean, std=info.std, image_size=info.image_size,
    )  # fmt: skip
    return model


def test_onnx_export_reproduces_pytorch_on_validation_images_and_carries_metadata(tmp_path):
    import onnx
    import onnxruntime

    job, exp, info = tiny_experiment(tmp_path)
    spec = next(s for s in exp.plan().runs.values() if s.model == "test_resnet")
    save_run(exp, spec, info)
    result = deploy.export_onnx(exp.root, spec.run_id, tmp_path / "out")
    assert result.path == tmp_path / "out" / "onnx" / f"{spec.run_id}.onnx"
    assert result.max_abs_diff <= deploy.TOLERANCE and result.latency_ms > 0
    images, _ = load_split(info.path, "valid")
    assert result.images == len(images) == 40
    meta = {p.key: p.value for p in onnx.load(result.path).metadata_props}
    assert json.loads(meta["classes"]) == ["FOREARM", "HAND", "HUMERUS"]
    assert (meta["image_size"], meta["channels"]) == ("16", "1")
    assert json.loads(meta["mean"]) == info.mean and json.loads(meta["std"]) == info.std
    assert meta["kdray_run_id"] == spec.run_id and meta["model"] == "test_resnet"
    # independently of the export's own check: the whole split in one dynamic batch
    model, _ = load_model(exp.run_dir(spec.run_id) / "model.pt")
    expected = predict(model, images, info.mean, info.std, "cpu", 64, get_task(info.task))
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    x = ((images.transpose(0, 3, 1, 2) / 255 - info.mean[0]) / info.std[0]).astype(np.float32)
    logits = session.run(None, {"image": x})[0]
    probs = torch.softmax(torch.from_numpy(logits), 1).numpy()
    assert np.abs(probs - expected).max() <= 1e-4


def test_an_unknown_onnx_id_names_the_finished_runs_and_counts_the_rest(tmp_path):
    exp = fake_experiment(tmp_path, seeds=(0, 1, 2))
    runs = list(exp.plan().runs)
    assert len(runs) > deploy.SHOWN
    for run_id in runs:
        exp.run(run_id).model_file.touch()  # finished: it has its weights
    with pytest.raises(deploy.DeployError) as error:
        deploy.check_exportable(exp, ["nope"])
    text = str(error.value)
    assert ", ".join(runs[: deploy.SHOWN]) in text
    assert f"and {len(runs) - deploy.SHOWN} more (kdray status {exp.root} lists them)" in text


def test_an_onnx_file_that_disagrees_is_removed_and_the_cli_exits_2(tmp_path, monkeypatch):
    job, exp, info = tiny_experiment(tmp_path)
    spec = next(s for s in exp.plan().runs.values() if s.model == "test_resnet")
    save_run(exp, spec, info)
    out = tmp_path / "out"
    runner = CliRunner()
    unknown = runner.invoke(app, ["export", str(exp.root), "--out", str(out), "--onnx", "nope"])
    assert unknown.exit_code == 2 and "--onnx nope: not a finished run" in unknown.output
    monkeypatch.setattr(deploy, "TOLERANCE", -1.0)  # nothing can pass
    failed = runner.invoke(app, ["export", str(exp.root), "--out", str(out), "--onnx", spec.run_id])
    assert failed.exit_code == 2 and "differ from PyTorch's" in failed.output
    assert not (out / "onnx" / f"{spec.run_id}.onnx").exists()


def onnx_size(graph) -> int:
    return sum(int(np.prod(t.dims)) for t in graph.initializer)


def test_a_feature_kd_student_exports_without_its_adapters(tmp_path):
    """A fitnets run: the worker's `finish` writes model.pt (and measures its cost) from a session
    whose method holds adapters; the ONNX file holds the student's tensors and nothing else."""
    import onnx

    studies = {
        "fit": {
            "teachers": ["resnet10t"],
            "students": ["test_resnet"],
            "method": {"name": "fitnets"},
        }
    }
    job, exp, info = tiny_experiment(tmp_path, studies)
    runs = exp.plan().runs.values()
    teacher = next(s for s in runs if s.stage == "teacher")
    spec = next(s for s in runs if s.method == "fitnets")
    save_run(exp, teacher, info)
    session = build_session(job, spec, info, [exp.run_dir(teacher.run_id)], torch.device("cpu"))
    adapters = count_params(session.core.method)
    assert adapters > 0
    run_dir = exp.run_dir(spec.run_id)
    run_dir.mkdir(parents=True)
    summary = {"run_id": spec.run_id, "status": "finished", "error": None}
    run_loop.finish(session, RunFolder(run_dir), [], summary)
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved["macs"] > 0 and saved["latency_ms_p50"] > 0 and saved["cost_device"] == "cpu"
    assert saved["weights_mb"] == pytest.approx((run_dir / "model.pt").stat().st_size / 1e6)
    student = session.core.student.eval()
    state = torch.load(run_dir / "model.pt", weights_only=True)["state_dict"]
    assert state.keys() == student.state_dict().keys()

    result = deploy.export_onnx(exp.root, spec.run_id, tmp_path / "out")
    graph = onnx.load(result.path).graph
    names = {t.name for t in graph.initializer if not t.name.startswith("val_")}
    assert names <= set(student.state_dict())  # no adapter tensor, no teacher tensor
    reference = tmp_path / "student.onnx"
    deploy.to_onnx(student, info.channels, info.image_size, reference, {})
    # as many parameters as the student's own graph (BatchNorm folded into its convolutions)
    assert onnx_size(graph) == onnx_size(onnx.load(reference).graph)


def test_a_cost_that_cannot_be_measured_never_fails_the_run(tmp_path, monkeypatch):
    job, exp, info = tiny_experiment(tmp_path)
    runs = exp.plan().runs.values()
    spec = next(s for s in runs if s.model == "test_resnet" and s.method == "none")  # baseline
    session = build_session(job, spec, info, [], torch.device("cpu"))

    def broken(*args, **kwargs):
        raise RuntimeError("no counter for this op")

    monkeypatch.setattr(run_loop.cost, "measure", broken)
    run_dir = exp.run_dir(spec.run_id)
    run_dir.mkdir(parents=True)
    run_loop.finish(
        session,
        RunFolder(run_dir),
        [],
        {"run_id": spec.run_id, "status": "finished", "error": None},
    )
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved["status"] == "finished" and saved["weights_mb"] > 0 and "macs" not in saved
    (row,) = [r for r in write_results(exp).to_pylist() if r["trial_id"] == spec.run_id]
    assert row["macs"] is None and row["latency_ms_p50"] is None and row["weights_mb"] > 0
