"""The `medmnist` data kind: a MedMNIST .npz made here, the BreastMNIST copy kdray ships, and
the broken files a user may point it at (each one clear line, exit 2)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from kdray.cli import app
from kdray.data import DataError, load_split, medmnist, open_sources, prepare_data
from kdray.data.medmnist import Config

REPO = Path(__file__).resolve().parents[1]
BREASTMNIST = REPO / "kdray/data/builtin/breastmnist.npz"
BREASTMNIST_SHA256 = "5e68d79723fb3a63a399b0a66b66451799fc2eb3651f469cec0b679cfd743b68"


def write_npz(path: Path, rgb: bool = False, column_labels: bool = True, drop: str = "") -> Path:
    """A tiny MedMNIST-shaped archive: 3 classes, 12×12 images, labels N×1 or N."""
    rng = np.random.default_rng(0)
    arrays = {}
    for key, n in (("train", 30), ("val", 9), ("test", 12)):
        shape = (n, 12, 12, 3) if rgb else (n, 12, 12)
        labels = np.arange(n) % 3
        arrays[f"{key}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{key}_labels"] = labels.reshape(-1, 1) if column_labels else labels
    arrays.pop(drop, None)
    np.savez_compressed(path, **arrays)
    return path


@pytest.mark.parametrize("column_labels", [True, False])
def test_tiny_npz_gives_three_splits_with_flat_labels(tmp_path, column_labels):
    path = write_npz(tmp_path / "tiny.npz", column_labels=column_labels)
    classes, sources = open_sources(Config(path=path))
    assert classes == ["0", "1", "2"]
    assert {s: len(src) for s, src in sources.items()} == {"train": 30, "valid": 9, "test": 12}
    assert sources["valid"].labels.shape == (9,)
    assert sources["train"].labels[:4].tolist() == [0, 1, 2, 0]
    assert sources["train"].image(0).shape == (12, 12)


def test_names_cap_and_rgb_through_the_cache(tmp_path):
    path = write_npz(tmp_path / "rgb.npz", rgb=True)
    cfg = Config(path=path, classes=["a", "b", "c"], max_per_split=7, image_size=16, channels=3)
    info = prepare_data(cfg, tmp_path / "cache")
    assert info.classes == ["a", "b", "c"]
    assert info.counts == {"train": 7, "valid": 7, "test": 7}
    images, labels = load_split(info.path, "train")
    assert images.shape == (7, 16, 16, 3) and images.dtype == np.uint8
    assert labels.tolist() == [0, 1, 2, 0, 1, 2, 0]  # the first N, in file order
    gray = prepare_data(cfg.model_copy(update={"channels": 1}), tmp_path / "cache")
    assert load_split(gray.path, "test")[0].shape == (7, 16, 16, 1)


def test_missing_file_not_an_npz_and_missing_key_are_reported(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_sources(Config(path=tmp_path / "nowhere.npz"))
    junk = tmp_path / "junk.npz"
    junk.write_text("train_images,train_labels\n")
    with pytest.raises(DataError) as err:
        open_sources(Config(path=junk))
    assert err.value.problems[0].startswith(f"{junk}: not an .npz file")
    assert "pickle" not in str(err.value)
    single = tmp_path / "single.npz"
    with open(single, "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(DataError, match="a single .npy array"):
        open_sources(Config(path=single))
    no_val = write_npz(tmp_path / "noval.npz", drop="val_labels")
    with pytest.raises(DataError) as err:
        open_sources(Config(path=no_val))
    assert len(err.value.problems) == 1
    assert err.value.problems[0].startswith(f"{no_val}: no array 'val_labels'")


def test_object_arrays_and_an_empty_split_are_refused(tmp_path):
    objects = write_npz(tmp_path / "objects.npz")
    arrays = dict(np.load(objects))
    arrays["train_labels"] = np.array([[i % 3] for i in range(30)], dtype=object)
    np.savez(objects, **arrays)
    with pytest.raises(DataError) as err:
        open_sources(Config(path=objects))
    assert err.value.problems == [
        f"{objects}: train_labels holds Python objects (a pickled object array), which kdray "
        "does not load: save it as a numeric array (uint8 images, integer labels)"
    ]
    empty = write_npz(tmp_path / "empty.npz")
    arrays = dict(np.load(empty))
    arrays["val_images"], arrays["val_labels"] = arrays["val_images"][:0], arrays["val_labels"][:0]
    np.savez(empty, **arrays)
    with pytest.raises(DataError) as err:
        open_sources(Config(path=empty))
    assert len(err.value.problems) == 1
    assert err.value.problems[0].startswith(f"{empty}: the val split is empty (0 images)")


@pytest.mark.parametrize("broken", ["text", "objects", "empty_split"])
def test_validate_names_a_broken_file_in_one_line_and_exits_2(tmp_path, monkeypatch, broken):
    path = tmp_path / f"{broken}.npz"
    if broken == "text":
        path.write_text("not numpy at all")
    else:
        arrays = dict(np.load(write_npz(path)))
        if broken == "objects":
            arrays["test_images"] = np.array([None] * 12, dtype=object)
        else:
            arrays["train_images"], arrays["train_labels"] = (
                arrays["train_images"][:0],
                np.array([]),
            )
        np.savez(path, **arrays)
    monkeypatch.chdir(REPO)
    result = CliRunner().invoke(
        app,
        ["validate", "jobs/medmnist.yaml", "--set", "data.name=null", "--set", f"data.path={path}"],
    )
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and str(path) in lines[0], result.output
    assert "Traceback" not in result.output


def test_labels_outside_the_named_classes_are_reported(tmp_path):
    path = write_npz(tmp_path / "tiny.npz")
    with pytest.raises(DataError) as err:
        open_sources(Config(path=path, classes=["a", "b"]))
    assert len(err.value.problems) == 3  # one per split
    assert "train_labels has labels [2] outside the 2 classes" in err.value.problems[0]


def test_config_rejects_duplicate_classes_and_zero_cap(tmp_path):
    with pytest.raises(ValidationError):
        Config(path=tmp_path / "x.npz", classes=["a", "a"])
    with pytest.raises(ValidationError):
        Config(path=tmp_path / "x.npz", max_per_split=0)


def test_shipped_breastmnist_with_its_licence_beside_it():
    assert hashlib.sha256(BREASTMNIST.read_bytes()).hexdigest() == BREASTMNIST_SHA256
    attribution = (BREASTMNIST.parent / "README.md").read_text()
    assert "CC BY 4.0" in attribution and "10.1038/s41597-022-01721-8" in attribution
    licence = (BREASTMNIST.parent / "LICENSE-CC-BY-4.0.txt").read_text()
    assert "Creative Commons Attribution 4.0 International Public License" in licence
    classes, sources = open_sources(Config(path=BREASTMNIST, image_size=28))
    assert classes == ["0", "1"]
    assert {s: len(src) for s, src in sources.items()} == {"train": 546, "valid": 78, "test": 156}
    for source in sources.values():
        assert set(np.unique(source.labels)) == {0, 1}
        assert source.image(0).shape == (28, 28)


def test_breastmnist_by_name_reads_the_shipped_copy_without_download(tmp_path, monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("BreastMNIST at 28 ships with kdray; nothing may be downloaded")

    monkeypatch.setattr(medmnist, "local_copy", no_download)
    cfg = Config(name="breastmnist", folder=tmp_path / "medmnist")
    assert (cfg.image_size, cfg.channels) == (28, 1)  # the set's own size and channels
    assert medmnist.data_file(cfg) == BREASTMNIST
    classes, sources = open_sources(cfg)
    assert classes == ["malignant", "normal, benign"]  # the MedMNIST registry's names
    assert len(sources["test"]) == 156
    assert not (tmp_path / "medmnist").exists()


def test_shipped_job_validates_and_a_missing_file_exits_2(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the job's relative path is resolved against the working directory
    missing = tmp_path / "nothing.npz"
    result = CliRunner().invoke(
        app,
        [
            "validate",
            "jobs/medmnist.yaml",
            "--set",
            "data.name=null",
            "--set",
            f"data.path={missing}",
        ],
    )
    assert result.exit_code == 2
    assert f"data: {missing}: does not exist" in result.output
    result = CliRunner().invoke(app, ["validate", "jobs/medmnist.yaml"])
    assert result.exit_code == 0, result.output
    assert "2 classes, train 546, valid 78, test 156" in result.output


def test_a_path_section_dumps_as_before_names_existed(tmp_path):
    """Experiments made before `name` existed keep their data cache and soft-label keys."""
    dumped = Config(path=tmp_path / "x.npz", image_size=28).model_dump(mode="json")
    assert set(dumped) == {
        *("image_size", "channels", "on_bad_image", "kind", "path", "classes", "max_per_split")
    }
    named = Config(name="breastmnist", folder=tmp_path)
    assert "path" not in named.model_dump() and Config(**named.model_dump()) == named
