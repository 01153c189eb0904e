"""Volume data: a Decathlon folder and its nnU-Net twin made in the test (anisotropic spacing,
LPS orientation, two foreground classes), resampled, windowed, normalised and cached
memory-mapped; each bad NIfTI input one line naming the file; the synthetic phantoms; a
MedMNIST 3D archive in its real format."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from kdray.data import DataError
from kdray.data.decathlon import Config as DecathlonConfig
from kdray.data.medmnist3d import Config as MedMNIST3DConfig
from kdray.data.phantoms import Config as PhantomConfig
from kdray.data.phantoms import generate_split
from kdray.data.volume_cache import load_volumes
from kdray.data.volumes import open_volume_sources, prepare_volumes

SPACING = (0.8, 0.8, 2.5)  # mm per array axis, as a thick-slice CT
SHAPE = (20, 24, 8)
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # DICOM's orientation: x and y flipped against RAS


def save_nifti(path: Path, data: np.ndarray, spacing=SPACING, flip=LPS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = flip @ np.diag([*spacing, 1.0])
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def case_arrays(index: int) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like image in HU and its label: an organ (1) with a lesion (2) in it."""
    label = np.zeros(SHAPE, np.uint8)
    label[4 + index : 14 + index, 6:18, 2:6] = 1
    label[7 + index : 10 + index, 9:12, 3:5] = 2
    rng = np.random.default_rng(index)
    image = (np.array([-100, 60, 120])[label] + rng.normal(0, 5, SHAPE)).astype(np.int16)
    return image, label


def decathlon_folder(root: Path, cases: int = 6, nnunet: bool = False) -> Path:
    """MSD's layout (dataset.json lists the pairs, labels index -> name) or nnU-Net v2's
    (`<case>_0000.nii.gz` images, labels name -> index)."""
    names = {"0": "background", "1": "organ", "2": "lesion"}
    training = []
    for i in range(cases):
        image, label = case_arrays(i)
        stem = f"case_{i:03d}"
        image_name = f"{stem}_0000.nii.gz" if nnunet else f"{stem}.nii.gz"
        save_nifti(root / "imagesTr" / image_name, image)
        save_nifti(root / "labelsTr" / f"{stem}.nii.gz", label)
        training.append({"image": f"./imagesTr/{image_name}", "label": f"./labelsTr/{stem}.nii.gz"})
    if nnunet:
        meta = {"channel_names": {"0": "CT"}, "labels": {v: int(k) for k, v in names.items()},
                "numTraining": cases, "file_ending": ".nii.gz"}  # fmt: skip
    else:
        meta = {"modality": {"0": "CT"}, "labels": names, "numTraining": cases,
                "training": training, "test": []}  # fmt: skip
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def config(root: Path, **changes) -> DecathlonConfig:
    fields = {"root": root, "split_by": {"valid": 0.2, "test": 0.2}}
    return DecathlonConfig(**{**fields, **changes})


@pytest.mark.parametrize("nnunet", [False, True], ids=["msd", "nnunet"])
def test_a_decathlon_folder_is_resampled_windowed_normalised_and_cached(tmp_path, nnunet):
    root = decathlon_folder(tmp_path / "Task01_Organ", nnunet=nnunet)
    cfg = config(root, spacing=(1.6, 1.6, 2.5), window=(40, 400))
    info = prepare_volumes(cfg, tmp_path / "cache")
    assert info.classes == ["background", "organ", "lesion"]
    assert info.task == "segmentation"
    assert sum(info.counts.values()) == 6 and all(info.counts.values())
    volumes = load_volumes(info.path, "train")
    volume = volumes[0]
    assert isinstance(volume.image, np.memmap) and volume.image.dtype == np.float16
    assert volume.spacing == (1.6, 1.6, 2.5)
    assert volume.image.shape == (11, 13, 8)  # voxel centres kept: (n - 1) * 0.8 / 1.6 + 1, up
    assert volume.mask.shape == volume.image.shape
    assert set(np.unique(volume.mask)) == {0, 1, 2}  # nearest neighbour: no blended classes
    image = volume.image.astype(np.float32)
    assert abs(image.mean()) < 1e-2 and abs(image.std() - 1) < 1e-2  # per-volume normalisation
    organ, lesion = image[volume.mask == 1].mean(), image[volume.mask == 2].mean()
    assert lesion > organ > image[volume.mask == 0].mean()  # HU order kept through the window
    assert prepare_volumes(cfg, tmp_path / "cache").path == info.path  # decoded once


