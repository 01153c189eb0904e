"""The batched augmentation steps: which albumentations transforms have one, their per-sample
random numbers, and the per-sample parameters they draw (geometric steps as matrices).

Each step's random numbers come from a counter-based hash of (run seed, epoch, sample index,
step, slot) (`uniforms`): a view depends on nothing else (not on the batch, the number of loader
processes, which process drew it, or the device). Parameters follow albumentations 2.0.8's own
(its constructors parse and check a job's arguments; the ranges, the affine matrix about the
pixel grid's centre, the translation truncated to whole pixels, the crop attempts are
albumentations'), but the draws are ours: the views are not albumentations' views.
`kdray.train.device_augment` applies them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch

from kdray.data.augment import A, build_transform, pipeline_spec

GOLDEN = 0x9E3779B97F4A7C15
TO_UNIT = 2.0**-53
ATTEMPTS = 10  # RandomResizedCrop: tries before the central-crop fallback (as albumentations)


# --- per-sample random numbers -------------------------------------------------------------


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 arrays (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def sample_keys(run_seed: int, epoch: int, indices) -> np.ndarray:
    """One 64-bit key per sample from (run seed, epoch, index)."""
    with np.errstate(over="ignore"):
        base = _mix(np.array([run_seed % 2**64], np.uint64) + np.uint64(GOLDEN))
        base = _mix(base ^ (np.array([epoch % 2**64], np.uint64) * np.uint64(GOLDEN)))
        index = np.asarray(indices, dtype=np.int64).astype(np.uint64)
        return _mix(base ^ _mix(index + np.uint64(3 * GOLDEN % 2**64)))


def uniforms(keys: np.ndarray, step: int, count: int) -> np.ndarray:
    """(N, count) floats in [0, 1): slot `j` of step `step` of each sample."""
    slots = np.arange(count, dtype=np.uint64) + np.uint64(step * 256 + 1)
    with np.errstate(over="ignore"):
        z = _mix(keys[:, None] + slots[None, :] * np.uint64(GOLDEN))
    return (z >> np.uint64(11)).astype(np.float64) * TO_UNIT


def _uniform(u: np.ndarray, low_high) -> np.ndarray:
    low, high = low_high
    return low + (high - low) * u


# --- the steps -------------------------------------------------------------------------------


@dataclass
class Step:
    """One device step: `slots` random numbers per sample; `draw` turns them into parameters."""

    p: float
    slots: int = 1
    geometric: bool = False
    mode: str = "bilinear"  # geometric steps: the image's interpolation
    border: str = "constant"  # outside the image: `fill` (or "replicate": the edge pixel)
    fill: tuple[float, ...] = (0.0,)
    fill_mask: float = 0.0

    def on(self, u: np.ndarray) -> np.ndarray:
        return u[:, 0] < self.p


@dataclass
class Flip(Step):
    axis: int = 1  # 1: horizontal (x), 0: vertical (y)
    geometric: bool = True

    def matrices(self, u: np.ndarray, height: int, width: int) -> np.ndarray:
        m = np.repeat(np.eye(3)[None], len(u), axis=0)
        on = self.on(u)
        if self.axis == 1:
            m[on, 0, 0], m[on, 0, 2] = -1.0, width - 1.0
        else:
            m[on, 1, 1], m[on, 1, 2] = -1.0, height - 1.0
        return m


@dataclass
class Affine(Step):
    """albumentations' Affine (and ShiftScaleRotate): scale, translate, rotate, shear."""

    scale: dict = field(default_factory=dict)
    translate_percent: dict | None = None
    translate_px: dict | None = None
    rotate: tuple[float, float] = (0.0, 0.0)
    shear: dict = field(default_factory=dict)
    keep_ratio: bool = False
    balanced_scale: bool = False
    slots: int = 10
    geometric: bool = True

    def matrices(self, u: np.ndarray, height: int, width: int) -> np.ndarray:
        n = len(u)
        if self.translate_px is not None:
            tx = self._randint(u[:, 1], self.translate_px["x"])
            ty = self._randint(u[:, 2], self.translate_px["y"])
        elif self.translate_percent is not None:  # truncated to whole pixels, as albumentations
            tx = np.trunc(_uniform(u[:, 1], self.translate_percent["x"]) * width)
            ty = np.trunc(_uniform(u[:, 2], self.translate_percent["y"]) * height)
        else:
            tx = ty = np.zeros(n)
        shear_x = -np.deg2rad(_uniform(u[:, 3], self.shear["x"]))
        shear_y = -np.deg2rad(_uniform(u[:, 4], self.shear["y"]))
        sx = self._scale(u[:, 5], u[:, 7], self.scale["x"])
        sy = sx if self.keep_ratio else self._scale(u[:, 6], u[:, 8], self.scale["y"])
        angle = np.deg2rad(_uniform(u[:, 9], self.rotate) % 360)
        cx, cy = width / 2 - 0.5, height / 2 - 0.5
        m = np.zeros((n, 3, 3))
        cos, sin = np.cos(angle), np.sin(angle)
        tan_x, tan_y = np.tan(shear_x), np.tan(shear_y)
        # shift_centre @ translate @ shear @ rotate @ scale @ shift_topleft (albumentations)
        m[:, 0, 0] = (cos - tan_x * sin) * sx
        m[:, 0, 1] = (sin + tan_x * cos) * sy
        m[:, 1, 0] = (tan_y * cos - sin) * sx
        m[:, 1, 1] = (tan_y * sin + cos) * sy
        m[:, 0, 2] = cx + tx - m[:, 0, 0] * cx - m[:, 0, 1] * cy
        m[:, 1, 2] = cy + ty - m[:, 1, 0] * cx - m[:, 1, 1] * cy
        m[:, 2, 2] = 1.0
        m[~self.on(u)] = np.eye(3)
        return m

    @staticmethod
    def _randint(u: np.ndarray, low_high) -> np.ndarray:
        low, high = int(low_high[0]), int(low_high[1])
        return low + np.floor(u * (high - low + 1))

    def _scale(self, u: np.ndarray, side: np.ndarray, low_high) -> np.ndarray:
        low, high = low_high
        if not self.balanced_scale:
            return _uniform(u, (low, high))
        below, above = (low, 1.0) if low < 1 else None, (1.0, high) if high > 1 else None
        if below and above:
            return np.where(side < 0.5, _uniform(u, below), _uniform(u, above))
        return _uniform(u, below or above) if (below or above) else np.ones_like(u)


