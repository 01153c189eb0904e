"""The `folder` data kind (class folders, split folders, CSV lists) and the image readers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from pydantic import ValidationError
from typer.testing import CliRunner

from kdray.cli import app
from kdray.data import DataError, load_split, open_sources, prepare_data
from kdray.data.files import read_dicom, read_image
from kdray.data.folder import Config

RNG = np.random.default_rng(3)


def write_png(path: Path, mode: str = "L", size: tuple[int, int] = (20, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(RNG.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
    return path


def write_dicom(
    path: Path,
    stored: np.ndarray,
    photometric: str = "MONOCHROME2",
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
    bits: int = 12,
) -> Path:
    """A single-frame DX image of `bits` stored bits (12 by default), as a modality writes it."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        DigitalXRayImageStorageForPresentation,
        ExplicitVRLittleEndian,
        generate_uid,
    )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = stored.astype("<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def class_tree(root: Path, classes=("benign", "malignant", "normal"), per_class: int = 10) -> Path:
    """root/<class>/ with PNG and JPEG files, some in a sub-folder, and a stray text file."""
    for name in classes:
        for i in range(per_class):
            sub = f"patient{i % 3}/" if i % 2 else ""
            if i % 4 == 3:
                file = root / name / f"{sub}img{i}.jpg"
                file.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(RNG.integers(0, 256, (18, 22, 3), dtype=np.uint8)).save(file)
            else:
                write_png(root / name / f"{sub}img{i}.png", "RGB" if i % 3 == 0 else "L")
        (root / name / "notes.txt").write_text("not an image")
    return root


def counts(sources) -> dict[str, int]:
    return {split: len(source) for split, source in sources.items()}


def paths(source) -> list[str]:
    return [str(p) for p in source.paths]


# --- class folders ----------------------------------------------------------------------------


def test_class_folders_are_split_stratified_and_seeded(tmp_path):
    root = class_tree(tmp_path / "data")
    classes, sources = open_sources(Config(root=root))
    assert classes == ["benign", "malignant", "normal"]
    assert counts(sources) == {"train": 24, "valid": 3, "test": 3}
    for source in sources.values():
        assert np.bincount(source.labels).tolist() == [len(source) // 3] * 3
        for path, label in zip(source.paths, source.labels, strict=True):
            assert classes[label] in path.parts
            assert path.suffix in (".png", ".jpg")
        assert source.groups is None
    all_files = sum((paths(s) for s in sources.values()), [])
    assert len(set(all_files)) == 30
    _, again = open_sources(Config(root=root))
    assert paths(again["test"]) == paths(sources["test"])
    _, other = open_sources(Config(root=root, split_seed=1))
    assert paths(other["test"]) != paths(sources["test"])
    _, bigger = open_sources(Config(root=root, split_by={"valid": 0.2, "test": 0.3}))
    assert counts(bigger) == {"train": 15, "valid": 6, "test": 9}


def test_split_folders_are_used_as_given_and_missing_ones_carved(tmp_path):
    root = tmp_path / "data"
    for split, n in (("train", 10), ("val", 3), ("test", 4)):
        class_tree(root / split, classes=("a", "b"), per_class=n)
    classes, sources = open_sources(Config(root=root))
    assert classes == ["a", "b"]
    assert counts(sources) == {"train": 20, "valid": 6, "test": 8}
    assert all("/val/" in p for p in paths(sources["valid"]))
    # without the test folder, test is carved off train (valid stays as given)
    for file in sorted((root / "test").rglob("*"), reverse=True):
        file.unlink() if file.is_file() else file.rmdir()
    (root / "test").rmdir()
    _, carved = open_sources(Config(root=root, split_by={"valid": 0.1, "test": 0.2}))
    assert counts(carved) == {"train": 16, "valid": 6, "test": 4}
    assert all("/train/" in p for p in paths(carved["test"]))


def test_prepare_data_reads_png_jpeg_and_dicom(tmp_path):
    root = class_tree(tmp_path / "data", classes=("a", "b"), per_class=8)
    ramp = np.tile(np.arange(0, 4096, 128, dtype=np.uint16), (24, 1))
    for i in range(4):
        write_dicom(root / "b" / f"scan{i}.dcm", ramp, window=(2048, 4096))
    info = prepare_data(Config(root=root, image_size=16, channels=3), tmp_path / "cache")
    assert sum(info.counts.values()) == 20
    images, labels = load_split(info.path, "train")
    assert images.shape == (info.counts["train"], 16, 16, 3) and set(labels.tolist()) == {0, 1}


def test_empty_class_and_folder_outside_the_classes(tmp_path):
    root = class_tree(tmp_path / "data", classes=("a", "b", "c"))
    for file in (root / "c").rglob("*.*"):
        file.unlink()
    with pytest.raises(DataError) as err:
        open_sources(Config(root=root))
    assert len(err.value.problems) == 3  # class c is empty in every split
    assert "class 'c' has no images in the train split" in err.value.problems[0]
    assert str(root) in err.value.problems[0]
    with pytest.raises(DataError) as err:
        open_sources(Config(root=root, classes=["a", "b"]))
    assert err.value.problems == [
        f"{root / 'c'}: folder 'c' is not one of data.classes ['a', 'b']; "
        "remove it or add it to data.classes"
    ]
    with pytest.raises(DataError, match="no such folder"):
        open_sources(Config(root=tmp_path / "missing"))


def test_config_needs_exactly_one_source():
    with pytest.raises(ValidationError, match="exactly one"):
        Config()
    with pytest.raises(ValidationError, match="exactly one"):
        Config(root="a", csv="b.csv")
    with pytest.raises(ValidationError, match="below 1"):
        Config(root="a", split_by={"valid": 0.5, "test": 0.5})


# --- CSV --------------------------------------------------------------------------------------


def csv_tree(tmp_path: Path, header: str, rows: list[str]) -> Path:
    """images/<n>.png for every row, a CSV beside the images folder with `rows`."""
    folder = tmp_path / "set"
    for row in rows:
        write_png(folder / row.split(",")[0], "L" if len(row) % 2 else "RGB")
    csv_path = folder / "labels.csv"
    csv_path.write_text("\n".join([header, *rows]) + "\n")
    return csv_path


def test_csv_with_split_and_group_columns(tmp_path):
    rows = [
        f"images/{i}.png,{'yes' if i % 2 else 'no'},{('train', 'val', 'test')[i % 3]},p{i // 2}"
        for i in range(18)
    ]
    csv_path = csv_tree(tmp_path, "path,label,split,group", rows)
    classes, sources = open_sources(Config(csv=csv_path))
    assert classes == ["no", "yes"]
    assert counts(sources) == {"train": 6, "valid": 6, "test": 6}
    assert sources["valid"].paths[0] == csv_path.parent / "images/1.png"
    assert sources["valid"].labels[0] == 1 and sources["valid"].groups[0] == "p0"


def test_csv_without_split_is_carved_by_group(tmp_path):
    rows = [f"images/{i}.png,{i % 2},patient{i // 3}" for i in range(60)]
    csv_path = csv_tree(tmp_path, "path,label,group", rows)
    config = Config(csv=csv_path, split_by={"valid": 0.2, "test": 0.2})
    classes, sources = open_sources(config)
    assert classes == ["0", "1"]
    groups = {split: set(source.groups.tolist()) for split, source in sources.items()}
    assert {split: len(g) for split, g in groups.items()} == {"train": 12, "valid": 4, "test": 4}
    assert not groups["train"] & groups["test"] and not groups["valid"] & groups["test"]
    assert not groups["train"] & groups["valid"]
    assert paths(open_sources(config)[1]["test"]) == paths(sources["test"])


def test_csv_of_paths_and_labels_is_carved_by_file_with_natural_class_order(tmp_path):
    rows = [f"img/{i}.png,{(2, 10, 3)[i % 3]}" for i in range(30)]
    classes, sources = open_sources(Config(csv=csv_tree(tmp_path, "path,label", rows)))
    assert classes == ["2", "3", "10"]
    assert counts(sources) == {"train": 24, "valid": 3, "test": 3}
    assert np.bincount(sources["test"].labels).tolist() == [1, 1, 1]
    assert sources["train"].groups is None


def test_csv_problems_are_all_reported_with_their_line(tmp_path):
    rows = [f"images/{i}.png,{'ab'[i % 2]},train" for i in range(9)]
    csv_path = csv_tree(tmp_path, "path,label,split", rows)
    lines = csv_path.read_text().splitlines()[:-1]  # images/8.png: made, not listed
    lines += [
        "images/missing.png,a,test",  # line 10: no such file
        "images/8.png,c,valid",  # line 11: label outside the classes
        "images/1.png,a",  # line 12: a field short
        "images/2.png,b,holdout",  # line 13: unknown split
        "images/3.png,a,train",  # line 14: image 3 again, with another label
    ]
    csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        open_sources(Config(csv=csv_path, classes=["a", "b"]))
    problems = err.value.problems
    assert len(problems) == 5
    assert problems[0].startswith(f"{csv_path} line 10: ")
    assert f"{csv_path.parent / 'images/missing.png'} does not exist" in problems[0]
    assert problems[1].startswith(f"{csv_path} line 12: 2 fields, the header has 3")
    assert problems[2].startswith(f"{csv_path} line 13: split 'holdout'")
    assert problems[3].startswith(
        f"{csv_path} line 14: {csv_path.parent / 'images/3.png'} is listed again, with label 'a'"
    )
    assert problems[4].startswith(f"{csv_path} line 11: label 'c' is not one of data.classes")


def test_csv_missing_file_skipped_and_bad_header(tmp_path):
    rows = [f"images/{i}.png,{'ab'[i % 2]}" for i in range(20)] + ["images/gone.png,a"]
    csv_path = csv_tree(tmp_path, "path,label", rows)
    (csv_path.parent / "images/gone.png").unlink()
    _, sources = open_sources(Config(csv=csv_path, on_bad_image="skip"))
    assert sum(counts(sources).values()) == 20
    assert len(sources["train"].dropped) == 1 and "gone.png" in sources["train"].dropped[0]
    bad = tmp_path / "bad.csv"
    bad.write_text("file,class\nimages/0.png,a\n")
    with pytest.raises(DataError, match=r"bad.csv line 1: header \['file', 'class'\] lacks"):
        open_sources(Config(csv=bad))
    with pytest.raises(DataError, match="no such file"):
        open_sources(Config(csv=tmp_path / "none.csv"))


def test_cli_validate_reports_the_empty_class_folder(tmp_path):
    root = class_tree(tmp_path / "data", classes=("a", "b"))
    (root / "c").mkdir()
    job = {
        "name": "t",
        "data": {"kind": "folder", "root": str(root)},
        "studies": {"normal": {"teachers": ["resnet10t"], "students": ["resnet10t"]}},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "job.yaml")])
    assert result.exit_code == 2
    assert f"data: {root}: class 'c' has no images in the train split" in result.output