def test_volumes_are_reoriented_to_ras(tmp_path):
    """Saved LPS (x and y reversed), read back RAS+: the organ moves to the mirrored voxels."""
    root = decathlon_folder(tmp_path / "Task01_Organ", cases=3)
    cfg = config(root, split_by={"valid": 0.34, "test": 0.34})
    _, sources = open_volume_sources(cfg)
    source = next(s for s in sources.values() if s.cases[0].name == "case_000")
    mask = source.volume(0).mask
    _, label = case_arrays(0)
    assert np.array_equal(mask, label[::-1, ::-1, :])


def bad_folder(tmp_path: Path, problem: str) -> tuple[Path, str]:
    """A good folder with one bad case; returns it and the file the error must name."""
    root = decathlon_folder(tmp_path / "Task01_Organ", cases=5)
    image, label = case_arrays(2)
    labels = root / "labelsTr" / "case_002.nii.gz"
    images = root / "imagesTr" / "case_002.nii.gz"
    if problem == "shape":
        save_nifti(labels, label[:, :, :7])
    elif problem == "spacing":
        save_nifti(labels, label, spacing=(0.8, 0.8, 3.0))
    elif problem == "orientation":
        save_nifti(labels, label, flip=np.eye(4))
    elif problem == "4d":
        save_nifti(images, np.stack([image, image], axis=-1))
        return root, str(images)
    elif problem == "values":
        save_nifti(labels, np.where(label == 2, 5, label).astype(np.uint8))
    elif problem == "missing label":
        labels.unlink()
    elif problem == "unreadable":
        images.write_bytes(b"not a nifti file at all")
        return root, str(images)
    elif problem == "truncated":
        images.write_bytes(images.read_bytes()[:200])
        return root, str(images)
    elif problem == "nan":
        image = np.full(SHAPE, np.nan, np.float32)
        image[0, 0, :4] = [1, 2, np.inf, -np.inf]
        save_nifti(images, image)
        return root, str(images)
    elif problem == "zero spacing":
        img = nib.Nifti1Image(image, None)
        img.header["pixdim"][1:4] = [0, 0.8, 2.5]
        img.header.set_qform(None, code=0)
        img.header.set_sform(None, code=0)
        nib.save(img, str(images))
        return root, str(images)
    return root, str(labels)


