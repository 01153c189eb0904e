"""Segmentation models by name: segmentation_models_pytorch (smp) architectures on timm encoders.

A name is `<architecture>-<timm encoder>[-d<c1>.<c2>...]`:
- `unet-resnet34`: smp's U-Net on timm's resnet34 (smp's `tu-resnet34`), its default decoder;
- `unet-lcnet_035-d16.16.8.8.8`: a narrow decoder, one width per block; the number of widths is
  the encoder depth (3 to 5 stages, so `-d16.8.8` is a 3-stage encoder and an input stride of 8).
Architectures: `ARCHITECTURES`; `-d` is accepted where smp takes a list of decoder widths.
Weights are never downloaded: a job's `pretrained` setting for a segmenter names its encoder's
weights (`imagenet`: the encoder's default timm tag, `<encoder>.<tag>`, or a file of the timm
encoder's state dict), found in the same caches as a classifier's (`kdray.tasks.weights`) and
loaded by timm from that file alone; the decoder and head start from scratch.

`Segmenter` wraps the smp model with timm's feature interface, so feature methods read a
segmenter's stages as they read a classifier's: `forward_intermediates(x)` returns the decoder's
output and every encoder stage (input stride 2, 4, ...) and decoder block, `forward_head` the
segmentation head, and `feature_info` one dict per stage with `num_chs`, `reduction`, `part`
(`encoder` or `decoder`) and `level` (the down-samplings the stage sits below full resolution,
nominally: DeepLabV3+'s dilated stages keep their level): student and teacher stages pair by
part and level.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

ARCHITECTURES = {  # name in kdray -> smp class; True: takes a list of decoder widths
    "unet": ("Unet", True),
    "unetplusplus": ("UnetPlusPlus", True),
    "manet": ("MAnet", True),
    "linknet": ("Linknet", False),
    "fpn": ("FPN", False),
    "deeplabv3plus": ("DeepLabV3Plus", False),
}
DECODER_STAGES = ("Unet", "MAnet", "Linknet")  # decoder.blocks: one block per input stride
NAME = re.compile(r"^(?P<arch>[a-z0-9]+)-(?P<encoder>[A-Za-z0-9_.]+?)(-d(?P<dec>[0-9.]+))?$")
NAME_FORM = "<architecture>-<timm encoder>[-d<width>.<width>...], e.g. unet-resnet34"


@dataclass(frozen=True)
class SegmenterName:
    architecture: str  # smp's class name
    encoder: str  # timm name
    decoder_channels: tuple[int, ...] | None

    @property
    def depth(self) -> int:
        return len(self.decoder_channels) if self.decoder_channels else 5


def parse_name(name: str) -> SegmenterName:
    """The parts of a segmenter's name; ValueError saying what is wrong with it."""
    match = NAME.match(name)
    if not match:
        raise ValueError(f"{name!r} is not a segmentation model name: {NAME_FORM}")
    arch, encoder, dec = match["arch"], match["encoder"], match["dec"]
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"{name!r}: unknown architecture {arch!r}; one of {sorted(ARCHITECTURES)} ({NAME_FORM})"
        )
    smp_name, takes_widths = ARCHITECTURES[arch]
    widths = None
    if dec is not None:
        if not takes_widths:
            raise ValueError(f"{name!r}: {arch} takes no decoder widths (-d...); drop them")
        parts = dec.split(".")
        if not all(p.isdigit() and int(p) > 0 for p in parts) or not 3 <= len(parts) <= 5:
            raise ValueError(
                f"{name!r}: -d lists 3 to 5 positive decoder widths, one per encoder stage "
                "(e.g. -d32.16.8)"
            )
        widths = tuple(int(p) for p in parts)
    return SegmenterName(smp_name, encoder, widths)


def encoder_of(name: str) -> str | None:
    """The timm encoder of the segmenter `name`, or None if `name` is no segmenter's name (a
    timm classifier's: timm names have no `-`)."""
    try:
        return parse_name(name).encoder
    except ValueError:
        return None


