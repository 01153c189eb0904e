"""The batched augmentation on the training device: albumentations' geometry and levels, the
same views whatever the batch, the two back ends agreeing, masks moving with their images."""

import numpy as np
import pytest
import torch

from kdray.data.augment import DEFAULT_PIPELINE, build_train_augmentation
from kdray.train.augment_steps import split_pipeline
from kdray.train.device_augment import DeviceAugment

MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
BACKENDS = ("opencv", "torch")


def smooth_images(n: int, size: int = 48, seed: int = 0) -> torch.Tensor:
    """uint8 (n, size, size, 3): gradients and a blob, smooth enough that bilinear rounding
    differences stay small."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        a, b, c = rng.uniform(0.2, 1.0, 3)
        cy, cx = rng.uniform(0.3, 0.7, 2)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.02)
        image = np.stack([a * xx, b * yy, c * blob], axis=-1) * 200 + 20
        out.append(image)
    return torch.from_numpy(np.clip(np.stack(out), 0, 255).astype(np.uint8))


def augment(spec, size: int, backend: str, seed: int = 3) -> DeviceAugment:
    loader_steps, steps = split_pipeline(spec, size, size)
    assert not loader_steps
    return DeviceAugment(steps, seed, MEAN, STD, backend=backend)


def pixels(x: torch.Tensor) -> torch.Tensor:
    """Normalised (N, C, H, W) back to grey levels (N, H, W, C)."""
    mean, std = torch.tensor(MEAN).view(1, -1, 1, 1), torch.tensor(STD).view(1, -1, 1, 1)
    return ((x * std + mean) * 255).permute(0, 2, 3, 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_view_depends_on_its_sample_and_epoch_not_on_its_batch(backend):
    images = smooth_images(8)
    aug = augment(True, 48, backend)
    whole, _ = aug(images, torch.arange(8), epoch=2)
    order = torch.tensor([5, 1, 7, 3])
    part, _ = aug(images[order], order, epoch=2)
    assert torch.equal(part, whole[order])
    other, _ = aug(images, torch.arange(8), epoch=3)
    assert not torch.equal(other, whole)
    assert torch.equal(aug(images, torch.arange(8), epoch=2)[0], whole)


def test_affine_geometry_is_albumentations():
    """One fixed Affine (no random range): OpenCV's warp is albumentations' own, pixel for
    pixel; the torch back end within bilinear rounding."""
    step = {
        "name": "Affine", "rotate": [12, 12], "scale": [1.07, 1.07], "shear": [4, 4],
        "translate_percent": [0.06, 0.06], "border_mode": 0, "p": 1.0,
    }  # fmt: skip
    images = smooth_images(3)
    reference = build_train_augmentation([step], seed=0)
    expected = np.stack([reference(image=im)["image"] for im in images.numpy()])
    opencv, _ = augment([step], 48, "opencv")(images, torch.arange(3), 0)
    assert np.allclose(pixels(opencv).numpy(), expected, atol=1e-3)
    drawn, _ = augment([step], 48, "torch")(images, torch.arange(3), 0)
    diff = (pixels(drawn) - torch.from_numpy(expected).float()).abs()
    assert diff.mean() < 0.5 and diff.max() < 4


def test_brightness_and_contrast_are_albumentations():
    step = {
        "name": "RandomBrightnessContrast", "brightness_limit": [0.1, 0.1],
        "contrast_limit": [0.2, 0.2], "p": 1.0,
    }  # fmt: skip
    images = smooth_images(2)
    reference = build_train_augmentation([step], seed=0)
    expected = torch.from_numpy(np.stack([reference(image=im)["image"] for im in images.numpy()]))
    for backend in BACKENDS:
        x, _ = augment([step], 48, backend)(images, torch.arange(2), 0)
        assert (pixels(x) - expected.float()).abs().max() < 1  # theirs truncates to uint8


def test_a_resized_crop_zooms_into_a_box_of_the_image():
    size = 64
    ramp = np.broadcast_to(np.arange(size, dtype=np.uint8)[None, :, None] * 4, (size, size, 3))
    images = torch.from_numpy(np.ascontiguousarray(np.stack([ramp] * 4)))
    step = {"name": "RandomResizedCrop", "size": [size, size], "scale": [0.25, 0.25],
            "ratio": [1.0, 1.0]}  # fmt: skip
    for backend in BACKENDS:
        x, _ = augment([step], size, backend)(images, torch.arange(4), 0)
        slope = np.diff(pixels(x).numpy()[:, :, 4:-4, 0], axis=2)
        assert np.allclose(slope, 2.0, atol=0.05)  # a 32-px box resized to 64 px
        starts = pixels(x).numpy()[:, 0, 0, 0]
        assert len(set(np.round(starts))) > 1  # each sample its own box


@pytest.mark.parametrize(
    "spec",
    [
        True,
        [
            {"name": "RandomResizedCrop", "size": [48, 48], "scale": [0.5, 1.0]},
            {"name": "VerticalFlip", "p": 0.5},
            {"name": "ShiftScaleRotate", "rotate_limit": 20, "fill": 40, "p": 0.9},
            {"name": "GaussNoise", "std_range": [0.02, 0.05], "p": 0.7},
            {"name": "RandomBrightnessContrast", "p": 0.9},
        ],
    ],
    ids=["default", "crop-flip-fill-noise"],
)
@pytest.mark.filterwarnings("ignore:ShiftScaleRotate is a special case")
def test_the_back_ends_agree_to_rounding(spec):
    """The GPU's back end (torch), run here on the CPU, against the CPU's (OpenCV)."""
    images = smooth_images(16, seed=1)
    a, _ = augment(spec, 48, "opencv")(images, torch.arange(16), 1)
    b, _ = augment(spec, 48, "torch")(images, torch.arange(16), 1)
    diff = (pixels(a) - pixels(b)).abs()
    assert diff.mean() < 0.5
    assert torch.quantile(diff.flatten(), 0.999) < 6


def asymmetric_scene(n: int, size: int = 48):
    """Images whose bright pixels are exactly the mask's class 1 (an L off the centre), class
    2 a bar elsewhere (dim in the image): no flip or rotation maps the mask onto itself."""
    mask = np.zeros((size, size), np.uint8)
    mask[8:30, 10:16] = 1
    mask[24:30, 10:26] = 1
    mask[36:42, 30:44] = 2
    image = np.full((size, size, 3), 30, np.uint8)
    image[mask == 1] = 220
    image[mask == 2] = 90
    return (
        torch.from_numpy(np.stack([image] * n)),
        torch.from_numpy(np.stack([mask] * n)),
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_mask_moves_with_its_image(backend):
    images, masks = asymmetric_scene(12)
    spec = [
        {"name": "Affine", "rotate": [-30, 30], "translate_percent": [-0.1, 0.1],
         "scale": [0.8, 1.2], "border_mode": 0, "fill_mask": 0, "p": 1.0},
        {"name": "HorizontalFlip", "p": 0.5},
        {"name": "VerticalFlip", "p": 0.5},
        {"name": "RandomBrightnessContrast", "p": 1.0},
    ]  # fmt: skip
    x, moved = augment(spec, 48, backend)(images, torch.arange(12), 0, masks=masks)
    assert moved.dtype == torch.int64 and moved.shape == masks.shape
    # the pixels rotated in from outside the image are unknown (-1), not background
    assert set(moved.unique().tolist()) == {-1, 0, 1, 2}
    assert len({tuple(m.flatten().tolist()) for m in moved}) > 6  # each its own view
    # the image's brightest region is where the mask says class 1
    grey = pixels(x).mean(-1)
    for g, m in zip(grey, moved, strict=True):
        threshold = (g.max() + g.median()) / 2
        bright, labelled = g > threshold, m == 1
        iou = (bright & labelled).sum() / (bright | labelled).sum()
        assert iou > 0.85
    # a horizontal flip alone: exactly the flipped mask
    flip = augment([{"name": "HorizontalFlip", "p": 1.0}], 48, backend)
    _, flipped = flip(images[:2], torch.arange(2), 0, masks=masks[:2])
    assert torch.equal(flipped, masks[:2].flip(-1))


def test_steps_without_a_batched_version_stay_in_the_loader_and_keep_the_order():
    spec = [
        {"name": "HorizontalFlip", "p": 0.5},
        {"name": "Blur", "blur_limit": [3, 3]},  # no batched version
        {"name": "Affine", "rotate": [-5, 5], "border_mode": 0},
        {"name": "RandomBrightnessContrast"},
    ]
    loader_steps, steps = split_pipeline(spec, 32, 32)
    assert [s["name"] for s in loader_steps] == ["HorizontalFlip", "Blur"]
    assert [place for place, _ in steps] == [2, 3]
    reflected = {"name": "Affine", "rotate": [-5, 5], "border_mode": 4}
    assert len(split_pipeline([reflected], 32, 32)[0]) == 1  # BORDER_REFLECT_101: loader
    crop = {"name": "RandomResizedCrop", "size": [16, 16]}
    assert len(split_pipeline([crop], 32, 32)[0]) == 1  # another size: loader
    assert split_pipeline(DEFAULT_PIPELINE, 224, 224)[0] == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_the_views_are_the_cpus_to_rounding():
    """The torch back end on CUDA: the same views as on the CPU (both back ends), masks too."""
    images, masks = asymmetric_scene(8)
    aug = augment(True, 48, "auto")
    cpu, cpu_masks = aug(images, torch.arange(8), 0, masks=masks)
    gpu, gpu_masks = aug(images.cuda(), torch.arange(8), 0, masks=masks.cuda())
    assert gpu.is_cuda and gpu_masks.is_cuda
    assert (pixels(gpu.cpu()) - pixels(cpu)).abs().mean() < 0.5
    assert (gpu_masks.cpu() != cpu_masks).float().mean() < 0.01  # nearest: ties may differ
