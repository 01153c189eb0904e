"""3D models by name: parameter counts (a student >= 50x smaller than its teacher), names
refused in one line; sliding-window inference on a volume larger than the patch scores the Dice
of whole-volume inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdray.data.phantoms import Config as PhantomConfig
from kdray.data.phantoms import open_sources
from kdray.tasks.models import count_params
from kdray.tasks.sliding_window import sliding_window_logits
from kdray.tasks.volume_metrics import volume_segmentation_report
from kdray.tasks.volume_models import create_volume_model, input_multiple, parse_volume_model

# teacher, student, classes, their parameter counts (read off MONAI 1.6.1's networks)
PAIRS = [
    ("basicunet3d", "basicunet3d-f4.4.8.16.32.4", 3, 5_749_443, 90_475),
    ("dynunet3d", "dynunet3d-f4.8.16.32.32", 3, 16_543_683, 234_619),
    ("segresnet3d-f32-b1.1.1.1", "segresnet3d-f4-b1.1.1.1", 3, 7_069_443, 110_883),
    ("densenet3d", "densenet3d-f8-g8-b2.2.2.2", 11, 11_253_899, 64_696),
    ("resnet3d-d50", "resnet3d-d10-w0.125", 11, 46_181_451, 228_163),
]


@pytest.mark.parametrize(("teacher", "student", "classes", "big", "small"), PAIRS)
def test_a_student_50x_smaller_than_its_teacher_can_be_named(teacher, student, classes, big, small):
    with torch.device("meta"):
        sizes = [count_params(create_volume_model(n, classes, 1)) for n in (teacher, student)]
    assert sizes == [big, small]
    assert big / small >= 50


def test_tiny_networks_map_a_volume_to_masks_or_classes():
    volume = torch.randn(2, 1, 16, 16, 16)
    assert create_volume_model("unet3d-c4.8.16-r0", 3)(volume).shape == (2, 3, 16, 16, 16)
    assert create_volume_model("densenet3d-f8-g8-b2.2", 4)(volume).shape == (2, 4)
    assert parse_volume_model("unet3d-c4.8.16").task == "segmentation"
    assert input_multiple("unet3d-c4.8.16-s2.1") == 2 and input_multiple("basicunet3d") == 16


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("vnet3d", "unknown 3D network 'vnet3d'"),
        ("basicunet3d-f4.4.8", "-f takes 6 numbers, got 3"),
        ("unet3d-c4.8.16-s2", "-s takes one stride per down-sampling (2)"),
        ("resnet3d-d11", "resnet3d depths are"),
        ("densenet3d-x4", "'x4' is not one of densenet3d's settings"),
        ("unet3d-c4.8.16.32-s2.2.2-r-1", "-r takes whole numbers"),
    ],
)
def test_a_bad_name_is_one_line_saying_what_is_wrong(name, says):
    with pytest.raises(ValueError) as caught:
        parse_volume_model(name)
    assert says in str(caught.value) and "\n" not in str(caught.value)


def trained_on_patches(volumes, patch: int, steps: int) -> torch.nn.Module:
    """A tiny U-Net trained briefly on random patches of `volumes`, as a patch-trained student."""
    torch.manual_seed(0)
    model = create_volume_model("unet3d-c8.16.32-r0", 3)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        images, masks = [], []
        for v in (volumes[i] for i in rng.integers(len(volumes), size=4)):
            corner = [rng.integers(n - patch + 1) for n in v.image.shape]
            window = tuple(slice(c, c + patch) for c in corner)
            images.append(torch.as_tensor(v.image[window])[None])
            masks.append(torch.as_tensor(v.mask[window]).long())
        loss = F.cross_entropy(model(torch.stack(images)), torch.stack(masks))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model


def test_sliding_window_gives_the_dice_of_whole_volume_inference():
    torch.set_num_threads(2)
    cfg = PhantomConfig(shape=(32, 32, 16), train_size=6, valid_size=3, test_size=1)
    _, sources = open_sources(cfg)
    train = [sources["train"].volume(i) for i in range(6)]
    model = trained_on_patches(train, patch=16, steps=60).eval()
    held_out = [sources["valid"].volume(i) for i in range(3)]
    images = torch.stack([torch.as_tensor(v.image)[None] for v in held_out])
    with torch.inference_mode():
        whole = model(images).argmax(1).numpy()
    windowed = sliding_window_logits(model, images, (16, 16, 16), overlap=0.5).argmax(1).numpy()
    truths, spacings = [v.mask for v in held_out], [v.spacing for v in held_out]
    names = ["background", "organ", "lesion"]
    whole_report, windows_report = (
        volume_segmentation_report(list(p), truths, spacings, names)["per_class_dice"]
        for p in (whole, windowed)
    )
    # the organ (5% of the voxels; chance Dice ~0.05) is learned: the comparison means something
    assert whole_report[0]["dice"] > 0.3
    for by_whole, by_windows in zip(whole_report, windows_report, strict=True):
        assert by_windows["dice"] == pytest.approx(by_whole["dice"], abs=0.02)
