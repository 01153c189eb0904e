"""3D classification without Ray's cluster: the single-label task on whole volumes (MONAI
classifiers by name), Hinton KD on a volume classifier's logits, a teacher and a KD student
trained by the worker loop on a MedMNIST 3D archive made in the test, and the MedMNIST 3D sets
by name (never downloaded here: a registry file is served from the test's own folder)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from kdray.data import DataError, medmnist_registry, prepare_data
from kdray.data.medmnist3d import Config, open_sources
from kdray.methods import METHODS, Outputs, Shapes
from kdray.spec.load import parse_job
from kdray.spec.plan import make_plan
from kdray.tasks import get_task
from kdray.train.patches import whole_volume
from tests.test_volume_training import problems_of
from tests.test_worker import run_local

TEACHER, STUDENT = "resnet3d-d10-w0.25", "densenet3d-f4-g4-b1.1"
REPO = Path(__file__).resolve().parents[1]


def organ_npz(path: Path, side: int = 16, counts=(12, 6, 6), classes: int = 3) -> Path:
    """MedMNIST 3D's format (uint8 N x S x S x S, labels N x 1) with a learnable class: the
    class is the octant holding a bright cube."""
    rng = np.random.default_rng(1)
    arrays = {}
    for split, count in zip(("train", "val", "test"), counts, strict=True):
        labels = np.arange(count) % classes
        images = rng.integers(0, 60, (count, side, side, side), dtype=np.uint8)
        for image, label in zip(images, labels, strict=True):
            corner = (label * side // classes) % (side - 4)
            image[corner : corner + 5, corner : corner + 5, corner : corner + 5] = 250
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = labels.reshape(-1, 1).astype(np.uint8)
    np.savez_compressed(path, **arrays)
    return path


def class_job(path: Path, **changes) -> dict:
    job = {
        "name": "c3",
        "data": {"kind": "medmnist3d", "path": str(path)},
        "studies": {"s": {"teachers": [TEACHER], "students": [STUDENT],
                          "method": {"name": "kd"}}},
    }  # fmt: skip
    job.update(changes)
    return job


def test_a_3d_classification_job_with_hinton_kd_is_valid(tmp_path):
    assert problems_of(class_job(organ_npz(tmp_path / "o.npz"))) == []


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"method": {"name": "dkd"}}, "studies.s.method: dkd is written for 2D data, and this "
         "data is 3D; use one of ['at', 'feature_l1', 'fitnets', 'kd', 'mean_teacher']"),
        ({"method": {"name": "pixel_kd"}}, "studies.s.method: pixel_kd is defined for "
         "segmentation data, and this data is single-label; use one of ['at', 'feature_l1', "
         "'fitnets', 'kd', 'mean_teacher']"),
        ({"students": ["basicunet3d"]}, "studies.s.students: 'basicunet3d' is a 3D "
         "segmentation network; classification takes one of ['densenet3d', 'resnet3d']"),
        ({"students": ["resnet18"]}, "studies.s.students: 'resnet18': unknown 3D network"),
        ({"students": ["densenet3d"]}, "studies.s.students: 'densenet3d' pools data.patch "
         "[16, 16, 16] below one voxel; give sides of at least 29, or fewer blocks (-b)"),
    ],
)  # fmt: skip
def test_what_does_not_fit_3d_classification_is_one_line(tmp_path, change, says):
    raw = class_job(organ_npz(tmp_path / "o.npz"))
    raw["studies"]["s"].update(change)
    problems = problems_of(raw)
    assert len(problems) == 1 and problems[0].startswith(says), problems


def test_the_single_label_task_classifies_whole_volumes():
    task = get_task("single_label")
    assert 3 in task.ranks and task.model_problem(STUDENT, (16, 16, 16)) is None
    model = task.create_model(STUDENT, 3, 1, rank=3)
    logits = model(torch.randn(2, 1, 16, 16, 16))
    assert logits.shape == (2, 3)
    loss = task.supervised_loss(logits, torch.tensor([0, 2]))
    assert torch.isclose(loss, F.cross_entropy(logits, torch.tensor([0, 2])))
    probs = task.probabilities(logits).detach().numpy()
    assert task.metrics(probs, np.array([0, 2]))["acc"] in (0.0, 0.5, 1.0)


@pytest.mark.parametrize("side", [28, 29])
def test_validate_refuses_a_densenet_input_exactly_where_the_network_fails(side):
    name, task = "densenet3d-f4-g4-b1.1.1.1", get_task("single_label")
    problem = task.model_problem(name, (side, side, side))
    model = task.create_model(name, 2, 1, rank=3).eval()
    try:
        with torch.no_grad():
            model(torch.zeros(2, 1, side, side, side))
        failed = False
    except RuntimeError:
        failed = True
    assert failed == (problem is not None) == (side == 28)


def test_hinton_kd_on_3d_logits_is_hintons_formula():
    kd = METHODS["kd"]
    assert 3 in kd.ranks
    params = kd.Params(temperature=2.0, alpha=0.75)
    loss_fn = kd(params, Shapes(num_classes=3, total_epochs=1, task="single_label"))
    student = get_task("single_label").create_model(STUDENT, 3, 1, rank=3)
    teacher = get_task("single_label").create_model(TEACHER, 3, 1, rank=3).eval()
    x, y = torch.randn(4, 1, 16, 16, 16), torch.tensor([0, 1, 2, 1])
    s_logits = student(x)
    with torch.no_grad():
        t_logits = teacher(x)
    out = loss_fn(Outputs(s_logits), [Outputs(t_logits)], y, epoch=0)
    p_t = F.softmax(t_logits / 2, 1)
    kl = (p_t * (p_t.log() - F.log_softmax(s_logits / 2, 1))).sum(1).mean()
    expected = 0.25 * F.cross_entropy(s_logits, y) + 0.75 * 4 * kl
    assert torch.isclose(out["loss"], expected, rtol=1e-5)
    out["loss"].backward()
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)


def test_a_classifier_sees_the_volume_centred_padded_and_flipped_by_seed():
    image = np.arange(6 * 4 * 2, dtype=np.float32).reshape(6, 4, 2)
    x = whole_volume(image, (4, 4, 4), flips=False)
    assert x.shape == (4, 4, 4)
    assert np.array_equal(x[:, :, :2], image[1:5]) and not x[:, :, 2:].any()
    flipped = [whole_volume(image, (4, 4, 4), True, np.random.default_rng(s)) for s in range(8)]
    assert any(not np.array_equal(f, x) for f in flipped)
    again = whole_volume(image, (4, 4, 4), True, np.random.default_rng(3))
    assert np.array_equal(again, flipped[3])


def test_classification_batches_are_whole_volumes_with_their_classes(tmp_path):
    from kdray.data.volume_cache import load_volumes
    from kdray.data.volumes import prepare_volumes
    from kdray.train.patches import VolumeBatches

    info = prepare_volumes(Config(path=organ_npz(tmp_path / "o.npz")), tmp_path / "cache")
    volumes = load_volumes(info.path, "train")
    batches = VolumeBatches(volumes, (16, 16, 16), 0.5, False, 5, seed=3)
    seen = []
    for x, y, indices in batches.epoch(0):
        assert x.shape[1:] == (1, 16, 16, 16) and y.dtype == torch.int64
        assert y.tolist() == volumes.labels[indices.numpy()].tolist()
        image = np.asarray(volumes[int(indices[0])].image, dtype=np.float32)
        assert np.array_equal(x[0, 0].numpy(), image)  # the whole volume, unflipped
        seen += indices.tolist()
    assert len(seen) == 10 and len(set(seen)) == 10  # 12 volumes, batches of 5, last dropped


def test_a_teacher_and_its_kd_student_train_on_volumes_without_ray(tmp_path):
    path = organ_npz(tmp_path / "organ.npz")
    raw = class_job(path, storage=str(tmp_path / "runs"), seeds=[0])
    # and a feature student: the teacher online, its stages paired by stride, Conv3d adapters
    raw["studies"]["l1"] = {**raw["studies"]["s"], "method": {"name": "feature_l1"}}
    # and a mean teacher: its own moving-average teacher on shifted volumes, evaluated whole
    raw["studies"]["mt"] = {"students": [STUDENT], "method": {"name": "mean_teacher"}}
    raw["train"] = {"epochs": 1, "batch_size": 4, "lr": 0.003, "optimizer": "adam"}
    job = parse_job(raw)
    assert job.data.patch == (16, 16, 16)  # the whole volume, read from the archive
    plan = make_plan(job)
    data = prepare_data(job.data, tmp_path / "data")
    assert (data.rank, data.task, data.counts["train"]) == (3, "single_label", 12)
    (teacher,) = plan.stage("teacher")
    teacher_dir, teacher_summary = run_local(tmp_path, job, teacher, data)
    (student,) = [s for s in plan.stage("student") if s.method == "kd"]
    _, summary = run_local(tmp_path, job, student, data, teacher_dirs=[teacher_dir])
    (featured,) = [s for s in plan.stage("student") if s.method == "feature_l1"]
    l1_dir, l1_summary = run_local(tmp_path, job, featured, data, teacher_dirs=[teacher_dir])
    for result in (teacher_summary, summary, l1_summary):
        assert 0.0 <= result["test_acc"] <= 1.0 and 0.0 <= result["test_auroc"] <= 1.0
        assert len(result["test_report"]["confusion"]) == 3
    assert summary["params"] < teacher_summary["params"]
    (epoch,) = [json.loads(line) for line in (l1_dir / "epochs.jsonl").read_text().splitlines()]
    assert epoch["loss_l1"] > 0  # three stages (strides 2, 4, 8) compared through adapters
    (averaged,) = [s for s in plan.stage("student") if s.method == "mean_teacher"]
    mt_dir, mt_summary = run_local(tmp_path, job, averaged, data)
    assert 0.0 <= mt_summary["ema_test_acc"] <= 1.0
    (epoch,) = [json.loads(line) for line in (mt_dir / "epochs.jsonl").read_text().splitlines()]
    assert epoch["loss_consistency"] > 0  # the student against its average on shifted volumes


@pytest.fixture
def served_3d(tmp_path, monkeypatch):
    """A registry of one 3D set, 'tiny3d', whose 28 file lies in the test's MedMNIST folder."""
    folder = tmp_path / "medmnist"
    folder.mkdir()
    body = organ_npz(folder / "tiny3d.npz", side=28, counts=(3, 3, 3)).read_bytes()
    tiny = medmnist_registry.MedMNISTSet(
        "multi-class", 1, ("liver", "kidney", "heart"),
        {28: hashlib.md5(body).hexdigest(), 64: "0" * 32}, {}, "CC BY 4.0",
        base_url="http://127.0.0.1:9/files",  # nothing listens: a download fails at once
    )  # fmt: skip
    monkeypatch.setattr(medmnist_registry, "registry_3d", lambda: {"tiny3d": tiny})
    monkeypatch.delenv(medmnist_registry.MIRROR_ENV, raising=False)
    return folder


