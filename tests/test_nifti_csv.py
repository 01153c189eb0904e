"""A CSV of NIfTI volumes with labels (`kind: nifti_csv`), files made in the test: read in RAS+,
resampled, normalised and cached as one class per volume; splits carved by group; each bad row
or file one line naming it; the job and `kdray validate` accept it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kdray.data import DataError
from kdray.data.nifti_csv import Config
from kdray.data.volume_cache import load_volumes
from kdray.data.volumes import open_volume_sources, prepare_volumes
from tests.test_volume_data import save_nifti

SHAPE = (12, 10, 6)


def volume(index: int, label: int) -> np.ndarray:
    """A CT-like block whose bright cube sits in a corner that depends on the label."""
    rng = np.random.default_rng(index)
    image = rng.normal(0, 20, SHAPE)
    corner = slice(0, 5) if label == 0 else slice(6, 11)
    image[corner, 2:8, 1:5] += 300
    return image.astype(np.int16)


def nifti_csv(folder: Path, rows: int = 12, header: str = "path,label,group", **edits) -> Path:
    """`rows` volumes under `folder/volumes/`, labels benign/malignant alternating, two volumes
    per patient; `edits` replaces a row's cells (row index -> line text)."""
    lines = [header]
    for i in range(rows):
        label = i % 2
        save_nifti(folder / "volumes" / f"v{i:02d}.nii.gz", volume(i, label))
        name = ("benign", "malignant")[label]
        lines.append(f"volumes/v{i:02d}.nii.gz,{name},patient{i // 2}")
    for index, text in edits.items():
        lines[1 + int(index.removeprefix("row"))] = text
    path = folder / "volumes.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def config(csv: Path, **changes) -> Config:
    return Config(**{"csv": csv, "split_by": {"valid": 0.25, "test": 0.25}, **changes})


def test_a_csv_of_nifti_volumes_caches_one_class_per_volume(tmp_path):
    csv = nifti_csv(tmp_path)
    cfg = config(csv, spacing=(1.6, 1.6, 2.5), size=(8, 8, 8))
    assert cfg.patch == (8, 8, 8)  # the classifier sees the resized volume whole
    info = prepare_volumes(cfg, tmp_path / "cache")
    assert info.task == "single_label" and info.classes == ["benign", "malignant"]
    assert sum(info.counts.values()) == 12 and all(info.counts.values())
    for split in ("train", "valid", "test"):
        volumes = load_volumes(info.path, split)
        for i in range(len(volumes)):
            v = volumes[i]
            assert v.image.shape == (8, 8, 8) and v.mask is None
            name = Path(volumes.entries[i]["source"].split(" (")[0]).name
            assert v.label == int(name[1:3]) % 2  # each volume keeps its own row's label
            image = v.image.astype(np.float32)
            assert abs(image.mean()) < 1e-2 and abs(image.std() - 1) < 2e-2
    assert prepare_volumes(cfg, tmp_path / "cache").path == info.path  # decoded once


def test_splits_are_carved_by_group_and_a_split_column_is_kept(tmp_path):
    csv = nifti_csv(tmp_path, rows=16)
    _, sources = open_volume_sources(config(csv))
    patients = {s: {i.group for i in src.items} for s, src in sources.items()}
    assert not patients["train"] & patients["valid"] and not patients["train"] & patients["test"]
    assert not patients["valid"] & patients["test"]
    lines = csv.read_text().splitlines()
    given = ["path,label,split"] + [
        f"{line.rsplit(',', 1)[0]},{'test' if k < 4 else 'val' if k < 8 else 'train'}"
        for k, line in enumerate(lines[1:])
    ]
    csv.write_text("\n".join(given) + "\n")
    _, sources = open_volume_sources(config(csv))
    assert [i.file.name for i in sources["test"].items] == [f"v{k:02d}.nii.gz" for k in range(4)]
    assert len(sources["valid"]) == 4 and len(sources["train"]) == 8