@pytest.mark.parametrize(
    ("problem", "says"),
    [
        ("shape", "has shape [20, 24, 7], the image [20, 24, 8]"),
        ("spacing", "has spacing 0.8x0.8x3 mm, the image 0.8x0.8x2.5 mm"),
        ("orientation", "is oriented RAS, the image LPS"),
        ("4d", "a 4D volume of shape [20, 24, 8, 2], a 3D volume is expected (multi-channel "
         "volumes are not supported yet)"),
        ("values", "label values [5] are outside the declared classes 0..2"),
        ("missing label", "label file missing for case_002.nii.gz"),
        ("unreadable", "unreadable NIfTI"),
        ("truncated", "unreadable NIfTI"),
        ("nan", ": 3838 voxels are NaN or infinite; fix or drop the volume"),
        ("zero spacing", ": the header's voxel size (pixdim) is 0 mm, so its spacing is unknown; "
         "fix the header"),
    ],
)  # fmt: skip
def test_each_bad_volume_input_is_one_line_naming_the_file(tmp_path, capfd, problem, says):
    root, file = bad_folder(tmp_path, problem)
    with pytest.raises(DataError) as caught:
        prepare_volumes(config(root), tmp_path / "cache")
    assert len(caught.value.problems) == 1, caught.value.problems
    line = caught.value.problems[0]
    assert line.startswith(file) and says in line, line
    assert "\n" not in line
    assert "pixdim" not in capfd.readouterr().err  # nibabel's own warning kept off the terminal
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def bad_dataset_json(root: Path, problem: str) -> Path:
    """A good folder whose dataset.json (or every image) is wrong in one way."""
    nnunet = problem in ("file_ending", "file_ending mha", "label value")
    decathlon_folder(root, cases=5, nnunet=nnunet)
    meta = json.loads((root / "dataset.json").read_text())
    if problem == "entry types":
        meta["training"][0] = {"image": 1, "label": None}
    elif problem == "no training":
        del meta["training"]
    elif problem == "file_ending":
        meta["file_ending"] = ".nii"
    elif problem == "file_ending mha":
        meta["file_ending"] = ".mha"
    elif problem == "label value":
        meta["labels"]["lesion"] = "two"
    elif problem == "all 4d":
        for i in range(5):
            image, _ = case_arrays(i)
            save_nifti(root / "imagesTr" / f"case_{i:03d}.nii.gz", np.stack([image] * 2, -1))
    elif problem == "modalities":
        meta["modality"] = {"0": "T1", "1": "T2"}
        for i in range(5):
            image, _ = case_arrays(i)
            save_nifti(root / "imagesTr" / f"case_{i:03d}.nii.gz", np.stack([image] * 2, -1))
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.mark.parametrize(
    ("problem", "says"),
    [
        ("entry types", "dataset.json: `training` entry 0 {\"image\": 1, \"label\": null} needs "
         "image and label paths (strings relative to the root); fix the entry"),
        ("no training", "dataset.json: no `training` list (the Decathlon's layout), and imagesTr "
         "holds no images named <case>_0000.nii.gz (nnU-Net's); add `training` or name the "
         "images <case>_0000.nii.gz"),
        ("file_ending", "dataset.json: file_ending is '.nii' but imagesTr holds ['.nii.gz'] files; "
         "set file_ending to the files' ending"),
        ("file_ending mha", "dataset.json: file_ending is '.mha', which kdray does not read (it "
         "reads .nii.gz and .nii); imagesTr holds ['.nii.gz'] files"),
        ("label value", "dataset.json: `labels` value 'two' of 'lesion' is not a whole number"),
        ("all 4d", "imagesTr/case_000.nii.gz: a 4D volume of shape [20, 24, 8, 2], a 3D volume "
         "is expected (multi-channel volumes are not supported yet); and 4 more 4D files"),
        ("modalities", "dataset.json: 2 modalities ['T1', 'T2']; multi-channel volumes are not "
         "supported yet"),
    ],
)  # fmt: skip
def test_each_bad_dataset_json_or_layout_is_one_line_naming_it(tmp_path, problem, says):
    root = bad_dataset_json(tmp_path / "Task01_Organ", problem)
    with pytest.raises(DataError) as caught:
        open_volume_sources(config(root))
    assert caught.value.problems == [f"{root}/{says}"] or (
        len(caught.value.problems) == 1 and caught.value.problems[0].startswith(f"{root}/{says}")
    ), caught.value.problems


@pytest.mark.parametrize(
    ("spacing", "says"),
    [
        ((1e-3, 1e-3, 1e-3), "to 1.6e+04x1.92e+04x2e+04 voxels"),
        ((1000, 1000, 1000), "to 0.016x0.0192x0.02 voxels"),
    ],
)
def test_a_spacing_resampling_beyond_the_size_limits_is_one_line_naming_it(tmp_path, spacing, says):
    root = decathlon_folder(tmp_path / "Task01_Organ", cases=5)
    with pytest.raises(DataError) as caught:
        open_volume_sources(config(root, spacing=spacing))
    first = root / "imagesTr" / "case_000.nii.gz"
    assert caught.value.problems == [
        f"data.spacing {list(map(float, spacing))}: resamples {first} and 4 more volumes {says}; "
        "choose a spacing that keeps each side 1 to 1024 voxels"
    ]