def test_a_3d_set_by_name_reads_the_local_copy_with_the_registrys_classes(served_3d):
    cfg = Config(name="tiny3d", folder=served_3d)
    assert cfg.patch == (28, 28, 28) and Config(name="tiny3d", side=64).patch == (64, 64, 64)
    classes, sources = open_sources(cfg)
    assert classes == ["liver", "kidney", "heart"] and len(sources["test"]) == 3


def test_a_3d_set_by_name_not_yet_downloaded_says_where_to_get_it(served_3d):
    cfg = Config(name="tiny3d", side=64, folder=served_3d)
    with pytest.raises(DataError) as err:
        open_sources(cfg)
    (line,) = err.value.problems
    assert line.startswith("http://127.0.0.1:9/files/tiny3d_64.npz?download=1: download ")
    assert "download it yourself from" in line
    assert list(served_3d.iterdir()) == [served_3d / "tiny3d.npz"]  # nothing half-written


@pytest.mark.parametrize(
    "name", ["organmnist3d", "nodulemnist3d", "adrenalmnist3d", "fracturemnist3d",
             "vesselmnist3d", "synapsemnist3d"],
)  # fmt: skip
def test_every_medmnist_3d_set_is_registered_at_28_and_64(name):
    info = medmnist_registry.registry_3d()[name]
    assert info.n_channels == 1 and sorted(info.md5) == [28, 64]
    assert medmnist_registry.lookup_3d(name, 64).filename == f"{name}_64.npz"
    assert medmnist_registry.lookup_3d(name, 28).url.endswith(f"/{name}.npz?download=1")
    assert (len(info.labels) == 2) == (info.task == "binary-class")


def test_names_of_the_other_rank_point_to_the_right_kind():
    with pytest.raises(ValidationError, match="use data kind medmnist3d|give it as data kind"):
        from kdray.data.medmnist import Config as Config2D

        Config2D(name="organmnist3d")
    with pytest.raises(ValidationError, match="'breastmnist' is not a MedMNIST v2 3D set"):
        Config(name="breastmnist")


def test_run_counts_the_train_volumes_per_class(tmp_path):
    from types import SimpleNamespace

    from rich.console import Console

    from kdray.grid.run import _prepare

    job = parse_job(class_job(organ_npz(tmp_path / "organ.npz"), train={"batch_size": 4}))
    console = Console(record=True, width=200)
    _prepare(SimpleNamespace(data_dir=tmp_path / "data"), job, console)
    assert "train volumes per class: class_0 4, class_1 4, class_2 4" in console.export_text()
