"""3D models by name: MONAI networks for volumes, widths and depths written in the name.

A name is `<network>[-<key><n>.<n>...]...`, each key one letter, its numbers dot-separated
(`-w`, a widen factor, is one decimal number):
- segmentation: `basicunet3d[-f<6 widths>]` (BasicUNet, always 4 poolings; default
  f32.32.64.128.256.32), `unet3d[-c<widths>][-s<strides>][-r<residual units>]` (UNet; default
  c16.32.64.128.256, strides 2, r2), `segresnet3d[-f<init filters>][-b<blocks per level>]`
  (SegResNet; default f8-b1.2.2.4, group norm over gcd(8, f) groups),
  `dynunet3d[-f<widths>]` (DynUNet, 3^3 kernels, the first level at stride 1, the rest 2;
  default f32.64.128.256.320);
- classification: `densenet3d[-f<init features>][-g<growth>][-b<layers per block>]` (DenseNet;
  default f64-g32-b6.12.24.16, DenseNet121), `resnet3d[-d<depth>][-w<widen factor>]` (ResNet;
  depth 10, 18, 34, 50, 101, 152 or 200, default d18-w1).
So a student 50x or more smaller than its teacher is written as, e.g., `basicunet3d` (5.7 M
parameters) and `basicunet3d-f4.4.8.16.32.4` (90 k), or `densenet3d` and
`densenet3d-f8-g8-b2.2.2.2`. Nothing is downloaded: every network starts from random weights.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from torch import nn

SEGMENTERS = ("basicunet3d", "unet3d", "segresnet3d", "dynunet3d")
CLASSIFIERS = ("densenet3d", "resnet3d")
KEYS = {  # network -> the keys its name takes
    "basicunet3d": "f",
    "unet3d": "csr",
    "segresnet3d": "fb",
    "dynunet3d": "f",
    "densenet3d": "fgb",
    "resnet3d": "dw",
}
RESNET_DEPTHS = (10, 18, 34, 50, 101, 152, 200)
PART = re.compile(r"^(?P<key>[a-z])(?P<values>[0-9]+(\.[0-9]+)*)$")
NAME_FORM = "<network>[-<key><n>.<n>...]..., e.g. basicunet3d-f4.4.8.16.32.4"


@dataclass(frozen=True)
class VolumeModelName:
    network: str
    parts: dict[str, tuple[float, ...]]

    @property
    def task(self) -> str:
        return "segmentation" if self.network in SEGMENTERS else "classification"

    def ints(self, key: str, default: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(int(v) for v in self.parts.get(key, default))


def rank_problem(name: str) -> str | None:
    """Said of a 3D network named for 2D data (its name is no timm model, but that misleads)."""
    if name.split("-")[0] not in KEYS:
        return None
    return (
        f"{name!r} is a 3D network and this data is 2D: name a timm model, or use a volume "
        "data kind (decathlon, nifti_csv, medmnist3d, synthetic_volumes)"
    )


def parse_volume_model(name: str) -> VolumeModelName:
    """The parts of a 3D model's name; ValueError saying what is wrong with it."""
    network, *rest = name.split("-")
    if network not in KEYS:
        raise ValueError(f"{name!r}: unknown 3D network {network!r}; one of {sorted(KEYS)} "
                         f"({NAME_FORM})")  # fmt: skip
    parts: dict[str, tuple[float, ...]] = {}
    for part in rest:
        match = PART.match(part)
        if part in KEYS[network]:  # a bare key: its numbers missing, or negative (-r-1)
            raise ValueError(f"{name!r}: -{part} takes whole numbers ({NAME_FORM})")
        if not match or match["key"] not in KEYS[network] or match["key"] in parts:
            raise ValueError(f"{name!r}: {part!r} is not one of {network}'s settings "
                             f"{['-' + k + '...' for k in KEYS[network]]}")  # fmt: skip
        text = match["values"]  # -w is one decimal (w0.125), every other key dot-separated
        values = (float(text),) if match["key"] == "w" else tuple(float(v) for v in text.split("."))
        least = 0 if match["key"] == "r" else 1  # no residual units is a plain U-Net
        if match["key"] != "w" and not all(v.is_integer() and v >= least for v in values):
            raise ValueError(f"{name!r}: {part!r} takes whole numbers from {least}")
        parts[match["key"]] = values
    parsed = VolumeModelName(network, parts)
    _check_counts(name, parsed)
    return parsed


def _check_counts(name: str, parsed: VolumeModelName) -> None:
    wanted = {("basicunet3d", "f"): (6, 6), ("segresnet3d", "f"): (1, 1),
              ("densenet3d", "f"): (1, 1), ("densenet3d", "g"): (1, 1),
              ("resnet3d", "d"): (1, 1), ("resnet3d", "w"): (1, 1),
              ("unet3d", "c"): (2, 8), ("unet3d", "r"): (1, 1), ("dynunet3d", "f"): (2, 8),
              ("segresnet3d", "b"): (2, 6), ("densenet3d", "b"): (1, 6)}  # fmt: skip
    for key, values in parsed.parts.items():
        low, high = wanted.get((parsed.network, key), (1, 8))
        if not low <= len(values) <= high:
            count = str(low) if low == high else f"{low} to {high}"
            raise ValueError(f"{name!r}: -{key} takes {count} numbers, got {len(values)}")
    if parsed.network == "resnet3d" and parsed.ints("d", (18,))[0] not in RESNET_DEPTHS:
        raise ValueError(f"{name!r}: resnet3d depths are {list(RESNET_DEPTHS)}")
    if parsed.network == "unet3d" and "s" in parsed.parts:
        levels = len(parsed.ints("c", (16, 32, 64, 128, 256)))
        if len(parsed.parts["s"]) != levels - 1:
            raise ValueError(f"{name!r}: -s takes one stride per down-sampling ({levels - 1})")


