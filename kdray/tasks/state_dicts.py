"""How a weights file's state dict differs from a timm model's: what a load error means."""

from __future__ import annotations

from pathlib import Path

import timm
import torch


def mismatch(name: str, path: Path, examples: int = 2) -> str | None:
    """How the state dict in `path` differs from timm's `name` (ImageNet head and stem, as
    weights files have them): missing and unexpected keys, mismatched shapes, with examples."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        saved = load_file(str(path), device="cpu")
    else:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(saved, dict) and isinstance(saved.get(key), dict):
            saved = saved[key]
            break
    if not isinstance(saved, dict):
        return f"holds a {type(saved).__name__}, not a state dict"
    saved = {k.removeprefix("module."): v for k, v in saved.items()}
    expected = timm.create_model(name, pretrained=False).state_dict()
    missing = [k for k in expected if k not in saved]
    unexpected = [k for k in saved if k not in expected]
    shapes = [
        f"{k}: file {list(getattr(saved[k], 'shape', []))}, model {list(v.shape)}"
        for k, v in expected.items()
        if k in saved and getattr(saved[k], "shape", None) != v.shape
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