# --- readers ----------------------------------------------------------------------------------


def test_dicom_rescale_window_and_monochrome1(tmp_path):
    stored = np.array([[0, 750, 1000, 1250, 2000, 4095]], dtype=np.uint16)
    # modality values 2*s - 1000: -1000, 500, 1000, 1500, 3000, 7190; window 1000 ± 500
    windowed = read_dicom(
        write_dicom(tmp_path / "w.dcm", stored, rescale=(2, -1000), window=(1000, 1000))
    )
    assert windowed.dtype == np.uint8 and windowed.shape == (1, 6)
    assert windowed[0, [0, 1]].tolist() == [0, 0]
    assert windowed[0, [4, 5]].tolist() == [255, 255]
    assert 120 < windowed[0, 2] < 136 and windowed[0, 3] > 250
    inverted = read_dicom(
        write_dicom(
            tmp_path / "m1.dcm", stored, "MONOCHROME1", rescale=(2, -1000), window=(1000, 1000)
        )
    )
    assert (inverted == 255 - windowed).all()
    plain = read_dicom(write_dicom(tmp_path / "p.dcm", stored))  # no window: own range
    assert plain[0].tolist() == [0, 47, 62, 78, 125, 255]
    assert read_image(tmp_path / "p.dcm").tolist() == plain.tolist()