def test_a_single_slice_stays_one_voxel_thick_under_a_coarser_spacing(tmp_path):
    root = decathlon_folder(tmp_path / "Task01_Organ", cases=5)
    for i in range(5):
        image, label = case_arrays(i)
        save_nifti(root / "imagesTr" / f"case_{i:03d}.nii.gz", image[:, :, 3:4].copy())
        save_nifti(root / "labelsTr" / f"case_{i:03d}.nii.gz", label[:, :, 3:4].copy())
    _, sources = open_volume_sources(config(root, spacing=(1.6, 1.6, 5.0)))
    assert sources["train"].volume(0).image.shape == (11, 13, 1)


def test_a_spacing_resampling_phantoms_or_medmnist3d_past_the_limits_is_one_line(tmp_path):
    with pytest.raises(DataError) as caught:
        open_volume_sources(PhantomConfig(spacing=(1e-3, 1e-3, 1e-3)))
    assert caught.value.problems == [
        "data.spacing [0.001, 0.001, 0.001]: resamples the phantoms to 3.2e+04x3.2e+04x6.4e+04 "
        "voxels; choose a spacing that keeps each side 1 to 1024 voxels"
    ]
    path = medmnist3d_npz(tmp_path / "organmnist3d.npz")
    with pytest.raises(DataError) as caught:
        open_volume_sources(MedMNIST3DConfig(path=path, spacing=(1000, 1000, 1000)))
    assert caught.value.problems == [
        f"data.spacing [1000.0, 1000.0, 1000.0]: resamples the volumes of {path} to "
        "0.028x0.028x0.028 voxels; choose a spacing that keeps each side 1 to 1024 voxels"
    ]


def test_a_numtraining_the_folder_disagrees_with_is_a_warning(tmp_path):
    root = decathlon_folder(tmp_path / "Task01_Organ", cases=5)
    meta = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**meta, "numTraining": 50}))
    _, sources = open_volume_sources(config(root))
    assert sources["train"].warnings == [
        f"{root}/dataset.json: numTraining is 50 but imagesTr/labelsTr hold 5 cases (a partial "
        "download?)"
    ]
    _, sources = open_volume_sources(config(decathlon_folder(tmp_path / "ok", cases=5)))
    assert sources["train"].warnings == []


def test_phantoms_are_deterministic_by_seed_with_two_varied_foreground_classes():
    cfg = PhantomConfig(shape=(24, 24, 16))
    images, masks = generate_split(cfg, 0, 6)
    again, _ = generate_split(cfg, 0, 6)
    other, _ = generate_split(cfg.model_copy(update={"seed": 1}), 0, 6)
    assert np.array_equal(images, again) and not np.array_equal(images, other)
    assert masks.dtype == np.int8 and set(np.unique(masks)) == {0, 1, 2}
    organ_sizes = (masks == 1).sum(axis=(1, 2, 3))
    assert organ_sizes.min() > 0 and len(set(organ_sizes.tolist())) == 6  # shapes vary
    # the organ stands out from the tissue around it by a contrast that varies per volume
    contrasts = [images[i][masks[i] == 1].mean() - 40 for i in range(6)]
    assert max(abs(c) for c in contrasts) > 15 and np.std(contrasts) > 5


def test_phantoms_cache_with_their_anisotropic_spacing(tmp_path):
    cfg = PhantomConfig(shape=(16, 16, 8), train_size=3, valid_size=1, test_size=1)
    info = prepare_volumes(cfg, tmp_path / "cache")
    assert info.classes == ["background", "organ", "lesion"] and info.task == "segmentation"
    volume = load_volumes(info.path, "valid")[0]
    assert volume.image.shape == (16, 16, 8) and volume.spacing == (1.0, 1.0, 2.0)


