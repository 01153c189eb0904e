"""The OpenCV back end of `kdray.train.device_augment`: the device steps of a batch on the CPU.

The same per-sample parameters as the torch back end, applied the way a CPU does them fast:
each geometric group's matrix through `cv2.warpAffine` on uint8 (`cv2.flip` for a pure flip,
nothing for the identity), photometric steps before the last geometric one as uint8 lookup
tables (noise in float, rounded back), and the photometric steps after it fused with the
conversion to float and the normalisation into one float lookup table per sample and channel,
written straight into the (N, C, H, W) batch.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from kdray.train.augment_steps import BrightnessContrast, Group, geometry, matrices

CV_DEPTHS = (np.uint8, np.uint16, np.int16, np.float32)  # what cv2.warpAffine takes
HFLIP, VFLIP, BOTH = 1, 0, -1  # cv2.flip codes


def run_opencv(aug, images: torch.Tensor, masks: torch.Tensor | None, draws: dict):
    """(float32 (N, C, H, W) normalised images, masks) for a uint8 (N, H, W, C) CPU batch."""
    n, h, w, c = images.shape
    x = images.numpy().reshape(n, h, w) if c == 1 else images.numpy()
    m = None if masks is None else masks.numpy()
    tail = len(aug.groups)
    while tail and isinstance(aug.groups[tail - 1].steps[0][1], BrightnessContrast):
        tail -= 1  # these fold into the normalisation's lookup table
    for group in aug.groups[:tail]:
        if group.geometric:
            x, m = warp(group, x, m, draws)
            continue
        place, step = group.steps[0]
        if isinstance(step, BrightnessContrast):
            x = levels(x, *step.gains(draws[place]))
        else:
            x = noisy(x, step, draws[place])
    out = normalised(x, c, aug.groups[tail:], draws, aug.mean, aug.std)
    return torch.from_numpy(out), (None if m is None else torch.from_numpy(m))


def flip_code(matrix: np.ndarray, h: int, w: int) -> int | None:
    """cv2.flip's code when `matrix` is a pure flip, None otherwise."""
    for code, (sx, sy) in {HFLIP: (-1, 1), VFLIP: (1, -1), BOTH: (-1, -1)}.items():
        flip = np.array([[sx, 0, w - 1 if sx < 0 else 0], [0, sy, h - 1 if sy < 0 else 0]])
        if np.allclose(matrix[:2], flip, atol=1e-9):
            return code
    return None


def warp(group: Group, x: np.ndarray, m: np.ndarray | None, draws: dict):
    """One geometric group per sample: identity kept, flips flipped, the rest warped."""
    n, h, w = x.shape[:3]
    forward = matrices(group, draws, h, w)
    mode, border_mode, fill, fill_mask = geometry(group)
    flags = cv2.INTER_LINEAR if mode == "bilinear" else cv2.INTER_NEAREST
    edges = cv2.BORDER_REPLICATE if border_mode == "replicate" else cv2.BORDER_CONSTANT
    channels = 1 if x.ndim == 3 else x.shape[3]
    border = fill * channels if len(fill) == 1 else fill
    out = np.empty_like(x)
    moved = None if m is None else np.empty_like(m)
    work = None if m is None else (m if m.dtype in CV_DEPTHS else m.astype(np.float32))
    for i in range(n):
        if np.allclose(forward[i], np.eye(3), atol=1e-9):
            out[i] = x[i]
            if m is not None:
                moved[i] = m[i]
            continue
        code = flip_code(forward[i], h, w)
        if code is not None:
            cv2.flip(x[i], code, dst=out[i])
            if m is not None:
                moved[i] = cv2.flip(work[i], code)
            continue
        size, affine = (w, h), forward[i, :2]
        cv2.warpAffine(
            x[i], affine, size, dst=out[i], flags=flags, borderMode=edges, borderValue=border,
        )  # fmt: skip
        if m is not None:
            moved[i] = cv2.warpAffine(
                work[i], affine, size, flags=cv2.INTER_NEAREST, borderMode=edges,
                borderValue=fill_mask,
            )  # fmt: skip
    return out, moved


def levels(x: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Brightness and contrast on uint8 (rounded, clipped), one lookup table per sample."""
    values = np.arange(256, dtype=np.float64)
    out = np.empty_like(x)
    for i in range(len(x)):
        lut = np.clip(np.rint(values * alpha[i] + beta[i]), 0, 255).astype(np.uint8)
        cv2.LUT(x[i], lut, dst=out[i])
    return out


def noisy(x: np.ndarray, step, u: np.ndarray) -> np.ndarray:
    """Gaussian noise (the torch back end's own values), rounded back to uint8."""
    t = torch.from_numpy(x)
    t = t[:, None] if t.ndim == 3 else t.permute(0, 3, 1, 2)
    noise = step.noise(u, tuple(t.shape), t.device)
    t = (t.float() + noise).clamp_(0, 255).round_().to(torch.uint8)
    t = t[:, 0] if x.ndim == 3 else t.permute(0, 2, 3, 1)
    return t.contiguous().numpy()


def normalised(x: np.ndarray, c: int, tail: list[Group], draws: dict, mean, std) -> np.ndarray:
    """float32 (N, C, H, W): the last brightness/contrast steps and the normalisation as one
    lookup table per sample and channel, written plane by plane into the batch."""
    n, h, w = x.shape[:3]
    values = np.repeat(np.arange(256, dtype=np.float64)[None], n, axis=0)
    for group in tail:
        place, step = group.steps[0]
        alpha, beta = step.gains(draws[place])
        values = np.clip(values * alpha[:, None] + beta[:, None], 0, 255)
    scale = (1 / (255 * np.asarray(std, np.float64)))[None, :, None]
    shift = (-np.asarray(mean, np.float64) / np.asarray(std, np.float64))[None, :, None]
    luts = (values[:, None, :] * scale + shift).astype(np.float32)  # (N, C, 256)
    out = np.empty((n, c, h, w), np.float32)
    for i in range(n):
        planes = (x[i],) if c == 1 else cv2.split(x[i])
        for ch in range(c):
            cv2.LUT(planes[ch], luts[i, ch], dst=out[i, ch])
    return out