@dataclass
class ResizedCrop(Step):
    """albumentations' RandomResizedCrop to the image's own size: a crop box, resized back."""

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (0.75, 4 / 3)
    slots: int = 1 + 4 * ATTEMPTS
    geometric: bool = True
    border: str = "replicate"  # a box on the image's edge resized as cv2.resize does

    def matrices(self, u: np.ndarray, height: int, width: int) -> np.ndarray:
        x0, y0, w, h = self._boxes(u, height, width)
        sx, sy = width / w, height / h
        m = np.repeat(np.eye(3)[None], len(u), axis=0)
        m[:, 0, 0], m[:, 1, 1] = sx, sy  # dst = (src - box corner + 0.5) * scale - 0.5
        m[:, 0, 2] = (0.5 - x0) * sx - 0.5
        m[:, 1, 2] = (0.5 - y0) * sy - 0.5
        m[~self.on(u)] = np.eye(3)
        return m

    def _boxes(self, u: np.ndarray, height: int, width: int):
        area = height * width
        tries = u[:, 1:].reshape(len(u), ATTEMPTS, 4)
        target = _uniform(tries[..., 0], (self.scale[0] * area, self.scale[1] * area))
        aspect = np.exp(_uniform(tries[..., 1], (math.log(self.ratio[0]), math.log(self.ratio[1]))))
        w = np.round(np.sqrt(target * aspect))
        h = np.round(np.sqrt(target / aspect))
        fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = np.argmax(fits, axis=1)  # the first attempt that fits, as albumentations
        rows = np.arange(len(u))
        w, h = w[rows, first], h[rows, first]
        y0 = np.floor((height - h + 1) * tries[rows, first, 2])
        x0 = np.floor((width - w + 1) * tries[rows, first, 3])
        fallback = ~fits.any(axis=1)
        if fallback.any():  # the central crop of albumentations' fallback
            cw, ch = self._central(height, width)
            w[fallback], h[fallback] = cw, ch
            x0[fallback], y0[fallback] = (width - cw) // 2, (height - ch) // 2
        return x0, y0, w, h

    def _central(self, height: int, width: int) -> tuple[int, int]:
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            return width, round(width / self.ratio[0])
        if in_ratio > self.ratio[1]:
            return round(height * self.ratio[1]), height
        return width, height


