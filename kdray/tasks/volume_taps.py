"""Stage features of the MONAI networks built by name (`kdray.tasks.volume_models`), through
timm's feature interface, so the feature methods (FitNets, AT, all-stage L1) read a 3D network's
stages as they read a 2D one's (`kdray.train.distiller`).

Each network is a thin subclass of its MONAI class (same parameters, same state dict, same
`forward`) with `taps`: the submodules whose outputs are its stages, each with its part
(`encoder` or `decoder` for a segmenter, `stage` for a classifier), its input stride
(`reduction`: input side / stage side) and its channels, read off the network's settings.
`forward_intermediates(x)` runs the network once with forward hooks on those submodules and
returns (logits, stage maps); `forward_head` is the identity (the logits are already there).
`feature_info` gives one dict per stage with `num_chs`, `reduction`, `part` and `level`
(log2 of the reduction): student and teacher stages pair by part and level, as a 2D segmenter's
(`kdray.tasks.segmenters`). Where several stages share a part and level (a U-Net's bottom
block and its last down-sampling; levels of stride 1), the deepest one is the stage.

A segmenter's final decoder block, whose output is the logits, is no stage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from monai.networks import nets
from monai.networks.nets.resnet import get_inplanes, resnet_params


@dataclass(frozen=True)
class Tap:
    module: str  # path of the submodule whose output is the stage
    part: str  # encoder, decoder, or stage (a classifier's)
    reduction: int  # input side / stage side
    channels: int


class FeatureTaps:
    """timm's feature interface over a network's `taps` (see the module docstring)."""

    taps: tuple[Tap, ...] = ()

    @property
    def feature_info(self) -> list[dict]:
        return [
            {"num_chs": t.channels, "reduction": t.reduction, "part": t.part,
             "level": math.log2(t.reduction), "module": t.module}
            for t in self.taps
        ]  # fmt: skip

    def forward_intermediates(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(logits, every stage of `taps` in its order)."""
        captured: dict[int, torch.Tensor] = {}

        def keeper(index: int):
            def keep(_module, _inputs, output):
                captured[index] = output

            return keep

        hooks = [
            self.get_submodule(tap.module).register_forward_hook(keeper(i))
            for i, tap in enumerate(self.taps)
        ]
        try:
            logits = self(x)
        finally:
            for hook in hooks:
                hook.remove()
        return logits, [captured[i] for i in range(len(self.taps))]

    def forward_head(self, final: torch.Tensor) -> torch.Tensor:
        return final


class BasicUNet3d(FeatureTaps, nets.BasicUNet):
    pass


class UNet3d(FeatureTaps, nets.UNet):
    pass


class SegResNet3d(FeatureTaps, nets.SegResNet):
    pass


class DynUNet3d(FeatureTaps, nets.DynUNet):
    pass


class DenseNet3d(FeatureTaps, nets.DenseNet):
    pass


class ResNet3d(FeatureTaps, nets.ResNet):
    pass


def deepest_per_level(taps: list[Tap]) -> tuple[Tap, ...]:
    """`taps` (shallow to deep within a part) keeping the last of each (part, reduction)."""
    last = {(t.part, t.reduction): t for t in taps}
    return tuple(t for t in taps if last[(t.part, t.reduction)] is t)


def basicunet_taps(features: tuple[int, ...]) -> tuple[Tap, ...]:
    """BasicUNet: `conv_0` at full size, `down_1..4` each halving; `upcat_4..1` back up
    (`upcat_1`'s width is the sixth feature)."""
    encoder = [Tap("conv_0", "encoder", 1, features[0])]
    encoder += [Tap(f"down_{i}", "encoder", 2**i, features[i]) for i in range(1, 5)]
    widths = {4: features[3], 3: features[2], 2: features[1], 1: features[5]}
    decoder = [Tap(f"upcat_{i}", "decoder", 2 ** (i - 1), widths[i]) for i in (4, 3, 2, 1)]
    return tuple(encoder + decoder)


