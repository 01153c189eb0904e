"""The cluster path on this CPU machine: data-parallel trials (gloo), mixed precision, W&B
offline, and the cluster launcher config."""

import json

import numpy as np
import pytest
import torch
import yaml

from kdray.data import load_split, prepare_data
from kdray.spec.load import parse_job
from kdray.spec.plan import make_plan
from kdray.store.model_file import load_model
from kdray.tasks.classification_metrics import classification_metrics
from kdray.train.evaluate import to_tensor
from tests.conftest import REPO, run_grid, tiny_job_dict
from tests.test_worker import run_local


def full_split_metrics(model_file, data_path, split):
    model, meta = load_model(model_file)
    images, labels = load_split(data_path, split)
    with torch.no_grad():
        probs = torch.softmax(model(to_tensor(images, meta["mean"], meta["std"], "cpu")), 1)
    return classification_metrics(probs.numpy(), labels)


@pytest.mark.ray
def test_two_worker_ddp_trial_reports_metrics_over_the_whole_split(tmp_path):
    raw = tiny_job_dict(tmp_path)
    raw["data"]["valid_size"] = 41  # odd: shards of unequal size must still cover every image
    pair = {"teachers": ["resnet10t"], "students": ["test_resnet"]}
    raw["studies"] = {"normal": pair, "l1": {**pair, "method": {"name": "feature_l1"}}}
    raw["baseline"] = False
    raw["resources"] = {"workers_per_trial": 2, "cpus_per_worker": 1, "max_concurrent_trials": 1}
    exp, report = run_grid(parse_job(raw))
    assert report.ok, report.failed
    data = next(exp.data_dir.iterdir())
    for run_id in exp.plan().runs:
        summary = exp.summary(run_id)
        for split, prefix in (("valid", "val"), ("test", "test"), ("train", "train")):
            full = full_split_metrics(exp.run_dir(run_id) / "model.pt", data, split)
            assert summary[f"{prefix}_acc"] == pytest.approx(full["acc"])
            assert summary[f"{prefix}_loss"] == pytest.approx(full["loss"], rel=1e-4)
        report_counts = np.array(summary["val_report"]["confusion"]).sum()
        assert report_counts == 41
        # both ranks end with the same weights, a feature method's adapter included
        assert summary["replicas_in_sync"] is True
    # the data-parallel KD student read its ranks' soft labels instead of running the teacher;
    # the feature-KD student ran it online, its adapter trained under DDP
    students = {r.method: r.run_id for r in exp.plan().runs.values() if r.teacher_runs}
    assert {m: exp.summary(r)["teacher_outputs"] for m, r in students.items()} == {
        "kd": "cached",
        "feature_l1": "online",
    }
    l1 = (exp.run_dir(students["feature_l1"]) / "epochs.jsonl").read_text().splitlines()
    assert all(json.loads(e)["loss_l1"] > 0 for e in l1)


def local_run(tmp_path, image_size=16, **train):
    raw = tiny_job_dict(tmp_path)
    raw["train"].update(train)
    raw["data"]["image_size"] = image_size
    job = parse_job(raw)
    spec = make_plan(job).stage("teacher")[0]
    return run_local(tmp_path, job, spec, prepare_data(job.data, tmp_path / "data"))


def test_bf16_autocast_trial_runs_on_cpu(tmp_path):
    """At 32 px: at 16 px resnet10t's last stage opens with a stride-2 convolution over a 1x1
    map, whose bf16 weight gradients oneDNN gets wrong on some CPUs (`bf16_tiny_map_warning`)."""
    _, summary = local_run(tmp_path, image_size=32, precision="bf16", channels_last=True)
    assert summary["status"] == "finished"
    assert 0 <= summary["test_acc"] <= 1 and np.isfinite(summary["val_loss"])


def test_wandb_offline_writes_one_run_per_trial_under_its_folder(tmp_path):
    raw = tiny_job_dict(tmp_path)
    raw["tracking"] = {"wandb": {"project": "kdray-test", "mode": "offline", "tags": ["ci"]}}
    job = parse_job(raw)
    spec = make_plan(job).stage("teacher")[0]
    run_dir, summary = run_local(tmp_path, job, spec, prepare_data(job.data, tmp_path / "data"))
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and offline[0].name.endswith(spec.run_id)
    assert list(offline[0].glob("*.wandb")), "no W&B run file"
    assert not list(offline[0].rglob("*.png")), "images must never be logged"