@dataclass
class BrightnessContrast(Step):
    """albumentations' RandomBrightnessContrast (brightness by the maximum, 255):
    x * (1 + contrast) + brightness * 255, clipped to [0, 255]."""

    brightness: tuple[float, float] = (-0.2, 0.2)
    contrast: tuple[float, float] = (-0.2, 0.2)
    slots: int = 3

    def gains(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        on = self.on(u)
        alpha = np.where(on, 1.0 + _uniform(u[:, 1], self.contrast), 1.0)
        beta = np.where(on, _uniform(u[:, 2], self.brightness) * 255.0, 0.0)
        return alpha, beta


@dataclass
class GaussNoise(Step):
    """albumentations' GaussNoise: N(mean, std) * 255 added per pixel (and channel, unless
    `per_channel` is false), std and mean drawn per sample, then clipped."""

    std_range: tuple[float, float] = (0.2, 0.44)
    mean_range: tuple[float, float] = (0.0, 0.0)
    per_channel: bool = True
    slots: int = 4

    def noise(self, u: np.ndarray, shape: tuple[int, ...], device) -> torch.Tensor:
        """(N, C, H, W) float32 noise (zero where the step is off), from each sample's key."""
        n, c, h, w = shape
        on = self.on(u)
        std = np.where(on, _uniform(u[:, 1], self.std_range) * 255.0, 0.0)
        mean = np.where(on, _uniform(u[:, 2], self.mean_range) * 255.0, 0.0)
        keys = to_device((u[:, 3] * 2**32).astype(np.int64), device, torch.int64)
        planes = c if self.per_channel else 1
        counter = torch.arange(planes * h * w, device=device, dtype=torch.int64)
        z = standard_normal(keys[:, None], counter[None, :]).view(n, planes, h, w)
        spread = to_device(np.stack([std, mean]), device).view(2, n, 1, 1, 1)
        return (z * spread[0] + spread[1]).expand(n, c, h, w)


def to_device(values, device, dtype=torch.float32) -> torch.Tensor:
    """A batch's small parameter array on `device`; to a GPU through pinned memory without
    blocking (a copy from pageable memory would wait for every queued kernel: one sync per
    step)."""
    tensor = torch.as_tensor(np.asarray(values), dtype=dtype)
    if torch.device(device).type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def _mul32(x: torch.Tensor, m: int) -> torch.Tensor:
    """(x * m) mod 2**32 for x, m < 2**32, without overflowing int64."""
    hi, lo = x >> 16, x & 0xFFFF
    return ((((hi * m) & 0xFFFF) << 16) + lo * m) & 0xFFFFFFFF


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (lowbias32) on int64 tensors holding values below 2**32:
    the same integers on every device."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def standard_normal(keys: torch.Tensor, counter: torch.Tensor) -> torch.Tensor:
    """N(0, 1) per (key, counter) by Box-Muller on two hashed uniforms."""
    k = _hash32(keys)
    u1 = (_hash32((2 * counter) ^ k).float() + 1.0) * 2.0**-32  # (0, 1]
    u2 = _hash32((2 * counter + 1) ^ k).float() * 2.0**-32
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)


# --- which steps run on the device -----------------------------------------------------------


def _fill(value) -> tuple[float, ...]:
    return tuple(float(v) for v in value) if isinstance(value, tuple | list) else (float(value),)


def _mode(flag: int) -> str | None:
    return {cv2.INTER_LINEAR: "bilinear", cv2.INTER_NEAREST: "nearest"}.get(flag)


