"""A run's deployable network on disk (`model.pt`): weights plus what rebuilds and feeds it."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from kdray.store.atomic import atomic_write
from kdray.tasks import DEFAULT_TASK, get_task


def save_model(path: str | Path, module: nn.Module, **meta) -> None:
    """Write weights plus what is needed to rebuild and feed the model (name, classes, mean/std)."""
    with atomic_write(Path(path), "wb") as fh:
        torch.save({"state_dict": module.state_dict(), **meta}, fh)


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a model saved by `save_model`; returns (model in eval mode, its metadata)."""
    path = Path(path)
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"model checkpoint {path} does not exist") from None
    except Exception as exc:
        raise ValueError(f"model checkpoint {path} is unreadable or corrupt: {exc}") from exc
    try:
        task = get_task(saved.get("task") or DEFAULT_TASK)  # files before tasks: single-label
        model = task.create_model(
            saved["model"],
            saved["num_classes"],
            saved["in_chans"],
            rank=saved.get("rank", 2),
            image_size=saved.get("image_size"),  # a ViT's, built for the data's size
        )
        model.load_state_dict(saved["state_dict"])
    except (KeyError, RuntimeError) as exc:
        raise ValueError(f"model checkpoint {path} does not match its model: {exc}") from exc
    meta = {k: v for k, v in saved.items() if k != "state_dict"}
    return model.to(device).eval(), meta
