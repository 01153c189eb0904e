"""The `mura` data kind on a small MURA-v1.1 tree written here in the archive's real layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError
from typer.testing import CliRunner

from kdray.cli import app
from kdray.data import DataError, load_split, open_sources, prepare_data
from kdray.data.cache import load_groups
from kdray.data.mura import (
    BODY_PARTS,
    Config,
    body_part_of,
    held_out_patients,
    patient_of,
    study_level,
)

REPO = Path(__file__).resolve().parents[1]
PARTS = ["ELBOW", "HAND", "WRIST"]


def build_mura(base: Path, parts=PARTS, header: bool = False, train_patients: int = 12) -> Path:
    """Write `base/MURA-v1.1` as Stanford ships it and return `base`.

    Every patient has one study per body part in `parts` (every 4th patient a second study of
    the first part); 1-3 PNG images per study, gray (L) and RGB mixed, 20-64 px of varying
    aspect. Studies alternate positive/negative. train_image_paths.csv has CRLF line endings
    and no final newline, the other CSVs LF; `header` adds the header rows some re-uploads have.
    """
    archive = base / "MURA-v1.1"
    rng = np.random.default_rng(7)
    patients = {
        "train": [f"patient{n:05d}" for n in range(1, train_patients + 1)],
        "valid": [f"patient{n:05d}" for n in range(11185, 11189)],
    }
    for split, names in patients.items():
        image_lines, study_lines = [], []
        for p, patient in enumerate(names):
            studies = [(part, 1) for part in parts] + ([(parts[0], 2)] if p % 4 == 0 else [])
            for k, (part, number) in enumerate(studies):
                positive = (p + k) % 2 == 1
                study = f"MURA-v1.1/{split}/XR_{part}/{patient}/study{number}_" + (
                    "positive" if positive else "negative"
                )
                study_lines.append(f"{study}/,{int(positive)}")
                for m in range(1 + (p + k) % 3):
                    h, w = (int(v) for v in rng.integers(20, 65, 2))
                    mode = "RGB" if (p + k + m) % 2 else "L"
                    shape = (h, w, 3) if mode == "RGB" else (h, w)
                    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
                    file = base / study / f"image{m + 1}.png"
                    file.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(pixels, mode).save(file)
                    image_lines.append(f"{study}/image{m + 1}.png")
        if header:
            image_lines.insert(0, "Img_Path,Label")
            study_lines.insert(0, "Study,Label")
        if split == "train":
            (archive / "train_image_paths.csv").write_bytes("\r\n".join(image_lines).encode())
        else:
            (archive / f"{split}_image_paths.csv").write_text("\n".join(image_lines) + "\n")
        (archive / f"{split}_labeled_studies.csv").write_text("\n".join(study_lines) + "\n")
    return base


@pytest.fixture(scope="module")
def mura(tmp_path_factory) -> Path:
    """A read-only MURA tree shared by the tests that do not damage it."""
    return build_mura(tmp_path_factory.mktemp("mura"))


def csv_lines(base: Path, name: str) -> list[str]:
    return (base / "MURA-v1.1" / name).read_text().splitlines()


def cfg(root: Path, **fields) -> Config:
    return Config(root=root, body_parts=PARTS, **fields)


def all_paths(sources) -> list[str]:
    return [str(p) for s in sources.values() for p in s.paths]


# --- reading the archive ----------------------------------------------------------------------


def test_fixture_has_the_real_line_endings(mura):
    raw = (mura / "MURA-v1.1/train_image_paths.csv").read_bytes()
    assert b"\r\n" in raw and not raw.endswith(b"\n")
    assert b"\r" not in (mura / "MURA-v1.1/valid_image_paths.csv").read_bytes()


def test_body_part_counts_labels_and_groups(mura):
    classes, sources = open_sources(cfg(mura))
    assert classes == PARTS
    listed = {s: len(csv_lines(mura, f"{s}_image_paths.csv")) for s in ("train", "valid")}
    counts = {s: len(src) for s, src in sources.items()}
    assert counts["train"] + counts["test"] == listed["train"]
    assert counts["valid"] == listed["valid"]
    for source in sources.values():
        for path, label, group in zip(source.paths, source.labels, source.groups, strict=True):
            assert f"XR_{classes[label]}" in str(path)
            assert str(path.parent).endswith(group)  # the study key is the study folder
            assert group.startswith("MURA-v1.1/") and body_part_of(group) == classes[label]
    # an image is both gray and RGB in the fixture; the source hands over what the file holds
    modes = {sources["valid"].image(i).ndim for i in range(len(sources["valid"]))}
    assert modes == {2, 3}


def test_all_seven_body_parts_in_their_order_by_default(tmp_path):
    build_mura(tmp_path, parts=list(BODY_PARTS), train_patients=20)
    classes, sources = open_sources(Config(root=tmp_path))
    assert classes == list(BODY_PARTS)
    for source in sources.values():
        assert sorted(set(source.labels.tolist())) == list(range(7))


def test_body_parts_subset_order_sets_the_labels(mura):
    classes, sources = open_sources(Config(root=mura, body_parts=["WRIST", "ELBOW"]))
    assert classes == ["WRIST", "ELBOW"]
    train = sources["train"]
    assert all("XR_HAND" not in str(p) for p in train.paths)
    assert {body_part_of(g): int(y) for g, y in zip(train.groups, train.labels, strict=True)} == {
        "WRIST": 0,
        "ELBOW": 1,
    }


def test_abnormality_labels_come_from_the_labeled_studies_csv(mura):
    classes, sources = open_sources(Config(root=mura, task="abnormality"))
    assert classes == ["negative", "positive"]
    for source in sources.values():
        for group, label in zip(source.groups, source.labels, strict=True):
            assert label == int(group.endswith("_positive"))
        assert set(source.labels.tolist()) == {0, 1}


def test_root_may_be_the_archive_folder_itself(mura):
    _, outer = open_sources(cfg(mura))
    _, inner = open_sources(cfg(mura / "MURA-v1.1"))
    assert all_paths(outer) == all_paths(inner)
    assert outer["test"].groups.tolist() == inner["test"].groups.tolist()


def test_header_rows_are_accepted(tmp_path, mura):
    _, plain = open_sources(cfg(mura, task="abnormality"))
    _, with_header = open_sources(cfg(build_mura(tmp_path, header=True), task="abnormality"))
    assert {s: len(v) for s, v in plain.items()} == {s: len(v) for s, v in with_header.items()}


# --- splits and subsets -----------------------------------------------------------------------


def patients(source) -> set[str]:
    return {patient_of(g) for g in source.groups}


def test_test_split_is_carved_off_train_by_patient(mura):
    _, sources = open_sources(cfg(mura, test_fraction=0.25))
    train, valid, test = (patients(sources[s]) for s in ("train", "valid", "test"))
    assert len(test) == 3 and len(train) == 9
    assert not train & test and not valid & (train | test)
    assert all(p.startswith("patient1118") for p in valid)
    everyone = {f"patient{n:05d}" for n in range(1, 13)}
    assert sorted(test) == held_out_patients(everyone, 0.25, 0)
    assert sources["test"].notes == [
        "test holds 3 of the 12 patients of MURA's train list (test_fraction 0.25, split_seed 0):"
        " MURA's own test set is hidden, so every job on this archive and seed tests on these"
        " patients"
    ]


def test_test_split_is_deterministic_per_seed_and_shared_by_tasks(mura):
    def test_set(**fields):
        return patients(open_sources(cfg(mura, test_fraction=0.25, **fields))[1]["test"])

    assert test_set() == test_set()
    assert test_set(split_seed=0) != test_set(split_seed=1)
    assert test_set(task="abnormality") == test_set()
    assert held_out_patients([f"p{i}" for i in range(100)], 0.1, 3) == held_out_patients(
        [f"p{i}" for i in reversed(range(100))], 0.1, 3
    )
    assert len(held_out_patients([f"p{i}" for i in range(100)], 0.1, 3)) == 10


def test_max_per_class_per_split(mura):
    caps = {"train": 3, "valid": 2}
    _, sources = open_sources(cfg(mura, max_per_class=caps))
    assert np.bincount(sources["train"].labels).tolist() == [3, 3, 3]
    assert np.bincount(sources["valid"].labels).tolist() == [2, 2, 2]
    _, full = open_sources(cfg(mura))
    assert len(sources["test"]) == len(full["test"])  # no cap given for test
    _, again = open_sources(cfg(mura, max_per_class=caps))
    assert all_paths(again) == all_paths(sources)
    _, other = open_sources(cfg(mura, max_per_class=caps, split_seed=5))
    assert [str(p) for p in other["valid"].paths] != [str(p) for p in sources["valid"].paths]
    _, everywhere = open_sources(cfg(mura, max_per_class=1))
    assert [len(s) for s in everywhere.values()] == [3, 3, 3]


def test_study_level_averages_image_probabilities(mura):
    _, sources = open_sources(cfg(mura, task="abnormality"))
    valid = sources["valid"]
    probs = np.random.default_rng(0).random(len(valid))
    study_probs, study_labels, keys = study_level(probs, valid.labels, valid.groups)
    assert (
        len(keys)
        == len(set(valid.groups.tolist()))
        == len(csv_lines(mura, "valid_labeled_studies.csv"))
    )
    for key, p, y in zip(keys, study_probs, study_labels, strict=True):
        members = valid.groups == key
        assert p == pytest.approx(probs[members].mean())
        assert y == int(key.endswith("_positive"))
    two_column = np.stack([1 - probs, probs], axis=1)
    study_two, _, _ = study_level(two_column, valid.labels, valid.groups)
    assert np.allclose(study_two[:, 1], study_probs) and np.allclose(study_two.sum(1), 1)


def test_study_level_hand_worked_and_mixed_labels_refused():
    probs = np.array([0.2, 0.6, 0.9, 0.1])
    p, y, keys = study_level(probs, np.array([1, 1, 0, 0]), np.array(["b", "b", "a", "a"]))
    assert keys.tolist() == ["a", "b"] and y.tolist() == [0, 1]
    assert p == pytest.approx([0.5, 0.4])
    with pytest.raises(ValueError, match="different labels"):
        study_level(probs, np.array([1, 0, 0, 0]), np.array(["b", "b", "a", "a"]))


def test_config_root_is_required_and_caps_are_checked():
    with pytest.raises(ValidationError, match="root"):
        Config()
    with pytest.raises(ValidationError):
        Config(root="x", max_per_class={"train": 0})
    with pytest.raises(ValidationError):
        Config(root="x", max_per_class={"training": 5})
    with pytest.raises(ValidationError):
        Config(root="x", body_parts=["ANKLE", "HAND"])
    with pytest.raises(ValidationError):
        Config(root="x", body_parts=["HAND"])
    assert Config(root="x", task="abnormality", body_parts=["HAND"]).body_parts == ["HAND"]
    assert Config(root="x", max_per_class=4).max_per_class.valid == 4


# --- through the cache ------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_prepare_data_decodes_every_image(tmp_path, mura, channels):
    config = cfg(mura, image_size=24, channels=channels, test_fraction=0.25)
    info = prepare_data(config, tmp_path / "cache")
    _, sources = open_sources(config)
    assert info.counts == {s: len(src) for s, src in sources.items()}
    for split, source in sources.items():
        images, labels = load_split(info.path, split)
        assert images.shape == (len(source), 24, 24, channels) and images.dtype == np.uint8
        assert labels.tolist() == source.labels.tolist()
        assert load_groups(info.path, split).tolist() == source.groups.tolist()
    assert info.extra["skipped"] == {"train": 0, "valid": 0, "test": 0}
    assert info.extra["notes"] == sources["test"].notes  # what `kdray run` prints


def truncate(file: Path) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


def test_truncated_png_is_reported_or_skipped(tmp_path):
    base = build_mura(tmp_path / "data")
    bad = base / csv_lines(base, "valid_image_paths.csv")[3]
    truncate(bad)
    with pytest.raises(DataError) as err:
        prepare_data(cfg(base, image_size=16), tmp_path / "cache")
    assert len(err.value.problems) == 2 and str(bad) in err.value.problems[0]
    assert "on_bad_image: skip" in err.value.problems[1]  # what to do, once
    info = prepare_data(cfg(base, image_size=16, on_bad_image="skip"), tmp_path / "cache")
    assert info.extra["skipped"]["valid"] == 1
    assert info.counts["valid"] == len(csv_lines(base, "valid_image_paths.csv")) - 1


# --- bad archives -----------------------------------------------------------------------------


def problems_of(config: Config) -> list[str]:
    with pytest.raises(DataError) as err:
        open_sources(config)
    return err.value.problems


def test_missing_root_and_root_without_the_archive(tmp_path):
    (problem,) = problems_of(cfg(tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere") in problem and "no such folder" in problem
    (problem,) = problems_of(cfg(tmp_path))
    assert str(tmp_path) in problem and "MURA-v1.1" in problem


def test_missing_csv_is_named(tmp_path):
    base = build_mura(tmp_path)
    (base / "MURA-v1.1/valid_labeled_studies.csv").unlink()
    open_sources(cfg(base))  # body_part does not need the study labels
    (problem,) = problems_of(cfg(base, task="abnormality"))
    assert str(base / "MURA-v1.1/valid_labeled_studies.csv") in problem


def test_rows_pointing_at_missing_files_are_all_reported_or_dropped(tmp_path):
    base = build_mura(tmp_path)
    rows = csv_lines(base, "train_image_paths.csv")
    gone = [base / rows[0], base / rows[5]]
    for file in gone:
        file.unlink()
    problems = problems_of(cfg(base))
    assert len(problems) == 2
    for line, file, problem in zip((1, 6), gone, problems, strict=True):
        assert problem.startswith(f"{base / 'MURA-v1.1/train_image_paths.csv'} line {line}: ")
        assert f"{file} does not exist" in problem
    _, sources = open_sources(cfg(base, on_bad_image="skip"))
    dropped = sources["train"].dropped + sources["test"].dropped
    assert len(dropped) == 2
    assert len(sources["train"]) + len(sources["test"]) == len(rows) - 2
    assert not set(map(str, gone)) & set(all_paths(sources))


def test_malformed_rows_and_labels_outside_the_classes(tmp_path):
    base = build_mura(tmp_path)
    archive = base / "MURA-v1.1"
    with (archive / "valid_image_paths.csv").open("a") as f:
        f.write("MURA-v1.1/valid/patient11185/image1.png\n")
        f.write("MURA-v1.1/valid/XR_ANKLE/patient11185/study1_positive/image1.png\n")
    studies = csv_lines(base, "valid_labeled_studies.csv")
    studies[2] = studies[2][:-1] + "2"
    studies[3] = studies[3].split(",")[0]
    (archive / "valid_labeled_studies.csv").write_text("\n".join(studies) + "\n")
    problems = problems_of(cfg(base, task="abnormality"))
    studies_csv = archive / "valid_labeled_studies.csv"
    assert any(p.startswith(f"{studies_csv} line 3: label '2'") for p in problems)
    assert any(p.startswith(f"{studies_csv} line 4: expected") for p in problems)
    paths_csv = archive / "valid_image_paths.csv"
    assert any(p.startswith(f"{paths_csv} line") and "malformed path" in p for p in problems)
    assert any("unknown study type 'XR_ANKLE'" in p for p in problems)
    # the row whose study lost its label line is reported too
    assert any("has no row in valid_labeled_studies.csv" in p for p in problems)


def test_empty_class_is_reported(mura):
    problems = problems_of(Config(root=mura))  # all 7 types, the tree holds 3
    assert len(problems) == 4 * 3  # FINGER, FOREARM, HUMERUS, SHOULDER; in every split
    assert "class 'FINGER' has no images in the train split" in problems[0]


def test_problem_list_is_capped(tmp_path):
    base = build_mura(tmp_path, train_patients=20)
    rows = csv_lines(base, "train_image_paths.csv")
    for row in rows[:60]:
        (base / row).unlink()
    problems = problems_of(cfg(base))
    assert len(problems) == 51 and problems[-1] == "... and 10 more"


# --- the job files and the CLI ----------------------------------------------------------------


def write_job(tmp_path: Path, data: dict) -> Path:
    import yaml

    job = {
        "name": "t",
        "data": data,
        "studies": {"normal": {"teachers": ["resnet10t"], "students": ["resnet10t"]}},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def test_cli_validate_names_the_missing_file_and_exits_2(tmp_path):
    base = build_mura(tmp_path / "data")
    gone = base / csv_lines(base, "valid_image_paths.csv")[0]
    gone.unlink()
    job = write_job(tmp_path, {"kind": "mura", "root": str(base), "body_parts": PARTS})
    result = CliRunner().invoke(app, ["validate", str(job)])
    assert result.exit_code == 2
    assert f"{gone} does not exist" in result.output
    result = CliRunner().invoke(app, ["validate", str(job), "--set", "data.on_bad_image=skip"])
    assert result.exit_code == 0, result.output


def test_cli_validate_requires_the_root(tmp_path):
    job = write_job(tmp_path, {"kind": "mura"})
    result = CliRunner().invoke(app, ["validate", str(job)])
    assert result.exit_code == 2 and "data.root: Field required" in result.output


@pytest.mark.parametrize("job", ["mura_thesis.yaml", "mura_abnormality.yaml"])
def test_shipped_mura_jobs_validate_on_a_tree(tmp_path, job):
    base = build_mura(tmp_path, parts=list(BODY_PARTS), train_patients=20)
    # the data, not the ImageNet weights (tests/test_weights.py): none are cached here
    result = CliRunner().invoke(
        app,
        ["validate", str(REPO / "jobs" / job), "--set", f"data.root={base}"]
        + ["--set", "pretrained=none"],
    )
    assert result.exit_code == 0, result.output
    assert "data: test holds 2 of the 20 patients of MURA's train list" in result.output
    bare = CliRunner().invoke(app, ["validate", str(REPO / "jobs" / job)])
    assert bare.exit_code == 2 and "data.root: Field required" in bare.output


def test_run_says_which_patients_the_test_split_holds(tmp_path, mura):
    from types import SimpleNamespace

    from rich.console import Console

    from kdray.grid.run import _prepare
    from kdray.spec.load import load_job

    data = {"kind": "mura", "root": str(mura), "body_parts": PARTS, "image_size": 16}
    data["test_fraction"] = 0.25
    job = load_job(write_job(tmp_path, data), ["pretrained=none"])
    console = Console(record=True, width=200)
    for _ in range(2):  # decoded, then read back from the cache
        _prepare(SimpleNamespace(data_dir=tmp_path / "data"), job, console)
        said = console.export_text()
        assert "data: test holds 3 of the 12 patients of MURA's train list" in said
        assert "warning" not in said
