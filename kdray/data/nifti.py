"""Read NIfTI volumes (`.nii`, `.nii.gz`) with nibabel; every problem one line naming the file.

The header is read first (cheap: shape, spacing from `get_zooms()`, orientation from the affine,
sform else qform), so a folder's pairs are checked before any voxel is decoded. Voxels are
reoriented to RAS+ (`as_closest_canonical`) so every volume has the same axis order; the spacing
is then the canonical image's. Images are decoded as float32 (`get_fdata` would give float64),
labels from the raw data object, so integer labels stay integers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdray.data.volume_base import Spacing

NIFTI_SUFFIXES = (".nii.gz", ".nii")
SPACING_RTOL = 1e-3


class MultiChannelError(ValueError):
    """A 4D (multi-channel) file: the data kinds say it once for all such files."""


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
        raise MultiChannelError(
            f"{path}: a {len(shape)}D volume of shape {list(shape)}, a 3D volume is expected "
            "(multi-channel volumes are not supported yet)"
        )
    from nibabel.orientations import aff2axcodes

    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return NiftiHeader(path, shape[:3], zooms, tuple(aff2axcodes(img.affine)))


def multi_channel_line(lines: list[str]) -> str:
    """One line for all the 4D files: the first file's, and how many more there are."""
    more = f"; and {len(lines) - 1} more 4D files" if len(lines) > 1 else ""
    return lines[0] + more


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
    bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    if bad:
        raise ValueError(f"{path}: {bad} voxels are NaN or infinite; fix or drop the volume")
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
        with _nibabel_log() as messages:
            img = nib.load(str(path))
    except Exception as exc:  # nibabel's ImageFileError, gzip's errors, struct errors
        raise ValueError(f"{path}: unreadable NIfTI ({_first_line(exc)})") from None
    if any("should be non-zero" in m for m in messages):  # nibabel would say 1 mm instead
        raise ValueError(f"{path}: the header's voxel size (pixdim) is 0 mm, so its spacing is "
                         "unknown; fix the header")  # fmt: skip
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise ValueError(f"{path}: a {type(img).__name__}, not a NIfTI volume")
    return img


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _nibabel_log() -> Iterator[list[str]]:
    """What nibabel logs while a header is read (its fixes of bad headers), kept off the
    terminal."""
    logger = logging.getLogger("nibabel.global")
    collect = _Collect()
    saved = logger.handlers, logger.propagate
    logger.handlers, logger.propagate = [collect], False
    try:
        yield collect.messages
    finally:
        logger.handlers, logger.propagate = saved


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