def test_compressed_dicom_is_decoded(tmp_path):
    import pydicom
    from pydicom.uid import RLELossless

    stored = RNG.integers(0, 4096, (32, 24)).astype(np.uint16)
    path = write_dicom(tmp_path / "raw.dcm", stored, window=(2000, 3000))
    ds = pydicom.dcmread(path)
    ds.compress(RLELossless)  # pydicom's own encoder; JPEG needs pylibjpeg or gdcm
    ds.save_as(tmp_path / "rle.dcm")
    assert pydicom.dcmread(tmp_path / "rle.dcm").file_meta.TransferSyntaxUID == RLELossless
    assert (read_image(tmp_path / "rle.dcm") == read_image(path)).all()


def test_pil_modes_become_gray_or_rgb(tmp_path):
    gray16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    Image.fromarray(gray16).save(tmp_path / "g16.png")
    out = read_image(tmp_path / "g16.png")
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    Image.new("RGBA", (5, 4), (10, 20, 30, 0)).save(tmp_path / "rgba.png")
    assert read_image(tmp_path / "rgba.png").shape == (4, 5, 3)
    Image.new("P", (5, 4), 3).save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png").shape == (4, 5, 3)
    Image.new("LA", (5, 4), (100, 50)).save(tmp_path / "la.png")
    assert read_image(tmp_path / "la.png").tolist() == [[100] * 5] * 4
    Image.new("1", (5, 4), 1).save(tmp_path / "bw.png")
    assert read_image(tmp_path / "bw.png").max() == 255
    write_png(tmp_path / "t.png", size=(40, 40))
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError):
        read_image(tmp_path / "t.png")


