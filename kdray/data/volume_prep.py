"""Prepare one volume before it is cached, with MONAI's transforms: resample to a target spacing
(`Spacing`: trilinear for the image, nearest for its mask), resize to a target shape
(`Resize`), clip to a CT window and scale to 0..1 (`ScaleIntensityRange`), normalise per volume
(`NormalizeIntensity`: zero mean, unit variance).

Volumes reach here in RAS+ order, so an axis-aligned affine `diag(spacing)` describes them;
MONAI's `Spacing` keeps the outer voxels' centres, so a side of n voxels at spacing s becomes
`(n - 1) * s / target + 1` voxels rounded up (10 at 2.5 mm -> 24 at 1 mm, not 25).
"""

from __future__ import annotations

import numpy as np
import torch

from kdray.data.volume_base import SIZE_MAX, Spacing, Volume, VolumeConfigBase


def prepare_volume(volume: Volume, cfg: VolumeConfigBase) -> Volume:
    """The volume resampled, resized, windowed and normalised as `cfg` says."""
    image, mask, spacing = volume.image, volume.mask, volume.spacing
    if cfg.spacing is not None and not np.allclose(spacing, cfg.spacing, rtol=1e-4):
        image = _resample(image, spacing, cfg.spacing, "bilinear")
        if mask is not None:
            mask = _resample(mask, spacing, cfg.spacing, "nearest")
        spacing = tuple(float(s) for s in cfg.spacing)
    if cfg.size is not None and tuple(image.shape) != tuple(cfg.size):
        spacing = tuple(  # Resize maps the volume's extent (n voxels of s mm) onto m voxels
            float(s * n / m) for s, n, m in zip(spacing, image.shape, cfg.size, strict=True)
        )
        image = _resize(image, cfg.size, "trilinear")
        if mask is not None:
            mask = _resize(mask, cfg.size, "nearest-exact")
    image = intensities(image, cfg)
    if mask is not None:
        mask = np.asarray(mask).astype(np.int8)
    return Volume(image, spacing, mask=mask, label=volume.label)


def spacing_problem(
    cfg: VolumeConfigBase, headers: list[tuple[str, tuple[int, ...], Spacing]]
) -> str | None:
    """One line naming `data.spacing` if it would resample a volume (file, shape, spacing, from
    its header: nothing decoded) to over `SIZE_MAX` or under 1 voxel along a side."""
    if cfg.spacing is None:
        return None
    bad = []
    for where, shape, spacing in headers:
        sides = [n * s / t for n, s, t in zip(shape, spacing, cfg.spacing, strict=True)]
        # a side of one voxel (a single slice) stays one voxel: only shrinking a longer side
        # below one voxel is refused
        kept = zip(sides, shape, strict=True)
        if not all(side <= SIZE_MAX and (side >= 1 or n == 1) for side, n in kept):
            bad.append((where, sides))
    if not bad:
        return None
    where, sides = bad[0]
    more = f" and {len(bad) - 1} more volumes" if len(bad) > 1 else ""
    shown = "x".join(f"{side:.3g}" for side in sides)
    return f"data.spacing {list(cfg.spacing)}: resamples {where}{more} to {shown} voxels; " \
        f"choose a spacing that keeps each side 1 to {SIZE_MAX} voxels"  # fmt: skip


def intensities(image: np.ndarray, cfg: VolumeConfigBase) -> np.ndarray:
    """The CT window (clipped, scaled to 0..1), then per-volume normalisation; float32."""
    from monai.transforms import NormalizeIntensity, ScaleIntensityRange

    image = np.asarray(image, dtype=np.float32)
    if cfg.window is not None:
        level, width = cfg.window
        low, high = level - width / 2, level + width / 2
        image = ScaleIntensityRange(low, high, 0.0, 1.0, clip=True, dtype=np.float32)(image)
    if cfg.normalise == "volume":
        image = NormalizeIntensity(dtype=np.float32)(image)
    return np.asarray(image, dtype=np.float32)


def _resample(array: np.ndarray, spacing, target, mode: str) -> np.ndarray:
    from monai.data import MetaTensor
    from monai.transforms import Spacing

    affine = torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64))
    data = MetaTensor(torch.as_tensor(np.asarray(array, dtype=np.float32))[None], affine=affine)
    out = Spacing(pixdim=tuple(target), mode=mode, padding_mode="border")(data)
    return out[0].numpy()


def _resize(array: np.ndarray, size, mode: str) -> np.ndarray:
    from monai.transforms import Resize

    data = torch.as_tensor(np.asarray(array, dtype=np.float32))[None]
    out = Resize(tuple(size), mode=mode, anti_aliasing=False)(data)
    return np.asarray(out[0])
