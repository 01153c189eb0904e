"""A CSV of NIfTI volumes with labels (`kind: nifti_csv`), files made in the test: read in RAS+,
resampled, normalised and cached as one class per volume; splits carved by group; each bad row
or file one line naming it; the job and `kdray validate` accept it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

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
    return csv, str(target)


@pytest.mark.parametrize(
    ("problem", "says"),
    [
        ("missing", "does not exist; fix the path or drop the row"),
        ("unreadable", "unreadable NIfTI"),
        ("4d", "a 4D volume of shape [12, 10, 6, 2], a 3D volume is expected"),
        ("label", "label 'benign_cyst' is not one of data.classes ['benign', 'malignant']"),
    ],
)
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


def test_a_csv_without_the_label_column_is_named(tmp_path):
    csv = nifti_csv(tmp_path, rows=4)
    csv.write_text(csv.read_text().replace("path,label,group", "path,diagnosis,group"))
    with pytest.raises(DataError) as caught:
        open_volume_sources(config(csv))
    assert caught.value.problems == [
        f"{csv} line 1: header ['path', 'diagnosis', 'group'] lacks ['label']; expected columns "
        "path,label[,split,group]"
    ]