@pytest.mark.parametrize(
    "compressed",
    ["MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm"],
)
def test_compressed_dicom_decodes_to_the_same_image_as_the_uncompressed_file(compressed):
    """Real compressed DICOM files (pydicom's bundled test files: JPEG 2000 lossless, JPEG-LS
    lossless, RLE) of one MR slice decode exactly as its uncompressed original."""
    from pydicom.data import get_testdata_file

    reference = read_dicom(get_testdata_file("MR_small.dcm"))
    assert reference.std() > 0
    assert np.array_equal(read_dicom(get_testdata_file(compressed)), reference)


@pytest.mark.parametrize("fractions", [{"valid": 0.1, "test": 0.1}, {"valid": 0.2, "test": 0.3}])
def test_groups_are_carved_to_fractions_of_the_images_not_of_the_groups(fractions):
    from kdray.data.files import carve_groups

    rng = np.random.default_rng(0)  # 264 patients, 1 to 20 images each (chest X-ray follow-ups)
    sizes = {f"p{i}": int(n) for i, n in enumerate(np.minimum(rng.geometric(0.27, 264), 20))}
    total = sum(sizes.values())
    for seed in range(3):
        carved = carve_groups(sizes, fractions, seed)
        assert sorted(k for keys in carved.values() for k in keys) == sorted(sizes)  # each once
        for split, fraction in fractions.items():  # within half the largest group's images
            share = sum(sizes[k] for k in carved[split]) / total
            assert abs(share - fraction) <= max(sizes.values()) / 2 / total, (seed, split, share)


def test_a_group_split_far_from_its_fractions_is_warned_of(tmp_path):
    from kdray.data import data_warnings

    rows = [f"images/{i}.png,{i % 2},p{i // 5}" for i in range(20)]  # 4 patients, 5 images
    csv_path = csv_tree(tmp_path, "path,label,group", rows)
    classes, sources = open_sources(Config(csv=csv_path, split_by={"valid": 0.1, "test": 0.1}))
    assert [len(sources[s]) for s in ("train", "valid", "test")] == [10, 5, 5]
    (line,) = data_warnings(classes, sources)
    assert line.startswith(f"{csv_path}: whole groups give valid 25.0% (split_by 10%), test "
                           "25.0% (split_by 10%) of the images")  # fmt: skip