def create_volume_model(name: str, num_classes: int, channels: int = 1) -> nn.Module:
    """The 3D network `name` for `channels`-channel volumes and `num_classes` outputs (one per
    class, background included, for a segmenter), with its stages tapped for the feature
    methods (`kdray.tasks.volume_taps`)."""
    from kdray.tasks import volume_taps as t

    n = parse_volume_model(name)
    common = {"spatial_dims": 3, "in_channels": channels, "out_channels": num_classes}
    if n.network == "basicunet3d":
        features = n.ints("f", (32, 32, 64, 128, 256, 32))
        return t.tapped(t.BasicUNet3d(**common, features=features), t.basicunet_taps(features))
    if n.network == "unet3d":
        widths = n.ints("c", (16, 32, 64, 128, 256))
        strides = n.ints("s", (2,) * (len(widths) - 1))
        units = n.ints("r", (2,))[0]
        net = t.UNet3d(**common, channels=widths, strides=strides, num_res_units=units)
        return t.tapped(net, t.unet_taps(widths, strides))
    if n.network == "segresnet3d":
        filters, blocks = n.ints("f", (8,))[0], n.ints("b", (1, 2, 2, 4))
        norm = ("GROUP", {"num_groups": math.gcd(8, filters)})
        net = t.SegResNet3d(**common, init_filters=filters, blocks_down=blocks,
                            blocks_up=(1,) * (len(blocks) - 1), norm=norm)  # fmt: skip
        return t.tapped(net, t.segresnet_taps(filters, blocks))
    if n.network == "dynunet3d":
        widths = n.ints("f", (32, 64, 128, 256, 320))
        strides = [1] + [2] * (len(widths) - 1)
        net = t.DynUNet3d(**common, kernel_size=[3] * len(widths), strides=strides,
                          upsample_kernel_size=strides[1:], filters=widths)  # fmt: skip
        return t.tapped(net, t.dynunet_taps(widths))
    if n.network == "densenet3d":
        init, growth = n.ints("f", (64,))[0], n.ints("g", (32,))[0]
        blocks = n.ints("b", (6, 12, 24, 16))
        net = t.DenseNet3d(**common, init_features=init, growth_rate=growth,
                           block_config=blocks)  # fmt: skip
        return t.tapped(net, t.densenet_taps(init, growth, blocks))
    depth = n.ints("d", (18,))[0]
    widen = float(n.parts.get("w", (1.0,))[0])
    block, layers = t.resnet_params[f"resnet{depth}"][:2]  # what monai's resnet<depth>() builds
    net = t.ResNet3d(block, layers, t.get_inplanes(), spatial_dims=3, n_input_channels=channels,
                     num_classes=num_classes, widen_factor=widen)  # fmt: skip
    return t.tapped(net, t.resnet_taps(depth, widen))


def volume_model_problem(name: str, patch: tuple[int, ...], task: str) -> str | None:
    """Why `name` is no 3D model of `task` ("segmentation" or a classification task) for
    training patches of shape `patch`, or None."""
    try:
        parsed = parse_volume_model(name)
    except ValueError as exc:
        return str(exc)
    wanted = "segmentation" if task == "segmentation" else "classification"
    if parsed.task != wanted:
        names = SEGMENTERS if wanted == "segmentation" else CLASSIFIERS
        return f"{name!r} is a 3D {parsed.task} network; {wanted} takes one of {list(names)}"
    if parsed.network == "densenet3d":
        return _densenet_problem(name, parsed, patch)
    multiple = input_multiple(name)
    if any(side % multiple for side in patch):
        return f"{name!r} needs each side of data.patch {list(patch)} divisible by {multiple}"
    if math.prod(side // multiple for side in patch) < 2:  # instance norm of one voxel: error
        return f"{name!r} down-samples data.patch {list(patch)} to one voxel; give a patch " \
            f"with a side of at least {2 * multiple}"  # fmt: skip
    return None


def _densenet_problem(name: str, parsed: VolumeModelName, patch: tuple[int, ...]) -> str | None:
    """DenseNet halves its input twice (stem, max-pool), then once per transition with a 2^3
    average pool that fails on a 1-voxel map (MONAI's default at MedMNIST's 28^3)."""
    transitions = len(parsed.ints("b", (6, 12, 24, 16))) - 1

    def fits(side: int) -> bool:
        side = math.ceil(math.ceil(side / 2) / 2)
        for _ in range(transitions):
            if side < 2:
                return False
            side //= 2
        return True

    if all(fits(side) for side in patch):
        return None
    least = next(n for n in range(1, 4096) if fits(n))
    return f"{name!r} pools data.patch {list(patch)} below one voxel; give sides of at " \
        f"least {least}, or fewer blocks (-b)"  # fmt: skip


def input_multiple(name: str) -> int:
    """What each side of a segmenter's input must be divisible by (its total down-sampling)."""
    n = parse_volume_model(name)
    if n.network == "basicunet3d":
        return 16
    if n.network == "unet3d":
        return math.prod(n.ints("s", (2,) * (len(n.ints("c", (16, 32, 64, 128, 256))) - 1)))
    if n.network == "segresnet3d":
        return 2 ** (len(n.ints("b", (1, 2, 2, 4))) - 1)
    if n.network == "dynunet3d":
        return 2 ** (len(n.ints("f", (32, 64, 128, 256, 320))) - 1)
    return 1
