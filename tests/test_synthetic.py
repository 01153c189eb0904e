import numpy as np

from kdray.data import load_split, prepare_data
from kdray.data.synthetic import BODY_PARTS, Config, generate_split
from kdray.spec.load import parse_job
from kdray.spec.plan import make_plan
from tests.test_worker import run_local


def test_same_seed_same_images_other_seed_other_images():
    a, la = generate_split(["HAND", "WRIST"], 20, 32, 0.1, seed=3)
    b, lb = generate_split(["HAND", "WRIST"], 20, 32, 0.1, seed=3)
    c, _ = generate_split(["HAND", "WRIST"], 20, 32, 0.1, seed=4)
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert not np.array_equal(a, c)


def test_classes_are_balanced_and_images_look_like_radiographs():
    images, labels = generate_split(list(BODY_PARTS), 70, 64, 0.1, seed=0)
    assert images.dtype == np.uint8 and images.shape == (70, 64, 64)
    assert np.bincount(labels).tolist() == [10] * 7
    # dark background, bright bone: a wide range of intensities in every image
    assert (images.reshape(70, -1).max(1) > 180).all()
    assert (np.median(images.reshape(70, -1), axis=1) < 100).all()


def test_cache_holds_every_split_at_the_job_resolution(tmp_path):
    cfg = Config(image_size=24, channels=3, train_size=30, valid_size=12, test_size=12)
    info = prepare_data(cfg, tmp_path)
    assert info.counts == {"train": 30, "valid": 12, "test": 12}
    images, labels = load_split(info.path, "valid")
    assert images.shape == (12, 24, 24, 3) and labels.shape == (12,)
    assert prepare_data(cfg, tmp_path).path == info.path  # decoded once, then reused


def test_learnable_but_not_trivial(tmp_path):
    """A small CNN is far above chance after a few epochs, but not perfect after one."""
    raw = {
        "name": "difficulty",
        "storage": str(tmp_path),
        "data": {"kind": "synthetic", "image_size": 24},  # the quickstart's size
        "train": {"epochs": 4, "batch_size": 32, "lr": 0.001},
        "studies": {"normal": {"teachers": ["resnet10t"], "students": ["resnet10t"]}},
    }
    job = parse_job(raw)
    data = prepare_data(job.data, tmp_path / "data")
    spec = make_plan(job).stage("teacher")[0]
    run_dir, summary = run_local(tmp_path, job, spec, data)
    history = [line for line in (run_dir / "epochs.jsonl").read_text().splitlines()]
    import json

    first = json.loads(history[0])
    chance = 1 / len(data.classes)
    assert first["val_acc"] < 0.95
    assert summary["test_acc"] > chance + 0.3
