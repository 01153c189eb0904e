"""Read NIfTI volumes (`.nii`, `.nii.gz`) with nibabel; every problem one line naming the file.

The header is read first (cheap: shape, spacing from `get_zooms()`, orientation from the affine,
sform else qform), so a folder's pairs are checked before any voxel is decoded. Voxels are
reoriented to RAS+ (`as_closest_canonical`) so every volume has the same axis order; the spacing
is then the canonical image's. Images are decoded as float32 (`get_fdata` would give float64),
labels from the raw data object, so integer labels stay integers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdray.data.volume_base import Spacing

NIFTI_SUFFIXES = (".nii.gz", ".nii")
SPACING_RTOL = 1e-3


@dataclass(frozen=True)
class NiftiHeader:
    """What a NIfTI header says about its volume, before any voxel is decoded."""

    path: Path
    shape: tuple[int, ...]
    spacing: Spacing
    axcodes: tuple[str, ...]


def is_nifti(path: Path) -> bool:
    return path.name.endswith(NIFTI_SUFFIXES)


def read_header(path: Path) -> NiftiHeader:
    """The file's header; ValueError naming the file if it is no readable NIfTI or not 3D (a
    4D file whose extra axes are all 1 counts as 3D)."""
    img = _load(path)
    shape = tuple(int(n) for n in img.shape)
    if len(shape) != 3 and not (len(shape) > 3 and all(n == 1 for n in shape[3:])):
        raise ValueError(
            f"{path}: a {len(shape)}D volume of shape {list(shape)}, a 3D volume is expected "
            "(one channel per file; split multi-channel images into _0000, _0001, ... files)"
        )
    from nibabel.orientations import aff2axcodes

    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return NiftiHeader(path, shape[:3], zooms, tuple(aff2axcodes(img.affine)))


def pair_problem(image: NiftiHeader, label: NiftiHeader) -> str | None:
    """Why a label file does not describe its image's voxels (shape, spacing, orientation)."""
    where = f"{label.path}: label of {image.path.name}"
    if label.shape != image.shape:
        return f"{where} has shape {list(label.shape)}, the image {list(image.shape)}; give a " \
            "label of its image's shape"  # fmt: skip
    if not np.allclose(label.spacing, image.spacing, rtol=SPACING_RTOL):
        return f"{where} has spacing {_mm(label.spacing)} mm, the image {_mm(image.spacing)} " \
            "mm; resample the label onto its image"  # fmt: skip
    if label.axcodes != image.axcodes:
        return f"{where} is oriented {''.join(label.axcodes)}, the image " \
            f"{''.join(image.axcodes)}; save both with the same affine"  # fmt: skip
    return None


def read_image(path: Path) -> tuple[np.ndarray, Spacing]:
    """The volume as float32 in RAS+ order, and its spacing in mm per array axis."""
    img = _canonical(path)
    try:
        data = img.get_fdata(dtype=np.float32)
    except Exception as exc:  # a truncated or corrupt file fails here, not at the header
        raise ValueError(f"{path}: unreadable NIfTI data ({_first_line(exc)})") from None
    return _squeeze(data), _spacing(img)


def read_label(path: Path) -> np.ndarray:
    """The label volume in RAS+ order as int64 class indices; ValueError if its values are not
    whole numbers."""
    img = _canonical(path)
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise ValueError(f"{path}: unreadable NIfTI data ({_first_line(exc)})") from None
    data = _squeeze(data)
    whole = np.issubdtype(data.dtype, np.integer) or (
        np.all(np.isfinite(data)) and np.all(np.mod(data, 1) == 0)
    )
    if not whole:
        raise ValueError(f"{path}: label values are not whole numbers (class indices)")
    return data.astype(np.int64)


def _load(path: Path):
    import nibabel as nib

    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel's ImageFileError, gzip's errors, struct errors
        raise ValueError(f"{path}: unreadable NIfTI ({_first_line(exc)})") from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise ValueError(f"{path}: a {type(img).__name__}, not a NIfTI volume")
    return img


def _canonical(path: Path):
    import nibabel as nib

    return nib.as_closest_canonical(_load(path))


def _spacing(img) -> Spacing:
    zooms = img.header.get_zooms()[:3]
    return (float(zooms[0]), float(zooms[1]), float(zooms[2]))


def _squeeze(data: np.ndarray) -> np.ndarray:
    return data.reshape(data.shape[:3]) if data.ndim > 3 else data


def _mm(spacing: Spacing) -> str:
    return "x".join(f"{s:g}" for s in spacing)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else type(exc).__name__