def test_w_and_b_online_without_a_key_is_warned_of_and_a_dropped_run_is_said(tmp_path, monkeypatch):
    """Without a key, each worker drops W&B with a warning in its Ray log only: `validate` and
    `run` warn first, and the driver says at the end which runs trained untracked."""
    from kdray.grid.run import tracking_lost
    from kdray.spec.describe import tracking_warnings
    from kdray.store.experiment import Experiment

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    raw = tiny_job_dict(tmp_path)
    raw["tracking"] = {"wandb": {"mode": "online"}}
    job = parse_job(raw)
    (line,) = tracking_warnings(job)
    assert line.startswith("tracking.wandb.mode online, and no W&B API key here")
    (tmp_path / ".netrc").write_text("machine api.wandb.ai login user password k" + "0" * 40)
    (tmp_path / ".netrc").chmod(0o600)
    assert tracking_warnings(job) == []
    (tmp_path / ".netrc").unlink()
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert tracking_warnings(job) == []
    monkeypatch.delenv("WANDB_API_KEY")

    exp = Experiment.create(job)
    spec = make_plan(job).stage("teacher")[0]
    data = prepare_data(job.data, tmp_path / "data")
    _, summary = run_local(tmp_path, job, spec, data, run_dir=exp.run_dir(spec.run_id))
    assert summary["status"] == "finished"  # tracking never costs a run
    (off,) = summary["tracking_off"]
    assert off.startswith("W&B: ")
    (said,) = tracking_lost(exp, [spec.run_id])
    assert said.startswith(f"W&B tracking was off for 1 run(s) ({spec.run_id}): ")
    assert said.endswith("they trained, and their numbers are in the tables")


def test_cluster_yaml_has_what_the_launcher_needs_and_binds_nothing_publicly():
    text = (REPO / "cluster.yaml").read_text()
    cfg = yaml.safe_load(text)
    for key in (
        "cluster_name",
        "provider",
        "available_node_types",
        "head_node_type",
        "setup_commands",
        "file_mounts",
        "head_start_ray_commands",
        "worker_start_ray_commands",
    ):
        assert key in cfg, key
    nodes = cfg["available_node_types"]
    assert cfg["head_node_type"] in nodes
    assert any(n["resources"].get("GPU", 0) >= 1 for n in nodes.values())
    assert nodes[cfg["head_node_type"]]["resources"].get("trial_driver", 0) >= 1
    assert any("pip install" in c and "kdray" in c for c in cfg["setup_commands"])
    assert "0.0.0.0" not in text
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start


def test_a_corrupt_or_wrong_checkpoint_fails_naming_the_file(tmp_path):
    from kdray.store.model_file import save_model
    from kdray.tasks.models import create_model

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=str(corrupt)):
        load_model(corrupt)
    wrong = tmp_path / "wrong.pt"
    model = create_model("test_resnet", 3, 1)
    save_model(wrong, model, model="resnet10t", num_classes=3, in_chans=1)  # name lies
    with pytest.raises(ValueError, match=f"{wrong}.*does not match"):
        load_model(wrong)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_model(tmp_path / "missing.pt")


def test_bf16_over_images_of_16_px_or_less_is_warned_of_on_cpus(tmp_path):
    """oneDNN's bf16 weight gradients of a stride-2 convolution over a 1x1 map are wrong on
    Intel AVX-512 BF16 CPUs: measured 191 of 200 steps wrong (9 not finite), none at 2x2."""
    from kdray.spec.describe import precision_warnings

    def warned(image_size, precision="bf16", device="auto"):
        gpus = 1 if device == "cuda" else 0
        raw = tiny_job_dict(tmp_path, resources={"device": device, "gpus_per_worker": gpus})
        raw["data"]["image_size"] = image_size
        raw["train"]["precision"] = precision
        return precision_warnings(parse_job(raw))

    (line,) = warned(16)
    assert line.startswith("train.precision bf16 with data.image_size 16: on a CPU")
    assert "fp32" in line
    assert warned(32) == [] and warned(16, "fp32") == [] and warned(16, device="cuda") == []