def medmnist3d_npz(path: Path, size: int = 28) -> Path:
    """MedMNIST 3D's format: `{split}_images` N x S x S x S uint8, `{split}_labels` N x 1."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, count in (("train", 6), ("val", 2), ("test", 3)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (count, size, size, size), np.uint8)
        arrays[f"{split}_labels"] = (np.arange(count) % 3).reshape(-1, 1).astype(np.uint8)
    np.savez_compressed(path, **arrays)
    return path


def test_a_medmnist3d_archive_reads_in_its_real_format(tmp_path):
    path = medmnist3d_npz(tmp_path / "organmnist3d.npz")
    info = prepare_volumes(MedMNIST3DConfig(path=path), tmp_path / "cache")
    assert info.classes == ["class_0", "class_1", "class_2"] and info.task == "single_label"
    assert info.counts == {"train": 6, "valid": 2, "test": 3}
    volumes = load_volumes(info.path, "test")
    assert volumes.labels.tolist() == [0, 1, 2]
    assert volumes[2].label == 2 and volumes[2].image.shape == (28, 28, 28)
    with np.load(path) as archive:
        raw = archive["test_images"][1].astype(np.float32)
    expected = (raw - raw.mean()) / raw.std()
    assert np.allclose(volumes[1].image.astype(np.float32), expected, atol=1e-2)


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"train_labels": np.array([[0.5], [1], [2], [0], [1], [2]], np.float32)},
         "train_labels holds values that are not whole numbers (dtype float32); give one class "
         "index 0, 1, ... per volume"),
        ({"train_images": np.array([None] * 6, dtype=object)},
         "train_images holds Python objects (a pickled object array), which kdray does not load"),
        ({"test_images": np.zeros((0, 28, 28, 28), np.uint8),
          "test_labels": np.zeros((0, 1), np.uint8)},
         "the test split is empty (test_images holds no volumes)"),
    ],
)  # fmt: skip
def test_each_bad_medmnist3d_array_is_one_line_naming_file_and_key(tmp_path, change, says):
    path = medmnist3d_npz(tmp_path / "organmnist3d.npz")
    with np.load(path) as archive:
        arrays = {key: archive[key] for key in archive.files}
    np.savez(path, **{**arrays, **change})  # savez pickles an object array, as a user's would
    with pytest.raises(DataError) as caught:
        open_volume_sources(MedMNIST3DConfig(path=path))
    assert len(caught.value.problems) == 1, caught.value.problems
    assert caught.value.problems[0].startswith(f"{path}: {says}"), caught.value.problems


@pytest.mark.parametrize("shape", [[0, 48, 24], [-3, 48, 24], [100000, 100000, 100000]])
def test_a_phantom_shape_out_of_range_is_one_line_naming_data_shape(shape):
    from kdray.spec.load import JobError, parse_job
    from tests.test_volume_training import volume_job

    with pytest.raises(JobError) as caught:
        parse_job(volume_job(data={"kind": "synthetic_volumes", "shape": shape}))
    assert caught.value.problems == [f"data.shape: each side 8 to 256 voxels (got {shape})"]


def test_a_2d_medmnist_archive_is_refused_in_one_line(tmp_path):
    path = tmp_path / "breastmnist.npz"
    images = np.zeros((4, 28, 28), np.uint8)
    labels = np.zeros((4, 1), np.uint8)
    splits = ("train", "val", "test")
    np.savez(
        path, **{f"{s}_images": images for s in splits}, **{f"{s}_labels": labels for s in splits}
    )
    with pytest.raises(DataError) as caught:
        open_volume_sources(MedMNIST3DConfig(path=path))
    assert caught.value.problems[0].startswith(str(path))
    assert "a 2D set is data kind medmnist" in caught.value.problems[0]