def test_labels_may_be_class_indices_of_the_declared_classes(tmp_path):
    csv = nifti_csv(tmp_path, header="path,label")
    rows = csv.read_text().replace(",benign,", ",0,").replace(",malignant,", ",1,").splitlines()
    csv.write_text("\n".join([rows[0]] + [row.rsplit(",", 1)[0] for row in rows[1:]]) + "\n")
    classes, sources = open_volume_sources(config(csv, classes=["benign", "malignant"]))
    assert classes == ["benign", "malignant"]
    labels = {
        i.file.name: y
        for src in sources.values()
        for i, y in zip(src.items, src.labels, strict=True)
    }
    assert labels == {f"v{k:02d}.nii.gz": k % 2 for k in range(12)}


def bad_row(folder: Path, problem: str) -> tuple[Path, str]:
    """A good CSV with one bad row or file; returns the CSV and the file the line must name."""
    csv = nifti_csv(folder)
    target = folder / "volumes" / "v03.nii.gz"
    if problem == "missing":
        target.unlink()
    elif problem == "unreadable":
        target.write_bytes(b"not a nifti file at all")
    elif problem == "4d":
        image = volume(3, 1)
        save_nifti(target, np.stack([image, image], axis=-1))
    elif problem == "label":
        csv.write_text(csv.read_text().replace("v03.nii.gz,malignant", "v03.nii.gz,benign_cyst"))
    elif problem == "folder":
        target.unlink()
        target.mkdir()
    elif problem == "all 4d":
        for i in range(3, 12):
            image = volume(i, i % 2)
            save_nifti(folder / "volumes" / f"v{i:02d}.nii.gz", np.stack([image] * 2, axis=-1))
    return csv, str(target)


@pytest.mark.parametrize(
    ("problem", "says"),
    [
        ("missing", "does not exist; fix the path or drop the row"),
        ("unreadable", "unreadable NIfTI"),
        ("4d", "a 4D volume of shape [12, 10, 6, 2], a 3D volume is expected"),
        ("label", "label 'benign_cyst' is not one of data.classes ['benign', 'malignant']"),
        ("folder", "v03.nii.gz is a folder, not a NIfTI file; fix the path or drop the row"),
        ("all 4d", "a 4D volume of shape [12, 10, 6, 2], a 3D volume is expected (multi-channel "
         "volumes are not supported yet); and 8 more 4D files"),
    ],
)  # fmt: skip
def test_each_bad_row_or_file_is_one_line_naming_the_row_and_file(tmp_path, problem, says):
    csv, file = bad_row(tmp_path, problem)
    cfg = config(csv, classes=["benign", "malignant"])
    with pytest.raises(DataError) as caught:
        prepare_volumes(cfg, tmp_path / "cache")
    assert len(caught.value.problems) == 1, caught.value.problems
    line = caught.value.problems[0]
    assert line.startswith(f"{csv} line 5: ") and says in line and "\n" not in line, line
    if problem != "label":
        assert file in line
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_a_volume_with_nan_or_infinite_voxels_is_one_line_naming_the_file(tmp_path):
    csv = nifti_csv(tmp_path)
    image = volume(3, 1).astype(np.float32)
    image[0, 0, :3] = [np.nan, np.inf, -np.inf]
    target = save_nifti(tmp_path / "volumes" / "v03.nii.gz", image)
    with pytest.raises(DataError) as caught:
        prepare_volumes(config(csv), tmp_path / "cache")
    assert caught.value.problems == [
        f"{target}: 3 voxels are NaN or infinite; fix or drop the volume"
    ]


def test_a_spacing_resampling_past_the_size_limits_is_one_line_naming_it(tmp_path):
    csv = nifti_csv(tmp_path)
    with pytest.raises(DataError) as caught:
        prepare_volumes(config(csv, spacing=(1e-3, 1e-3, 1e-3)), tmp_path / "cache")
    first = tmp_path / "volumes" / "v00.nii.gz"
    assert caught.value.problems == [
        f"data.spacing [0.001, 0.001, 0.001]: resamples {first} ({csv} line 2) and 11 more "
        "volumes to 9.6e+03x8e+03x1.5e+04 voxels; choose a spacing that keeps each side 1 to "
        "1024 voxels"
    ]


