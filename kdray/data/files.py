"""Image files on disk as a split source, plus the helpers file-based data kinds share.

`FileSource` decodes one file per `image(i)` call (PNG/JPEG/BMP/TIFF through PIL, `.dcm` through
pydicom), always converting the mode explicitly to 8-bit gray or RGB. The other helpers build
file lists without decoding anything: dropping or reporting rows whose file is missing, seeded
selection that does not depend on numpy's random streams, and capping long problem lists.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from kdray.data.base import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm")
MAX_PROBLEM_LINES = 50
SKIP_HINT = "fix or restore it, or set data.on_bad_image: skip"


@dataclass
class FileSource:
    """One split as a list of image files; `dropped` names the rows left out (missing files)."""

    paths: list[Path]
    labels: np.ndarray
    groups: np.ndarray | None = None
    dropped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # what was let pass (duplicate rows, ...)
    notes: list[str] = field(default_factory=list)  # how the kind made the split (MURA's test)

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, index: int) -> np.ndarray:
        return read_image(self.paths[index])

    def describe(self, index: int) -> str:
        return str(self.paths[index])


# --- decoding ---------------------------------------------------------------------------------


def read_image(path: str | Path) -> np.ndarray:
    """Decode one file to uint8 (H, W) gray or (H, W, 3) RGB; raises if it is unreadable."""
    path = Path(path)
    if path.suffix.lower() == ".dcm":
        return read_dicom(path)
    with Image.open(path) as img:
        img.load()  # decode now: a truncated file raises here, not later
        img = ImageOps.exif_transpose(img)
        return _pil_to_array(img)


def _pil_to_array(img: Image.Image) -> np.ndarray:
    if img.mode in ("L", "RGB"):
        return np.asarray(img, dtype=np.uint8)
    if img.mode in ("1", "LA", "La"):
        return np.asarray(img.convert("L"), dtype=np.uint8)
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        return to_uint8(np.asarray(img))  # 16-bit / float radiographs: stretch to 8 bits
    return np.asarray(img.convert("RGB"), dtype=np.uint8)  # P, RGBA, CMYK, YCbCr, ...


def to_uint8(values: np.ndarray, low: float | None = None, high: float | None = None) -> np.ndarray:
    """Map [low, high] (default: the array's own range) linearly onto 0..255, clipping outside."""
    values = np.asarray(values, dtype=np.float64)
    low = float(values.min()) if low is None else low
    high = float(values.max()) if high is None else high
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values - low) / (high - low)
    return np.rint(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def read_dicom(path: str | Path) -> np.ndarray:
    """A single-frame DICOM image as 8-bit gray (or RGB for colour data).

    Gray images go through the modality LUT (rescale slope/intercept), then the VOI LUT or the
    window centre/width when the file has one (pydicom's helpers; the first window is used), and
    are stretched to 0..255: over the window's output range when windowed, over the image's own
    range otherwise. MONOCHROME1 (white is low) is inverted so bone is always bright.
    """
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(path)
    except pydicom.errors.InvalidDicomError:
        raise ValueError(
            "not a DICOM file (no DICM header); convert it to DICOM, PNG or JPEG, or remove it"
        ) from None
    if "PixelData" not in ds:
        raise ValueError("DICOM file has no pixel data")
    pixels = ds.pixel_array  # pydicom picks the decoder for compressed transfer syntaxes
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ValueError(f"multi-frame DICOM ({frames} frames); only single images are supported")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if not photometric.startswith("MONOCHROME"):
        if photometric == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            pixels = apply_color_lut(pixels, ds)
        if pixels.dtype == np.uint8:
            return pixels
        return to_uint8(pixels, 0, float(np.iinfo(pixels.dtype).max))
    values = apply_modality_lut(pixels, ds)
    low = high = None
    if ds.get("VOILUTSequence") or ("WindowCenter" in ds and "WindowWidth" in ds):
        values = apply_voi_lut(values, ds)
        if not ds.get("VOILUTSequence"):
            low, high = _window_output_range(ds)
    gray = to_uint8(values, low, high)
    return 255 - gray if photometric == "MONOCHROME1" else gray


def _window_output_range(ds) -> tuple[float, float]:
    """The output range of DICOM windowing (PS3.3 C.11.2.1.2): the stored value range,
    through the modality LUT's bit depth or the rescale when present."""
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    bits = int(ds.BitsStored)
    if int(ds.get("PixelRepresentation", 0)) == 0:
        low, high = 0.0, float(2**bits - 1)
    else:
        low, high = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        low, high = low * float(slope) + float(intercept), high * float(slope) + float(intercept)
    return min(low, high), max(low, high)


def stamp_digest(paths: Iterable[Path]) -> str:
    """A digest of each file's path, size and modification time (a missing file: its path)."""
    digest = hashlib.sha256()
    for path in paths:
        try:
            stat = Path(path).stat()
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}\0missing\n".encode())
    return digest.hexdigest()[:16]


# --- building file lists ----------------------------------------------------------------------


