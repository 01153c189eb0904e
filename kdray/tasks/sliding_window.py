"""Whole-volume inference by sliding window (MONAI's `sliding_window_inference`).

A segmenter trained on patches predicts a volume larger than its patch window by window; the
overlapping windows' logits are blended (`gaussian`: each window weighted towards its centre,
where its receptive field sees real voxels, not padding) and cropped back to the volume. A
volume smaller than the window is padded and cropped back. MONAI accumulates in the input's
dtype, so logits are summed in float32 whatever the model runs in.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


@torch.inference_mode()
def sliding_window_logits(
    model: nn.Module,
    volumes: torch.Tensor,
    roi_size: Sequence[int],
    overlap: float = 0.5,
    mode: str = "gaussian",
    sw_batch_size: int = 2,
) -> torch.Tensor:
    """Logits (N, classes, D, H, W) of `volumes` (N, channels, D, H, W), window by window."""
    from monai.inferers import sliding_window_inference

    was_training = model.training
    model.eval()
    try:
        return sliding_window_inference(
            volumes.float(), tuple(roi_size), sw_batch_size, model, overlap=overlap, mode=mode
        )
    finally:
        model.train(was_training)