def device_step(transform, height: int, width: int) -> Step | None:
    """The batched version of an albumentations transform, or None (it stays in the loader):
    flips; Affine/ShiftScaleRotate with a constant border, linear or nearest interpolation
    and no fit_output; RandomResizedCrop to (height, width); RandomBrightnessContrast by the
    maximum without ensure_safe_range; GaussNoise at full resolution."""
    name, p = type(transform).__name__, float(transform.p)
    if name in ("HorizontalFlip", "VerticalFlip"):
        return Flip(p, axis=1 if name == "HorizontalFlip" else 0)
    if type(transform) in (A.Affine, A.ShiftScaleRotate):
        t = transform
        mode = _mode(t.interpolation)
        if (
            mode is None
            or t.mask_interpolation != cv2.INTER_NEAREST
            or t.border_mode != cv2.BORDER_CONSTANT
            or t.fit_output
        ):
            return None
        return Affine(
            p, mode=mode, fill=_fill(t.fill), fill_mask=float(_fill(t.fill_mask)[0]),
            scale=t.scale, translate_percent=t.translate_percent, translate_px=t.translate_px,
            rotate=tuple(t.rotate), shear=t.shear, keep_ratio=t.keep_ratio,
            balanced_scale=t.balanced_scale,
        )  # fmt: skip
    if name == "RandomResizedCrop":
        mode = _mode(transform.interpolation)
        if tuple(transform.size) != (height, width) or mode is None:
            return None
        if transform.mask_interpolation != cv2.INTER_NEAREST:
            return None
        return ResizedCrop(p, mode=mode, scale=tuple(transform.scale), ratio=tuple(transform.ratio))
    if name == "RandomBrightnessContrast":
        if not transform.brightness_by_max or transform.ensure_safe_range:
            return None
        limits = tuple(transform.brightness_limit), tuple(transform.contrast_limit)
        return BrightnessContrast(p, brightness=limits[0], contrast=limits[1])
    if name == "GaussNoise" and transform.noise_scale_factor == 1:
        return GaussNoise(
            p, std_range=tuple(transform.std_range), mean_range=tuple(transform.mean_range),
            per_channel=bool(transform.per_channel),
        )  # fmt: skip
    return None


def split_pipeline(
    augment: bool | list[dict[str, Any]], height: int, width: int
) -> tuple[list[dict[str, Any]], list[tuple[int, Step]]]:
    """(the loader's steps, the device's steps with their place in the pipeline): the device
    takes the longest tail of steps that all have a batched version, so the order holds."""
    spec = pipeline_spec(augment)
    steps = [device_step(build_transform(s), height, width) for s in spec]
    cut = len(steps)
    while cut and steps[cut - 1] is not None:
        cut -= 1
    return list(spec[:cut]), [(i, steps[i]) for i in range(cut, len(steps))]


# --- groups of steps applied as one ----------------------------------------------------------


@dataclass
class Group:
    """Consecutive steps applied as one: geometric steps with one interpolation and fill
    (composed into one matrix per sample), or one photometric step."""

    steps: list[tuple[int, Step]]

    @property
    def geometric(self) -> bool:
        return self.steps[0][1].geometric


def _joinable(group: Group, step: Step) -> bool:
    if not (group.geometric and step.geometric):
        return False
    if isinstance(step, Flip):
        return True
    same = [s for _, s in group.steps if not isinstance(s, Flip)]
    return not same or _sampling(same[0]) == _sampling(step)


def _sampling(step: Step) -> tuple:
    return step.mode, step.border, step.fill, step.fill_mask


def groups(steps: list[tuple[int, Step]]) -> list[Group]:
    out: list[Group] = []
    for place, step in steps:
        if out and _joinable(out[-1], step):
            out[-1].steps.append((place, step))
        else:
            out.append(Group([(place, step)]))
    return out


def geometry(group: Group) -> tuple[str, str, tuple[float, ...], float]:
    """(interpolation, border, fill, fill_mask) of a geometric group (flips alone: exact)."""
    for _, step in group.steps:
        if not isinstance(step, Flip):
            return _sampling(step)
    return "nearest", "constant", (0.0,), 0.0


def matrices(group: Group, draws: dict, height: int, width: int) -> np.ndarray:
    """Each sample's forward matrix (source pixel -> output pixel) for a geometric group: its
    steps composed in order."""
    total = None
    for place, step in group.steps:
        m = step.matrices(draws[place], height, width)
        total = m if total is None else m @ total
    return total