def not_a_file(path: Path) -> str | None:
    """Why an entry of a data folder is no image file kdray can read, or None: a symlink loop,
    a broken symlink, a symlink to a folder (not followed: it could loop), a device, a pipe or a
    socket (reading one could block or never end). Nothing is opened."""
    path = Path(path)
    try:
        target = path.resolve(strict=True) if path.is_symlink() else path
    except RuntimeError:  # Python 3.11's symlink loop
        return "a symlink loop; remove it"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symlink loop; remove it"
        return f"a broken symlink (to {os.readlink(path)}); remove it or fix its target"
    try:
        mode = target.stat().st_mode
    except OSError:
        return None  # a missing path: the caller says so
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        if target is path:
            return None
        return (
            f"a symlink to the folder {target}, which kdray does not follow (it could loop); "
            "put or link the image files themselves there"
        )
    kinds = {stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device"}
    kinds |= {stat.S_ISFIFO: "a named pipe", stat.S_ISSOCK: "a socket"}
    kind = next((name for test, name in kinds.items() if test(mode)), "a special file")
    via = f"a symlink to {target}, " if target is not path else ""
    return f"{via}{kind}, not an image file; remove it"


def is_image_file(path: Path) -> bool:
    return (
        path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
    )


def rank(keys: Iterable[str], seed: int) -> list[str]:
    """`keys` in a seeded pseudo-random order that depends only on the keys and the seed
    (a hash, not numpy's streams), so a split or subset is the same on every machine."""

    def score(key: str) -> str:
        return hashlib.sha256(f"{seed}\0{key}".encode()).hexdigest()

    return sorted(set(keys), key=score)


def fraction_count(total: int, fraction: float) -> int:
    """How many of `total` items a fraction takes: rounded, at least 1 when fraction > 0."""
    if fraction <= 0 or total == 0:
        return 0
    return max(1, round(total * fraction))


def carve(
    keys: Sequence[str], fractions: dict[str, float], seed: int, stratify: Sequence | None = None
) -> dict[str, set[str]]:
    """Assign distinct `keys` (files, patients, groups) to the splits named in `fractions`.

    Each named split takes `round(fraction * n)` keys (at least one) in seeded order, always
    leaving one for "train", which gets the rest. With `stratify` (a label per key) the
    fractions apply within each label.
    """
    strata: dict = {}
    for i, key in enumerate(keys):
        strata.setdefault(None if stratify is None else stratify[i], []).append(key)
    out: dict[str, set[str]] = {name: set() for name in ("train", *fractions)}
    for members in strata.values():
        ordered = rank(members, seed)
        start = 0
        for name, fraction in fractions.items():
            count = min(fraction_count(len(ordered), fraction), len(ordered) - 1 - start)
            count = max(count, 0)
            out[name].update(ordered[start : start + count])
            start += count
        out["train"].update(ordered[start:])
    return out


def carve_groups(
    sizes: dict[str, int], fractions: dict[str, float], seed: int
) -> dict[str, set[str]]:
    """Assign whole groups (patients: `sizes` images each) to the splits named in `fractions`,
    so that each holds about its fraction of the images, not of the groups: groups in seeded
    order, each to the first split it brings closer to its image count (it never overshoots by
    more than it closes); "train" gets the rest. Each named split, and "train", keeps at least
    one group while there are enough. Off by at most about half the largest group per split."""
    total = sum(sizes.values())
    want = {name: fraction * total for name, fraction in fractions.items()}
    taken = dict.fromkeys(fractions, 0)
    out: dict[str, set[str]] = {name: set() for name in ("train", *fractions)}
    for key in rank(sizes, seed):
        size = sizes[key]
        name = next((n for n in fractions if abs(taken[n] + size - want[n]) < want[n] - taken[n]),
                    "train")  # fmt: skip
        out[name].add(key)
        taken[name] = taken.get(name, 0) + size
    for name in fractions:  # a split asked for but left empty: its due of one group
        spare = sorted(out["train"], key=lambda k: (sizes[k], k))
        if not out[name] and fractions[name] > 0 and len(spare) > 1:
            out[name].add(spare[0])
            out["train"].discard(spare[0])
    return out


def cap_per_class(
    labels: np.ndarray, keys: Sequence[str], cap: int | None, seed: int
) -> np.ndarray:
    """Indices (ascending) of at most `cap` items per label, chosen in seeded order by key."""
    labels = np.asarray(labels)
    if cap is None:
        return np.arange(len(labels))
    keep: list[int] = []
    for label in np.unique(labels):
        members = {keys[i]: i for i in np.flatnonzero(labels == label)}
        keep += [members[k] for k in rank(members, seed)[:cap]]
    return np.asarray(sorted(keep), dtype=np.int64)


def empty_class_problems(
    classes: Sequence[str],
    labels: np.ndarray,
    split: str,
    where: str,
    hint: str,
    samples: str = "images",
) -> list[str]:
    """One line per class without any item (`samples`: images, volumes) in `split`."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(classes))
    return [
        f"{where}: class {name!r} has no {samples} in the {split} split ({hint})"
        for name, count in zip(classes, counts, strict=False)
        if count == 0
    ]


def raise_problems(problems: list[str], limit: int = MAX_PROBLEM_LINES) -> None:
    """Raise `DataError` with every problem, the list capped at `limit` lines plus a count."""
    if not problems:
        return
    if len(problems) > limit:
        problems = [*problems[:limit], f"... and {len(problems) - limit} more"]
    raise DataError(problems)


@contextlib.contextmanager
def folder_in_place(dest: Path) -> Iterator[Path]:
    """A temporary folder beside `dest`, put in its place (the old one removed) when the block
    ends, removed if it raised: a crash leaves the old cache or the new one, never half of one."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        yield tmp
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