def test_a_csv_without_the_label_column_is_named(tmp_path):
    csv = nifti_csv(tmp_path, rows=4)
    csv.write_text(csv.read_text().replace("path,label,group", "path,diagnosis,group"))
    with pytest.raises(DataError) as caught:
        open_volume_sources(config(csv))
    assert caught.value.problems == [
        f"{csv} line 1: header ['path', 'diagnosis', 'group'] lacks ['label']; expected columns "
        "path,label[,split,group]"
    ]


def test_a_class_without_a_volume_in_a_split_is_one_line_naming_class_and_split(tmp_path):
    csv = nifti_csv(tmp_path, header="path,label,split")
    rows = csv.read_text().splitlines()  # benign rows even, malignant odd; test: benign alone
    splits = {0: "test", 2: "test", 4: "valid", 5: "valid"}
    lines = [rows[0]] + [
        f"{row.rsplit(',', 1)[0]},{splits.get(k, 'train')}" for k, row in enumerate(rows[1:])
    ]
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as caught:
        open_volume_sources(config(csv))
    assert caught.value.problems == [
        f"{csv}: class 'malignant' has no volumes in the test split (add rows, or fix "
        "data.classes / data.split_by)"
    ]
    moved = csv.read_text().replace("v03.nii.gz,malignant,train", "v03.nii.gz,malignant,test")
    csv.write_text(moved)
    assert [len(s) for s in open_volume_sources(config(csv))[1].values()] == [7, 2, 3]


# --- multi-label volumes --------------------------------------------------------------------

LABELS = ("mass", "calcification")


