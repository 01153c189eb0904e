"""How a weights file's state dict differs from a timm model's: what a load error means, and
(`forgiven`) whether timm would load it at all, checked before any run starts."""

from __future__ import annotations

import zipfile
from pathlib import Path

import timm
import torch


def saved_shapes(path: Path) -> dict[str, tuple[int, ...]] | str:
    """Each tensor's shape in a weights file (`module.` prefixes dropped; a checkpoint's
    `state_dict` / `model` entry), or what the file holds instead. Tensors are not read:
    safetensors' header, a torch.save zip memory-mapped."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            saved = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    else:
        saved = torch.load(
            path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path)
        )
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(saved, dict) and isinstance(saved.get(key), dict):
            saved = saved[key]
            break
    if not isinstance(saved, dict):
        return f"holds a {type(saved).__name__}, not a state dict"
    return {k.removeprefix("module."): tuple(getattr(v, "shape", ())) for k, v in saved.items()}


def model_shapes(name: str) -> tuple[dict[str, tuple[int, ...]], dict]:
    """timm's `name` (ImageNet head and stem, as weights files have them), built on the meta
    device (no memory, no time): each tensor's shape, and its pretrained config."""
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}, model.pretrained_cfg


def mismatch(name: str, path: Path, examples: int = 2, forgiven: bool = False) -> str | None:
    """How the state dict in `path` differs from timm's `name`: missing and unexpected keys,
    mismatched shapes, with examples. `forgiven`: leave out what timm's loading forgives (the
    classifier, which it drops for another class count; the first convolution's input
    channels, which it adapts; unexpected keys, which a non-strict load skips)."""
    saved = saved_shapes(path)
    if isinstance(saved, str):
        return saved
    expected, cfg = model_shapes(name)
    skipped = set()
    if forgiven:
        heads = cfg.get("classifier") or ()
        for head in [heads] if isinstance(heads, str) else heads:
            skipped |= {k for k in expected if k.startswith(f"{head}.")}
    first_conv = f"{cfg.get('first_conv')}.weight"
    missing = [k for k in expected if k not in saved and k not in skipped]
    unexpected = [k for k in saved if k not in expected] if not forgiven else []
    shapes = [
        f"{k}: file {list(saved[k])}, model {list(v)}"
        for k, v in expected.items()
        if k in saved and k not in skipped and _differ(saved[k], v, forgiven and k == first_conv)
    ]
    parts = [
        f"{len(items)} {what} (e.g. {'; '.join(items[:examples])})"
        for what, items in (
            ("keys missing", missing),
            ("unexpected", unexpected),
            ("shapes differ", shapes),
        )
        if items
    ]
    if not parts:
        return None
    return f"does not fit {name}: " + ", ".join(parts) + f"; give weights of {name} itself"


def _differ(saved: tuple, expected: tuple, any_channels: bool) -> bool:
    if any_channels and len(saved) == len(expected) == 4:  # out, in, kh, kw: `in` is adapted
        return (saved[0], *saved[2:]) != (expected[0], *expected[2:])
    return tuple(saved) != tuple(expected)
