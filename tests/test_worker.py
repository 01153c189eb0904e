"""The worker loop in Ray Train's local mode (num_workers=0): no cluster, same code path."""

import gc
import json
import time
from pathlib import Path

import pytest
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from kdray.data import load_split, prepare_data
from kdray.spec.load import parse_job
from kdray.spec.plan import make_plan
from kdray.store.model_file import load_model
from kdray.train.trial import TrialConfig
from kdray.train.worker import train_pack
from tests.conftest import tiny_job_dict


def run_local(tmp_path, job, spec, data, teacher_dirs=(), run_dir=None, loop=train_pack):
    """Train one run as a pack of one, in Ray Train's local mode (`loop`: `train_pack`, or the
    grid's `worker_loop` around it); its experiment folder is the run folder's grandparent
    (teachers from elsewhere are linked into its runs/)."""
    run_dir = Path(run_dir or tmp_path / "runs" / spec.run_id)
    root = run_dir.parent.parent
    for teacher in map(Path, teacher_dirs):
        link = root / "runs" / teacher.name
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(teacher)
    trial = TrialConfig(root, job, data, (spec,), {}, time.time())
    TorchTrainer(
        loop,
        train_loop_config={"trial": trial},
        scaling_config=ScalingConfig(num_workers=0),
        run_config=RunConfig(name=spec.run_id, storage_path=str(root / "train")),
    ).fit()
    return run_dir, json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A teacher, a KD student of it, and a defective teacher, trained once for the module."""
    tmp_path = tmp_path_factory.mktemp("worker")
    raw = tiny_job_dict(tmp_path)
    raw["studies"]["defective"] = {
        "teachers": ["resnet10t"],
        "students": ["test_resnet"],
        "teacher_val_band": [0.45, 0.8],
        "eval_every_steps": 1,
    }
    raw["train"]["epochs"] = 3
    job = parse_job(raw)
    plan = make_plan(job)
    data = prepare_data(job.data, tmp_path / "data")
    out = {"job": job, "plan": plan, "data": data}
    for spec in plan.stage("teacher"):
        key = "defective_teacher" if spec.band else "teacher"
        out[key] = (spec, *run_local(tmp_path, job, spec, data))
    teacher_spec, teacher_dir, _ = out["teacher"]
    student = next(r for r in plan.stage("student") if r.teacher_runs == [teacher_spec.run_id])
    out["student"] = (student, *run_local(tmp_path, job, student, data, [teacher_dir]))
    return out


def test_a_run_writes_its_summary_epochs_and_weights(trained):
    spec, run_dir, summary = trained["teacher"]
    assert summary["status"] == "finished" and summary["epochs"] == 3
    for split in ("train", "val", "test"):
        assert 0.0 <= summary[f"{split}_acc"] <= 1.0
    epochs = [json.loads(line) for line in (run_dir / "epochs.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    model, meta = load_model(run_dir / "model.pt")
    assert meta["model"] == "resnet10t" and meta["num_classes"] == 3 and meta["in_chans"] == 1
    assert summary["params"] == sum(p.numel() for p in model.parameters())


def test_saved_teacher_reproduces_its_recorded_validation_accuracy(trained):
    import torch

    from kdray.train.evaluate import to_tensor

    _, run_dir, summary = trained["teacher"]
    data = trained["data"]
    model, meta = load_model(run_dir / "model.pt")
    images, labels = load_split(data.path, "valid")
    with torch.no_grad():
        preds = model(to_tensor(images, meta["mean"], meta["std"], "cpu")).argmax(1).numpy()
    assert (preds == labels).mean() == pytest.approx(summary["val_acc"])


def test_defective_teacher_stops_inside_its_band(trained):
    spec, _, summary = trained["defective_teacher"]
    low, high = spec.band
    assert summary["status"] == "finished", summary["error"]
    assert low <= summary["val_acc"] <= high
    assert summary["band_val_score"] == pytest.approx(summary["val_acc"])
    assert summary["epochs"] < trained["job"].train.epochs  # stopped early, mid-training


def test_kd_student_trains_from_its_teacher(trained):
    spec, run_dir, summary = trained["student"]
    assert spec.method == "kd" and spec.roles == ["kd:normal"]
    assert spec.teacher_models == ["resnet10t"]
    assert summary["status"] == "finished" and summary["epochs"] == 3
    assert summary["teacher_outputs"] == "cached"  # its teacher wrote soft labels for it
    # every epoch records each of the method's loss terms besides the minimised total
    epochs = [json.loads(line) for line in (run_dir / "epochs.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    for epoch in epochs:
        assert {"loss_ce", "loss_kd"} <= set(epoch)
        alpha = spec.method_params["alpha"]
        mixed = (1 - alpha) * epoch["loss_ce"] + alpha * epoch["loss_kd"]
        assert epoch["train_loss"] == pytest.approx(mixed, rel=1e-5)
    teacher_epochs = (trained["teacher"][1] / "epochs.jsonl").read_text().splitlines()
    assert all("loss_kd" not in json.loads(line) for line in teacher_epochs)


def test_a_band_out_of_reach_is_reported_not_hidden(tmp_path, trained):
    job = trained["job"]
    raw = job.model_dump(mode="json")
    raw["studies"]["defective"]["teacher_val_band"] = [0.0, 0.01]
    job = parse_job(raw)
    spec = next(r for r in make_plan(job).stage("teacher") if r.band)
    _, summary = run_local(tmp_path, job, spec, trained["data"])
    assert summary["status"] == "failed"
    # three classes: an untrained teacher already scores ~1/3, above the band at once
    assert "was above its band [0.0, 0.01] at its first check" in summary["error"]
    assert summary["error"].endswith("raise the band")


def test_a_teacher_seen_below_its_band_then_above_it_jumped_past_it():
    from types import SimpleNamespace

    import torch

    from kdray.train.session import BandStop

    scores = iter([0.30, 0.90])
    session = SimpleNamespace(
        core=torch.nn.Linear(2, 2), world_size=1, val_key="val_acc",
        spec=SimpleNamespace(model="resnet10t"), val_score=lambda: next(scores),
    )  # fmt: skip
    band = BandStop((0.5, 0.6), every=1)
    assert band.check(session, 0.5) is False and band.error is None
    assert band.check(session, 1.0) is True
    assert band.error.startswith("defective teacher resnet10t jumped past its band [0.5, 0.6]")


def train_in_one_fit(root, job, specs, data):
    """Several runs as one pack, in one local-mode fit."""
    trial = TrialConfig(Path(root), job, data, tuple(specs), {}, time.time())
    TorchTrainer(
        train_pack,
        train_loop_config={"trial": trial},
        scaling_config=ScalingConfig(num_workers=0),
        run_config=RunConfig(name=trial.name, storage_path=str(Path(root) / "train")),
    ).fit()


METRICS = ("train_acc", "val_acc", "test_acc", "train_loss", "val_loss", "test_loss", "epochs")


def test_runs_packed_into_one_fit_end_as_they_do_alone(tmp_path, trained):
    job, data = trained["job"], trained["data"]
    teacher, _, _ = trained["teacher"]
    baseline = next(r for r in trained["plan"].stage("student") if not r.teacher_runs)
    packed = tmp_path / "packed"
    train_in_one_fit(packed, job, [teacher, baseline], data)
    for spec in (teacher, baseline):
        _, alone = run_local(tmp_path / f"alone-{spec.run_id}", job, spec, data)
        together = json.loads((packed / "runs" / spec.run_id / "summary.json").read_text())
        assert [together[k] for k in METRICS] == [alone[k] for k in METRICS], spec.run_id
        assert together["wall_s"] >= together["train_s"] > 0
    # the pack keeps what lived before it out of garbage collection while it trains only: a
    # process that goes on (Ray Train's local mode, as here) gets it back
    assert gc.get_freeze_count() == 0


def test_a_run_that_raises_fails_alone_and_the_pack_goes_on(tmp_path, trained, monkeypatch):
    from kdray.train import run_loop

    job, data = trained["job"], trained["data"]
    teacher, _, _ = trained["teacher"]
    baseline = next(r for r in trained["plan"].stage("student") if not r.teacher_runs)
    build = run_loop.build_session

    def broken_for_the_teacher(job, spec, *args, **kwargs):
        if spec.run_id == teacher.run_id:
            raise RuntimeError("disk on fire\nno space left on device")
        return build(job, spec, *args, **kwargs)

    monkeypatch.setattr(run_loop, "build_session", broken_for_the_teacher)
    train_in_one_fit(tmp_path, job, [teacher, baseline], data)
    failed = tmp_path / "runs" / teacher.run_id
    assert not (failed / "summary.json").exists()  # so `kdray resume` trains it again
    error = json.loads((failed / "failure.json").read_text())["error"]
    assert error == "RuntimeError: no space left on device"
    done = json.loads((tmp_path / "runs" / baseline.run_id / "summary.json").read_text())
    assert done["status"] == "finished"


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_the_optimizer_is_fused_on_a_cpu_and_steps_as_torch_s_own(tmp_path, name):
    """On a CPU core the per-tensor loop was most of an Adam step: the job's optimizer runs
    torch's fused kernel there, with the job's settings, and moves the weights as the
    per-tensor optimizer does."""
    import torch

    from kdray.train.session import build_optimizer

    raw = tiny_job_dict(tmp_path)
    raw["train"].update(optimizer=name, lr=0.01, weight_decay=0.01)
    job = parse_job(raw)
    torch.manual_seed(0)
    fused_model = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)
    )
    loop_model = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)
    )
    loop_model.load_state_dict(fused_model.state_dict())
    before = fused_model[0].weight.detach().clone()
    fused = build_optimizer(job, fused_model.parameters())
    assert fused.defaults["fused"] is True
    assert fused.defaults["lr"] == 0.01 and fused.defaults["weight_decay"] == 0.01
    settings = {k: fused.defaults[k] for k in ("lr", "weight_decay")}
    if name == "sgd":
        settings["momentum"] = job.train.momentum
    loop = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[name](
        loop_model.parameters(), foreach=False, **settings
    )
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    for model, optimizer in ((fused_model, fused), (loop_model, loop)):
        for _ in range(5):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    for a, b in zip(fused_model.parameters(), loop_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(fused_model[0].weight, before)


def test_the_optimizer_leaves_torch_s_choice_where_no_fused_kernel_runs(tmp_path):
    import torch

    from kdray.train.session import build_optimizer, fused_kernels_for

    meta = [torch.nn.Parameter(torch.empty(4, device="meta"))]
    assert fused_kernels_for(meta) is None
    assert fused_kernels_for([torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))]) is True
    assert fused_kernels_for([torch.nn.Parameter(torch.zeros(4))]) is True
    assert fused_kernels_for([]) is None
    assert build_optimizer(parse_job(tiny_job_dict(tmp_path)), meta).defaults["fused"] is None


def diverging_job(tmp_path, **studies):
    """A job whose training blows up within its first epoch: sgd at lr 10, momentum 0.99."""
    raw = tiny_job_dict(tmp_path)
    raw["train"].update(epochs=3, optimizer="sgd", lr=10.0, momentum=0.99, batch_size=4)
    raw["studies"] = studies or {"normal": {"teachers": ["resnet10t"], "students": ["test_resnet"]}}
    job = parse_job(raw)
    return job, make_plan(job), prepare_data(job.data, tmp_path / "data")


def test_a_run_whose_weights_stop_being_finite_fails_naming_the_learning_rate(tmp_path):
    job, plan, data = diverging_job(tmp_path)
    spec = plan.stage("teacher")[0]
    run_dir, summary = run_local(tmp_path, job, spec, data)
    assert summary["status"] == "failed", summary
    assert summary["error"].startswith("training diverged: resnet10t's weights are no longer")
    assert "after epoch 1" in summary["error"] and "lower train.lr (now 10)" in summary["error"]
    assert summary["epochs"] == 1  # stopped at once, not trained on for 2 more epochs of NaN
    assert "val_acc" not in summary and "test_acc" not in summary  # nothing evaluated
    epochs = [json.loads(line) for line in (run_dir / "epochs.jsonl").read_text().splitlines()]
    assert len(epochs) == 1 and "val_acc" not in epochs[0]  # the epoch kept: where it blew up
    assert not (run_dir / "model.pt").exists() and not (run_dir / "checkpoint.pt").exists()


def test_a_defective_teacher_that_diverges_fails_rather_than_landing_in_its_band(
    tmp_path, monkeypatch
):
    """NaN weights predict one class: a band check would read its share as an accuracy, and
    a wide band would take the NaN network for a defective teacher."""
    import torch

    from kdray.train import run_loop

    job, plan, data = diverging_job(
        tmp_path,
        defective={
            "teachers": ["resnet10t"], "students": ["test_resnet"],
            "teacher_val_band": [0.0, 1.0], "eval_every_steps": 1,
        },
    )  # fmt: skip
    real_epoch = run_loop.train_epoch

    def poisoned(session, epoch, band, on_step=None):
        with torch.no_grad():
            next(session.core.parameters()).fill_(float("nan"))
        return real_epoch(session, epoch, band, on_step)

    monkeypatch.setattr(run_loop, "train_epoch", poisoned)
    spec = next(r for r in plan.stage("teacher") if r.band)
    _, summary = run_local(tmp_path, job, spec, data)
    assert summary["status"] == "failed" and summary["band_val_score"] is None, summary
    assert summary["error"].startswith("training diverged"), summary["error"]