def findings(index: int) -> tuple[int, int]:
    """Each finding present in about half the volumes, independently of the other."""
    return index % 2, (index // 2) % 2


def multi_label_csv(folder: Path, rows: int = 16) -> Path:
    """Volumes with a bright cube in one corner per finding present; row 1's second cell is
    uncertain (-1) and row 2's is empty (absent)."""
    lines = ["path,mass,calcification,group"]
    for i in range(rows):
        mass, calcification = findings(i)
        rng = np.random.default_rng(i)
        image = rng.normal(0, 20, SHAPE)
        if mass:
            image[0:5, 0:5, 0:3] += 300
        if calcification:
            image[7:12, 5:10, 3:6] += 300
        save_nifti(folder / "volumes" / f"m{i:02d}.nii.gz", image.astype(np.int16))
        cells = {1: "-1", 2: ""}.get(i, str(calcification))
        lines.append(f"volumes/m{i:02d}.nii.gz,{mass},{cells},patient{i // 2}")
    path = folder / "findings.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_multi_label_csv_caches_a_row_of_labels_per_volume(tmp_path):
    from kdray.train.patches import VolumeBatches

    cfg = config(multi_label_csv(tmp_path), label_columns=list(LABELS))
    info = prepare_volumes(cfg, tmp_path / "cache")
    assert info.task == "multi_label" and info.classes == list(LABELS)
    rows = {}
    for split in ("train", "valid", "test"):
        volumes = load_volumes(info.path, split)
        assert volumes.labels.shape == (len(volumes), 2)
        for i in range(len(volumes)):
            name = Path(volumes.entries[i]["source"].split(" (")[0]).name
            rows[int(name[1:3])] = volumes[i].label.tolist()
    expected = {i: list(findings(i)) for i in range(16)} | {1: [1, -1], 2: [0, 0]}
    assert rows == expected  # uncertain: unknown (-1, `ignore`); empty: absent
    volumes = load_volumes(info.path, "train")
    x, y, indices = next(iter(VolumeBatches(volumes, (12, 10, 6), 0.5, True, 2, 0).epoch(0)))
    assert x.shape == (2, 1, 12, 10, 6) and y.dtype == torch.int64
    assert y.tolist() == volumes.labels[indices.numpy()].tolist()


def test_a_bad_multi_label_cell_is_one_line_naming_the_row(tmp_path):
    csv = multi_label_csv(tmp_path, rows=6)
    csv.write_text(csv.read_text().replace("m03.nii.gz,1,1,", "m03.nii.gz,1,maybe,"))
    with pytest.raises(DataError) as caught:
        open_volume_sources(config(csv, label_columns=list(LABELS)))
    assert caught.value.problems == [
        f"{csv} line 5: column 'calcification' holds 'maybe'; a label cell is 1, 0, empty or -1 "
        "(uncertain)"
    ]


def test_multi_label_volumes_train_a_teacher_and_its_kd_student_without_ray(tmp_path):
    from kdray.data import prepare_data
    from kdray.spec.load import parse_job
    from kdray.spec.plan import make_plan
    from tests.test_worker import run_local

    csv = multi_label_csv(tmp_path, rows=16)
    teacher, student = "resnet3d-d10-w0.25", "densenet3d-f4-g4-b1.1"
    job = parse_job({
        "name": "ml3d", "storage": str(tmp_path / "runs"), "seeds": [0],
        "data": {"kind": "nifti_csv", "csv": str(csv), "label_columns": list(LABELS),
                 "patch": [12, 12, 8], "split_by": {"valid": 0.25, "test": 0.25}},
        "train": {"epochs": 1, "batch_size": 4, "lr": 0.003, "optimizer": "adam"},
        "studies": {"s": {"teachers": [teacher], "students": [student],
                          "method": {"name": "kd"}}},
    })  # fmt: skip
    data = prepare_data(job.data, tmp_path / "data")
    assert (data.rank, data.task, data.num_classes) == (3, "multi_label", 2)
    plan = make_plan(job)
    (teacher_run,) = plan.stage("teacher")
    teacher_dir, teacher_summary = run_local(tmp_path, job, teacher_run, data)
    (kd_run,) = [s for s in plan.stage("student") if s.method == "kd"]
    _, summary = run_local(tmp_path, job, kd_run, data, teacher_dirs=[teacher_dir])
    for result in (teacher_summary, summary):
        assert result["status"] == "finished" and 0.0 <= result["test_auroc"] <= 1.0
    assert summary["params"] < teacher_summary["params"]


def test_validate_accepts_a_nifti_csv_job_and_refuses_a_4d_volume_in_one_line(tmp_path):
    from tests.test_bad_inputs import cli, refused, write_job

    csv = nifti_csv(tmp_path)
    job = write_job(tmp_path, {
        "name": "nc", "storage": str(tmp_path / "runs"),
        "data": {"kind": "nifti_csv", "csv": str(csv), "size": [12, 12, 8],
                 "split_by": {"valid": 0.25, "test": 0.25}},
        "train": {"batch_size": 4},
        "studies": {"s": {"teachers": ["resnet3d-d10-w0.25"],
                          "students": ["densenet3d-f4-g4-b1.1"], "method": {"name": "kd"}}},
    })  # fmt: skip
    accepted = cli("validate", job)
    assert accepted.exit_code == 0, accepted.output
    image = volume(3, 1)
    save_nifti(tmp_path / "volumes" / "v03.nii.gz", np.stack([image, image], axis=-1))
    errors = refused("validate", job, says=("line 5: ", "a 4D volume of shape [12, 10, 6, 2]"))
    assert len(errors.splitlines()) == 1, errors


def test_validate_reads_a_multi_label_nifti_csv_as_multi_label(tmp_path):
    from tests.test_bad_inputs import cli, write_job

    csv = multi_label_csv(tmp_path)
    job = write_job(tmp_path, {
        "name": "ml", "storage": str(tmp_path / "runs"),
        "data": {"kind": "nifti_csv", "csv": str(csv), "label_columns": list(LABELS),
                 "patch": [12, 12, 8], "split_by": {"valid": 0.25, "test": 0.25}},
        "train": {"batch_size": 4},
        "studies": {"s": {"teachers": ["resnet3d-d10-w0.25"],
                          "students": ["densenet3d-f4-g4-b1.1"], "method": {"name": "kd"}}},
    })  # fmt: skip
    result = cli("validate", job)
    assert result.exit_code == 0, result.output
    assert "data: nifti_csv, multi-label, 2 labels" in " ".join(result.output.split())