def unet_taps(channels: tuple[int, ...], strides: tuple[int, ...]) -> tuple[Tap, ...]:
    """UNet, built recursively: level i is `Sequential(down_i, SkipConnection(level i+1),
    up_i)` at `model` + `.1.submodule` per level; the bottom block (stride 1) is the last
    level's submodule. up_i (i >= 1) gives level i-1's width at its stride; up_0 the logits."""
    reductions = [math.prod(strides[: i + 1]) for i in range(len(strides))]
    paths = ["model" + ".1.submodule" * i for i in range(len(strides) + 1)]
    encoder = [Tap(f"{paths[i]}.0", "encoder", reductions[i], channels[i])
               for i in range(len(strides))]  # fmt: skip
    encoder.append(Tap(paths[-1], "encoder", reductions[-1], channels[-1]))  # the bottom
    decoder = [Tap(f"{paths[i]}.2", "decoder", reductions[i - 1], channels[i - 1])
               for i in range(len(strides) - 1, 0, -1)]  # fmt: skip
    return deepest_per_level(encoder) + deepest_per_level(decoder)


def segresnet_taps(filters: int, blocks_down: tuple[int, ...]) -> tuple[Tap, ...]:
    """SegResNet: `down_layers.i` at stride 2^i, width filters * 2^i; `up_layers.i` back up
    (one level per up layer, the last at full size)."""
    levels = len(blocks_down)
    encoder = [Tap(f"down_layers.{i}", "encoder", 2**i, filters * 2**i) for i in range(levels)]
    decoder = [Tap(f"up_layers.{i}", "decoder", 2 ** (levels - 2 - i),
                   filters * 2 ** (levels - 2 - i)) for i in range(levels - 1)]  # fmt: skip
    return tuple(encoder + decoder)


def dynunet_taps(filters: tuple[int, ...]) -> tuple[Tap, ...]:
    """DynUNet with strides (1, 2, 2, ...): `input_block` at full size, `downsamples.j` at
    2^(j+1), `bottleneck` at the deepest; `upsamples.k` back up to full size (before the
    output block's logits)."""
    n = len(filters)
    encoder = [Tap("input_block", "encoder", 1, filters[0])]
    encoder += [Tap(f"downsamples.{j}", "encoder", 2 ** (j + 1), filters[j + 1])
                for j in range(n - 2)]  # fmt: skip
    encoder.append(Tap("bottleneck", "encoder", 2 ** (n - 1), filters[-1]))
    decoder = [Tap(f"upsamples.{k}", "decoder", 2 ** (n - 2 - k), filters[n - 2 - k])
               for k in range(n - 1)]  # fmt: skip
    return tuple(encoder + decoder)


def densenet_taps(init: int, growth: int, blocks: tuple[int, ...]) -> tuple[Tap, ...]:
    """DenseNet: the stem (`features.relu0`, stride 2), then each dense block (stride 4 after
    the stem's max-pool, halved by each transition, which also halves the width)."""
    taps = [Tap("features.relu0", "stage", 2, init)]
    width = init
    for i, layers in enumerate(blocks):
        width += layers * growth
        taps.append(Tap(f"features.denseblock{i + 1}", "stage", 2 ** (i + 2), width))
        width //= 2
    return tuple(taps)


def resnet_taps(depth: int, widen: float) -> tuple[Tap, ...]:
    """ResNet (first convolution at stride 1): the stem (`act`, full size), `layer1` after
    the max-pool (stride 2), `layer2..4` each halving; a bottleneck block widens 4x."""
    block, _ = resnet_params[f"resnet{depth}"][:2]
    expansion = 4 if block == "bottleneck" else 1
    planes = [int(p * widen) for p in get_inplanes()]
    taps = [Tap("act", "stage", 1, planes[0])]
    taps += [Tap(f"layer{i + 1}", "stage", 2 ** (i + 1), p * expansion)
             for i, p in enumerate(planes)]  # fmt: skip
    return tuple(taps)


def tapped(net: FeatureTaps, taps: tuple[Tap, ...]) -> FeatureTaps:
    net.taps = taps
    return net
