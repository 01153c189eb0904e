"""Train-time augmentation on the training device, per batch, seeded per sample.

A job's augmentation is a list of albumentations transforms (`kdray.data.augment`). Those with a
batched version (`kdray.train.augment_steps.device_step`: flips, `Affine`/`ShiftScaleRotate`,
`RandomResizedCrop` to the image's own size, `RandomBrightnessContrast`, `GaussNoise`) run on
whole uint8 batches where the model trains, followed by the conversion to float and the
normalisation; the steps before the last one without a batched version stay with albumentations
in the loader (`split_pipeline`). Two back ends apply the same per-sample parameters:

- `torch` (CUDA and any non-CPU device): consecutive geometric steps composed into one matrix
  per sample and applied by one `affine_grid` + `grid_sample` over the batch (bilinear or
  nearest, constant fill), photometric steps element-wise, float32 throughout;
- `opencv` (CPU tensors, `kdray.train.device_augment_cpu`): the same matrices through
  `cv2.warpAffine` / `cv2.flip` per sample on uint8, and the last photometric steps fused with
  the normalisation into one lookup table per sample and channel. On one CPU core
  `grid_sample` costs ~2 ms per 224-px RGB image, four times albumentations' whole pipeline;
  OpenCV's fixed-point warp ~0.3 ms (bench/README.md "Loader").

The two agree to interpolation rounding (a grey level or so; tests/test_device_augment.py).
A mask (a segmentation target, (N, H, W) integers, -1 unknown) goes through every geometric step
with nearest-neighbour sampling; the pixels a step fills in from outside the image become -1
(unknown: left out of the loss), as on the loader path (`kdray.data.augment.augment_with_mask`);
photometric steps leave it alone.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from kdray.train.augment_steps import (
    BrightnessContrast,
    Step,
    geometry,
    groups,
    matrices,
    sample_keys,
    to_device,
    uniforms,
)
from kdray.train.device_augment_cpu import run_opencv


def backend_for(device, backend: str = "auto") -> str:
    """The back end that augments batches on `device`: OpenCV on the CPU, torch elsewhere."""
    if backend != "auto":
        return backend
    return "opencv" if torch.device(device).type == "cpu" else "torch"


class DeviceAugment:
    """The device steps of a job's pipeline plus the normalisation: uint8 (N, H, W, C) images
    in, float32 (N, C, H, W) normalised images out, on the images' device; `masks` (N, H, W)
    follow every geometric step. `steps`: (place in the pipeline, step) pairs, the place
    keying each step's random numbers. `backend`: "auto" (OpenCV for CPU tensors, torch
    elsewhere), "torch" or "opencv"."""

    def __init__(
        self, steps: list[tuple[int, Step]], run_seed: int, mean, std, backend: str = "auto"
    ):
        self.steps, self.run_seed, self.backend = list(steps), run_seed, backend
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        self.groups = groups(self.steps)

    def draws(self, indices, epoch: int) -> dict[int, np.ndarray]:
        """Each step's random numbers for the samples `indices` of `epoch`."""
        keys = sample_keys(self.run_seed, epoch, torch.as_tensor(indices).cpu().numpy())
        return {place: uniforms(keys, place, step.slots) for place, step in self.steps}

    def __call__(self, images: torch.Tensor, indices, epoch: int, masks=None):
        """(images, masks) of the samples `indices` in `epoch`, augmented and normalised."""
        draws = self.draws(indices, epoch)
        if masks is not None:  # shifted by one: pixels filled in from outside (fill_mask 0)
            masks = masks.long() + 1  # come back as -1, unknown, as `augment_with_mask` does
        run = run_opencv if backend_for(images.device, self.backend) == "opencv" else run_torch
        images, masks = run(self, images, masks, draws)
        return images, (None if masks is None else masks - 1)


def _theta(matrices: np.ndarray, height: int, width: int) -> np.ndarray:
    """`affine_grid`'s (N, 2, 3): output -> source in normalised coordinates
    (align_corners=False: pixel i's centre at (2i + 1) / size - 1)."""
    to_norm = np.array([[2 / width, 0, 1 / width - 1], [0, 2 / height, 1 / height - 1], [0, 0, 1]])
    from_norm = np.linalg.inv(to_norm)
    return (to_norm @ np.linalg.inv(matrices) @ from_norm)[:, :2]


def _sample(x: torch.Tensor, grid: torch.Tensor, mode: str, border: str, fill):
    """grid_sample with a constant fill: blend towards `fill` by how much of each output
    pixel's footprint falls outside the image (what cv2's BORDER_CONSTANT does); or the edge
    pixels repeated (BORDER_REPLICATE)."""
    if border == "replicate":
        return F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)
    if not any(fill):
        return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)
    ones = torch.ones_like(x[:, :1])
    out = F.grid_sample(
        torch.cat([x, ones], 1), grid, mode=mode, padding_mode="zeros", align_corners=False
    )
    value = to_device(fill, x.device).view(1, -1, 1, 1)
    return out[:, :-1] + value * (1 - out[:, -1:])


def run_torch(aug: DeviceAugment, images: torch.Tensor, masks, draws: dict):
    """The batch on its own device: one grid_sample per geometric group, element-wise
    photometric steps, float32 throughout."""
    n, h, w, c = images.shape
    device = images.device
    x = images.permute(0, 3, 1, 2).float()
    for group in aug.groups:
        if group.geometric:
            forward = matrices(group, draws, h, w)
            if np.allclose(forward, np.eye(3)):
                continue
            theta = to_device(_theta(forward, h, w), device)
            grid = F.affine_grid(theta, [n, c, h, w], align_corners=False)
            mode, border, fill, fill_mask = geometry(group)
            x = _sample(x, grid, mode, border, fill)
            if masks is not None:
                moved = _sample(masks[:, None].float(), grid, "nearest", border, (fill_mask,))
                masks = moved[:, 0].round().to(masks.dtype)
            continue
        place, step = group.steps[0]
        if isinstance(step, BrightnessContrast):
            alpha, beta = step.gains(draws[place])
            gains = to_device(np.stack([alpha, beta]), device).view(2, n, 1, 1, 1)
            x = (x * gains[0] + gains[1]).clamp_(0, 255)
        else:
            x = (x + step.noise(draws[place], (n, c, h, w), device)).clamp_(0, 255)
    norm = to_device(np.stack([1 / (255 * aug.std), -aug.mean / aug.std]), device)
    return torch.addcmul(norm[1].view(1, -1, 1, 1), x, norm[0].view(1, -1, 1, 1)), masks
