"""Models by timm name, from random weights or from pretrained weights found on this machine
(`kdray.tasks.weights`); nothing is ever downloaded here."""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path

import timm
import torch
from torch import nn

from kdray.tasks.state_dicts import mismatch
from kdray.tasks.weights import LocalWeights, WeightsSource, timm_model_of


def create_model(
    name: str,
    num_classes: int,
    in_chans: int,
    weights: LocalWeights | str | Path | None = None,
    image_size: int | None = None,
) -> nn.Module:
    """`timm.create_model`, from random weights or from `weights`: a pretrained file found in
    the caches (`kdray.tasks.weights.find`) or a local weights file.

    timm loads the file (`pretrained=True`, `pretrained_cfg_overlay`: that file and nothing
    else), drops a classifier whose size differs from `num_classes` and adapts the first
    convolution to `in_chans` (for 1 channel: the sum of its RGB kernels). A model built for
    one input size (a ViT) is built for `image_size` instead (`size_kwargs`); timm resamples
    pretrained position embeddings to it.
    """
    if weights is None:
        return timm.create_model(
            name,
            pretrained=False,
            num_classes=num_classes,
            in_chans=in_chans,
            **size_kwargs(name, image_size),
        )
    if not isinstance(weights, LocalWeights):
        path = Path(weights).expanduser()
        problem = weights_problem(path)
        if problem:
            raise ValueError(f"pretrained.{name}: {problem}")
        weights = LocalWeights(WeightsSource(name, file=str(path)), path, "", 0)
    try:
        return timm.create_model(
            weights.timm_name(),
            pretrained=True,
            pretrained_cfg_overlay=weights.timm_overlay(),
            num_classes=num_classes,
            in_chans=in_chans,
            **size_kwargs(weights.timm_name(), image_size),
        )
    except (RuntimeError, KeyError) as exc:
        path = weights.path
        raise ValueError(f"pretrained.{name}: {path} {mismatch(name, path) or exc}") from None


def size_kwargs(name: str, image_size: int | None) -> dict:
    """`{"img_size": image_size}` for a timm model built for one input size (timm's
    `fixed_input_size`: ViT, DeiT, Swin, ...) that is not `image_size`; else nothing, so
    every other model (and a fixed-size one at its own size) is built as timm's default."""
    native = native_size(name)
    if image_size is None or native is None or native == (image_size, image_size):
        return {}
    return {"img_size": image_size}


def native_size(name: str) -> tuple[int, int] | None:
    """The one (height, width) the timm model `name` is built for by default, or None where
    it takes any size."""
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:  # a tag timm does not have: said by the weights' checks
        cfg = timm.models.get_pretrained_cfg(name.split(".")[0])
    if cfg is None or not cfg.fixed_input_size:
        return None
    return tuple(cfg.input_size[-2:])


def weights_problem(path: Path) -> str | None:
    """Why `path` cannot be a weights file (missing, neither safetensors nor a PyTorch
    checkpoint), or None."""
    if not path.is_file():
        return f"weights file {path} does not exist"
    if path.suffix == ".safetensors":
        return _safetensors_problem(path)
    with path.open("rb") as fh:
        head = fh.read(2)
    if not zipfile.is_zipfile(path) and head[:1] != b"\x80":  # torch.save: a zip, or a pickle
        return (
            f"{path} is not a PyTorch checkpoint (neither torch.save's zip archive nor a "
            "pickle); give a state dict saved with torch.save(model.state_dict(), path)"
        )
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
        if "weights_only" in str(exc):  # a pickle of arbitrary objects, not plain tensors
            first = "it holds Python objects besides tensors"
        return (
            f"{path} is not a PyTorch checkpoint of plain tensors ({first or type(exc).__name__}); "
            "give a state dict saved with torch.save(model.state_dict(), path)"
        )
    return None


def _safetensors_problem(path: Path) -> str | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
        return f"{path} is not a readable safetensors file ({first or type(exc).__name__})"
    return None


def file_problems(found: Mapping[str, LocalWeights]) -> list[str]:
    """For each weights file given by path (`pretrained: {model: file}`), one line if timm would
    not load it into the model (keys it lacks, shapes that differ): said before any run starts,
    not by every run of the model once Ray is up. Cached hub weights are the model's by name."""
    problems = []
    for model, local in found.items():
        if not local.source.file:
            continue
        try:
            problem = mismatch(timm_model_of(model), local.path, forgiven=True)
        except Exception as exc:  # unreadable after all: say so rather than fail here
            problem = f"cannot be read ({str(exc).strip()[:120] or type(exc).__name__})"
        if problem:
            problems.append(f"pretrained.{model}: {local.path} {problem}")
    return problems


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def classifier_problem(name: str, image_size: int | None = None) -> str | None:
    """Why `name` is no timm model (with similar names), or None; with `image_size`, also why
    it cannot take images of that size (a model built for one input size: ViT, Swin, ...)."""
    if timm.is_model(name):
        return fixed_size_problem(name, image_size) if image_size else None
    from kdray.tasks.volume_models import rank_problem

    if problem := rank_problem(name):
        return problem
    close = timm.list_models(f"*{name.split('_')[0][:6]}*")[:5]
    hint = f"; similar: {close}" if close else ""
    return f"{name!r} is not a timm model{hint}"


def fixed_size_problem(name: str, image_size: int) -> str | None:
    """Why the timm model `name`, built for one input size, cannot be built for `image_size`
    pixel images (its patch or window sizes do not fit them), or None: built for that size on
    the meta device and run once there."""
    if not size_kwargs(name, image_size):
        return None
    try:
        with torch.device("meta"):
            model = create_model(name, 2, 1, image_size=image_size)
            model.eval()(torch.empty(1, 1, image_size, image_size))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        height, width = native_size(name)
        size = height if height == width else f"{height}x{width}"
        return (
            f"{name!r} cannot be built for {image_size} px images ({first}); set "
            f"data.image_size: {size} (its own size), or use another model"
        )
    return None