def name_problem(name: str, image_size: int) -> str | None:
    """Why `name` is no segmenter for `image_size` pixel images, or None."""
    import timm

    from kdray.tasks.volume_models import rank_problem

    if problem := rank_problem(name):
        return problem
    try:
        parsed = parse_name(name)
    except ValueError as exc:
        return str(exc)
    if not timm.is_model(parsed.encoder):
        close = timm.list_models(f"*{parsed.encoder.split('_')[0][:6]}*")[:5]
        hint = f"; similar: {close}" if close else ""
        return f"{name!r}: encoder {parsed.encoder!r} is not a timm model{hint}"
    stride = input_stride(name)
    if image_size % stride:
        below = image_size // stride * stride or stride
        fits = sorted({below, (image_size // stride + 1) * stride})
        return (
            f"{name!r} needs image sizes divisible by its encoder's stride {stride}; "
            f"data.image_size is {image_size}: use {' or '.join(map(str, fits))}"
        )
    return None


def input_stride(name: str) -> int:
    """What the input's height and width must be divisible by (smp's `output_stride`)."""
    with torch.device("meta"):
        model = _smp_model(parse_name(name), 2, 1, encoder_pretrained(None))
    return int(model.encoder.output_stride)


def encoder_pretrained(weights) -> dict:
    """smp arguments that initialise a timm encoder from a weights file on this machine (a path,
    or `kdray.tasks.weights.LocalWeights`: timm loads that file alone and adapts its stem to the
    input channels), or leave it random. A tag (`resnet34.a1_in1k`) becomes the encoder's name,
    so timm adapts the layers that tag's pretrained config names."""
    if weights is None:
        return {"encoder_weights": None}
    path = getattr(weights, "path", weights)  # LocalWeights, or a path
    overlay = {"file": str(Path(path).expanduser()), "hf_hub_id": None, "url": None}
    source = getattr(weights, "source", None)
    tag = {"encoder_tag": source.tag} if source is not None and source.tag else {}
    return {"encoder_weights": True, "pretrained_cfg_overlay": overlay, **tag}


def _smp_model(parsed: SegmenterName, classes: int, channels: int, pretrained: dict) -> nn.Module:
    import segmentation_models_pytorch as smp

    if "encoder_weights" not in pretrained:  # smp's default ("imagenet") downloads
        raise ValueError("encoder_weights must be given (None: random initialisation)")
    pretrained = dict(pretrained)
    encoder = pretrained.pop("encoder_tag", parsed.encoder)  # smp: `tu-<model>.<tag>`
    kwargs = {"encoder_depth": parsed.depth}
    if parsed.decoder_channels:
        kwargs["decoder_channels"] = parsed.decoder_channels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # smp on encoder_weights=True for tu-
        return getattr(smp, parsed.architecture)(
            encoder_name=f"tu-{encoder}",
            in_channels=channels,
            classes=classes,
            **pretrained,
            **kwargs,
        )


# built with autograd on, even where a caller has it off (loading a teacher): the check for
# unused encoder modules runs a backward pass
@torch.inference_mode(False)
@torch.enable_grad()
def create_segmenter(name: str, num_classes: int, channels: int, weights=None) -> Segmenter:
    """The segmenter `name` with `num_classes` output channels (one per class, background
    included) for `channels`-channel images; its encoder from `weights` if given."""
    parsed = parse_name(name)
    try:
        net = _smp_model(parsed, num_classes, channels, encoder_pretrained(weights))
    except (RuntimeError, KeyError) as exc:
        if weights is None:
            raise
        from kdray.tasks.state_dicts import mismatch

        path = Path(getattr(weights, "path", weights))
        raise ValueError(
            f"pretrained.{name}: {path} {mismatch(parsed.encoder, path) or exc}"
        ) from None
    drop_unused_encoder_modules(net, channels)
    return Segmenter(net)


def drop_unused_encoder_modules(net: nn.Module, channels: int) -> list[str]:
    """Replace with `nn.Identity` the encoder's modules whose parameters get no gradient: a timm
    encoder cut to fewer stages than it has (`-d16.8.8` on lcnet) can still run its deeper
    blocks and drop their output, blocks that distributed data parallel refuses (parameters
    without a gradient) and that would count in the student's size. Found by one forward and
    backward on a small batch; kept only if the model's output on it stays exactly the same.
    Returns the names dropped."""
    side = 2 * int(net.encoder.output_stride)
    probe = torch.linspace(-1, 1, 2 * channels * side * side).reshape(2, channels, side, side)
    was_training = net.training
    net.eval()  # batch-norm over the deepest stage's 1x1 pixels needs no batch statistics
    try:
        before = net(probe)
        before.float().sum().backward()
        dropped: list[tuple[str, nn.Module]] = []
        for name, module in net.encoder.named_modules():
            if any(name.startswith(d + ".") for d, _ in dropped):
                continue
            params = [p for p in module.parameters() if p.requires_grad]
            if name and params and all(p.grad is None for p in params):
                dropped.append((name, module))
        _swap(net.encoder, [(name, nn.Identity()) for name, _ in dropped])
        with torch.no_grad():
            if not torch.equal(net(probe), before.detach()):
                _swap(net.encoder, dropped)  # they mattered after all: keep the model whole
                dropped = []
    finally:
        net.zero_grad(set_to_none=True)
        net.train(was_training)
    return [name for name, _ in dropped]


def _swap(root: nn.Module, replacements: list[tuple[str, nn.Module]]) -> None:
    for name, module in replacements:
        parent, _, attr = name.rpartition(".")
        setattr(root.get_submodule(parent), attr, module)


class Segmenter(nn.Module):
    """An smp model with timm's feature interface (see the module docstring)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        encoder_channels = list(net.encoder.out_channels)[1:]  # [0]: the input itself
        depth = len(encoder_channels)
        stride = int(net.encoder.output_stride)  # DeepLabV3+ dilates its deepest stages
        self.encoder_stages = [i for i, c in enumerate(encoder_channels) if c > 0]
        info = [
            {"num_chs": encoder_channels[i], "reduction": min(2 ** (i + 1), stride),
             "part": "encoder", "level": i + 1}
            for i in self.encoder_stages
        ]  # fmt: skip
        blocks = getattr(net.decoder, "blocks", None)
        self.decoder_blocks = type(net).__name__ in DECODER_STAGES and blocks is not None
        if self.decoder_blocks:
            info += [
                {"num_chs": _out_channels(block), "reduction": 2 ** (depth - 1 - i),
                 "part": "decoder", "level": depth - 1 - i}
                for i, block in enumerate(blocks)
            ]  # fmt: skip
        self.feature_info = info

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def forward_intermediates(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(decoder output, every stage of `feature_info` in its order)."""
        features = self.net.encoder(x)
        stages = [features[1 + i] for i in self.encoder_stages]
        captured: list[torch.Tensor] = []
        hooks = []
        if self.decoder_blocks:
            hooks = [
                b.register_forward_hook(lambda _m, _i, out: captured.append(out))
                for b in self.net.decoder.blocks
            ]
        try:
            final = self.net.decoder(features)
        finally:
            for hook in hooks:
                hook.remove()
        return final, stages + captured

    def forward_head(self, final: torch.Tensor) -> torch.Tensor:
        return self.net.segmentation_head(final)


def _out_channels(block: nn.Module) -> int:
    """The output width of a decoder block: its last convolution's."""
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    return convs[-1].out_channels
