"""Segmentation data: BUSI and images/masks trees and a MedSegBench archive made in the test,
masks unioned and resized with their images; a missing mask, a mask of another size and a mask
with other values named in one line each; the synthetic ultrasound default."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from kdray.data import DataError, open_sources, prepare_data
from kdray.data.masks import Config as MasksConfig
from kdray.data.synthetic_ultrasound import Config as UltrasoundConfig
from kdray.tasks import get_task


def scan(size=(40, 48), value=90):
    return np.full(size, value, np.uint8)


def lesion(size=(40, 48), box=(5, 15, 10, 30), value=255):
    mask = np.zeros(size, np.uint8)
    top, bottom, left, right = box
    mask[top:bottom, left:right] = value
    return mask


def busi_tree(root, per_class=6):
    """BUSI's layout: benign/malignant/normal, `<name>.png` + `<name>_mask.png`; benign (0) has
    a second lesion in `_mask_1.png`; normal masks are empty."""
    for category in ("benign", "malignant", "normal"):
        (root / category).mkdir(parents=True)
        for i in range(per_class):
            name = f"{category} ({i})"
            cv2.imwrite(str(root / category / f"{name}.png"), scan())
            empty = category == "normal"
            mask = np.zeros((40, 48), np.uint8) if empty else lesion()
            cv2.imwrite(str(root / category / f"{name}_mask.png"), mask)
    cv2.imwrite(str(root / "benign" / "benign (0)_mask_1.png"), lesion(box=(25, 35, 2, 8)))
    return root


def test_a_busi_tree_unions_extra_lesion_masks_and_resizes_with_nearest(tmp_path):
    root = busi_tree(tmp_path / "Dataset_BUSI_with_GT")
    cfg = MasksConfig(root=root, layout="busi", image_size=32)
    classes, sources = open_sources(cfg)
    assert classes == ["background", "lesion"]
    assert sum(len(s) for s in sources.values()) == 18
    where = next((s, i) for s in sources.values() for i, p in enumerate(s.pairs)
                 if p.image.name == "benign (0).png")  # fmt: skip
    source, index = where
    both = source.mask(index)
    assert both.sum() == lesion().astype(bool).sum() + 60  # the two lesions, unioned
    assert "(+1 unioned)" in source.describe_mask(index)
    info = prepare_data(cfg, tmp_path / "cache")
    assert info.task == "segmentation" and info.image_size == 32
    labels = np.load(f"{info.path}/train_labels.npy")
    assert labels.dtype == np.int8 and labels.shape[1:] == (32, 32)
    assert set(np.unique(labels)) <= {0, 1}  # nearest neighbour: no blended values


def test_a_missing_mask_and_a_mask_of_another_size_are_named_in_one_line_each(tmp_path):
    root = busi_tree(tmp_path / "busi")
    (root / "malignant" / "malignant (2)_mask.png").unlink()
    with pytest.raises(DataError) as err:
        open_sources(MasksConfig(root=root, layout="busi"))
    assert err.value.problems == [
        f"{root / 'malignant' / 'malignant (2).png'}: no mask (malignant (2)_mask.png beside "
        "it); add it or remove the image"
    ]
    cv2.imwrite(str(root / "malignant" / "malignant (2)_mask.png"), lesion(size=(20, 48)))
    with pytest.raises(DataError) as err:
        prepare_data(MasksConfig(root=root, layout="busi", image_size=32), tmp_path / "cache")
    mask = root / "malignant" / "malignant (2)_mask.png"
    assert err.value.problems[0] == (
        f"{mask}: mask is 48x20 (WxH), its image {root / 'malignant' / 'malignant (2).png'} is "
        "48x40; give masks of their images' size"
    )
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def pairs_tree(root, suffix="", mask_ext=".png", count=10):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(count):
        cv2.imwrite(str(root / "images" / f"ISIC_{i:07d}.jpg"), scan(value=60 + i))
        cv2.imwrite(str(root / "masks" / f"ISIC_{i:07d}{suffix}{mask_ext}"), lesion())
    return root


def test_images_and_masks_folders_with_a_suffix_and_thresholded_jpeg_masks(tmp_path):
    root = pairs_tree(tmp_path / "isic", suffix="_segmentation", mask_ext=".jpg")
    cfg = MasksConfig(root=root, mask_suffix="_segmentation", image_size=32)
    _, sources = open_sources(cfg)
    assert sorted(len(s) for s in sources.values()) == [1, 1, 8]
    mask = sources["train"].mask(0)
    assert set(np.unique(mask)) == {0, 1}  # JPEG ringing thresholded at 128
    assert abs(int(mask.sum()) - 200) <= 10
    with pytest.raises(DataError) as err:
        open_sources(MasksConfig(root=root))  # the suffix forgotten: every image unpaired
    assert len(err.value.problems) == 10
    assert err.value.problems[0].startswith(f"{root / 'images' / 'ISIC_0000000.jpg'}: no mask")


def test_a_mask_with_other_values_is_named(tmp_path):
    root = pairs_tree(tmp_path / "kvasir")
    odd = lesion()
    odd[0, 0] = 100
    bad = root / "masks" / "ISIC_0000003.png"
    cv2.imwrite(str(bad), odd)
    with pytest.raises(DataError) as err:
        prepare_data(MasksConfig(root=root, image_size=32), tmp_path / "cache")
    assert err.value.problems[0] == (
        f"{bad}: mask values [0, 100, 255]: a binary mask holds 0 (background) and one lesion "
        "value (255 or 1)"
    )


def test_a_medsegbench_archive(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for key, n in (("train", 12), ("val", 4), ("test", 4)):
        arrays[f"{key}_images"] = rng.integers(0, 255, (n, 64, 64), dtype=np.uint8)
        arrays[f"{key}_label"] = np.stack([lesion((64, 64), (i, i + 9, 4, 20)) for i in range(n)])
    np.savez(tmp_path / "busi_64.npz", **arrays)
    info = prepare_data(MasksConfig(path=tmp_path / "busi_64.npz"), tmp_path / "cache")
    assert info.counts == {"train": 12, "valid": 4, "test": 4} and info.task == "segmentation"
    labels = np.load(f"{info.path}/valid_labels.npy")
    assert set(np.unique(labels)) == {0, 1}  # 0/255 read as 0/1


def test_synthetic_ultrasound_is_deterministic_with_varied_lesions_and_empty_scans():
    cfg = UltrasoundConfig(train_size=40, valid_size=10, test_size=10, native_size=64)
    classes, first = open_sources(cfg)
    _, again = open_sources(cfg)
    assert classes == ["background", "lesion"]
    masks = first["train"].masks
    assert np.array_equal(masks, again["train"].masks)
    assert np.array_equal(first["train"].images, again["train"].images)
    area = (masks > 0).mean(axis=(1, 2))
    assert (area == 0).sum() >= 1 and area.max() > 10 * area[area > 0].min()  # varied sizes
    inside = first["train"].images[masks > 0].mean()
    assert inside < first["train"].images[masks == 0].mean()  # lesions are hypoechoic
    three = UltrasoundConfig(lesions="benign_malignant", train_size=40, valid_size=10, test_size=10)
    names, sources = open_sources(three)
    assert names == ["background", "benign", "malignant"]
    assert set(np.unique(sources["train"].masks)) == {0, 1, 2}
    line = get_task("segmentation").count_line(masks, classes)
    assert line.startswith("images with: lesion ")
