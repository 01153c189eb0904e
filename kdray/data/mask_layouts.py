"""Image and mask files on disk as segmentation splits: the BUSI layout and image/mask folders.

- `busi`: `root/<category>/<name>.png` with its mask `<name>_mask.png` and any further lesion
  masks `<name>_mask_1.png`, `<name>_mask_2.png`, ... beside it (Al-Dhabyani et al.'s
  `Dataset_BUSI_with_GT/{benign,malignant,normal}`): the masks of an image are unioned.
- `pairs`: `root/images/<stem>.<ext>` with `root/masks/<stem><mask_suffix>.<ext>` (Kvasir-SEG:
  same names; ISIC 2018: `mask_suffix: _segmentation`); with `root/{train,valid,test}/` each
  holding the two folders, the splits as given.

A mask file holds class indices: a binary mask's lesion pixels are any value above 0 of a PNG
holding two values at most (0 and 255, or 0 and 1), or, in a lossy JPEG mask, values at or
above `mask_threshold`; a multi-class mask holds the class indices themselves (PNG only).
An image without its mask, a mask of another size than its image and a mask with other values
are each named in one line (the size is checked when the cache decodes the pair).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from kdray.data.files import IMAGE_SUFFIXES, is_image_file, read_image

LOSSY = (".jpg", ".jpeg")
BUSI_MASK = re.compile(r"^(?P<stem>.+)_mask(_\d+)?$")


@dataclass
class Pair:
    image: Path
    masks: list[Path]  # unioned (BUSI's extra lesions)
    category: str  # BUSI's folder, for stratified splits ("" in the pairs layout)
    split: str | None = None  # None: carved off train


@dataclass
class FileMaskSource:
    """One split of image files and their masks (`kdray.data.cache.MaskSource`)."""

    pairs: list[Pair]
    num_classes: int
    threshold: int
    groups: np.ndarray | None = None
    labels: None = None
    dropped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # what was let pass, e.g. lone masks

    @property
    def paths(self) -> list[Path]:  # the files whose stamps decide the cache's fingerprint
        return [p for pair in self.pairs for p in (pair.image, *pair.masks)]

    def __len__(self) -> int:
        return len(self.pairs)

    def image(self, index: int) -> np.ndarray:
        return read_image(self.pairs[index].image)

    def mask(self, index: int) -> np.ndarray:
        masks = [read_mask(p, self.num_classes, self.threshold) for p in self.pairs[index].masks]
        shapes = {m.shape for m in masks}
        if len(shapes) > 1:
            raise ValueError(f"its mask files differ in size ({sorted(shapes)})")
        return np.maximum.reduce(masks)  # a union of lesion masks (binary: 0/1)

    def describe(self, index: int) -> str:
        return str(self.pairs[index].image)

    def describe_mask(self, index: int) -> str:
        masks = self.pairs[index].masks
        return str(masks[0]) if len(masks) == 1 else f"{masks[0]} (+{len(masks) - 1} unioned)"


def stored_values(path: Path) -> np.ndarray:
    """A mask file's pixels as stored: a 16-bit PNG of class indices (0, 1, 2) is read as they
    are, not stretched to 8 bits as a 16-bit image is (`read_image`)."""
    with Image.open(path) as img:
        if img.mode == "I" or img.mode.startswith("I;16"):
            return np.asarray(img)
    return read_image(path)


def read_mask(path: Path, num_classes: int, threshold: int) -> np.ndarray:
    """A mask file as class indices (see the module docstring); ValueError on other values."""
    pixels = stored_values(path)
    if pixels.ndim == 3:
        if not (pixels == pixels[:, :, :1]).all():
            raise ValueError("a colour mask; give one channel of class indices (or 0/255)")
        pixels = pixels[:, :, 0]
    lossy = path.suffix.lower() in LOSSY
    if num_classes == 2 and lossy:
        return (pixels >= threshold).astype(np.int8)
    if lossy:
        raise ValueError(
            f"a JPEG mask cannot hold {num_classes} class indices exactly (lossy); give PNG masks"
        )
    values = np.unique(pixels)
    if num_classes == 2:
        if len(values) > 2 or (len(values) == 2 and values[0] != 0):
            raise ValueError(
                f"mask values {values[:6].tolist()}: a binary mask holds 0 (background) and one "
                "lesion value (255 or 1)"
            )
        return (pixels > 0).astype(np.int8)
    if values.max() >= num_classes:
        raise ValueError(
            f"mask values {values[values >= num_classes][:6].tolist()} are not class indices "
            f"0..{num_classes - 1}"
        )
    return pixels.astype(np.int8)


# --- listing ----------------------------------------------------------------------------------


def lone_masks_line(masks: list[Path]) -> list[str]:
    """One warning line for mask files no image claims (left out), or none."""
    if not masks:
        return []
    shown = ", ".join(str(m) for m in masks[:3]) + (", ..." if len(masks) > 3 else "")
    return [
        f"{len(masks)} mask file(s) without their image, left out: {shown}; add the image or "
        "remove the mask"
    ]


def busi_pairs(root: Path, categories: list[str] | None) -> tuple[list[Pair], list[str], list[str]]:
    """BUSI's images with their masks, one line per image without a mask, and the warning
    lines (masks without their image)."""
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if categories is not None:
        missing = [c for c in categories if not (root / c).is_dir()]
        if missing:
            return [], [f"{root}: no folder {m!r} (data.categories)" for m in missing], []
        folders = [root / c for c in categories]
    pairs, problems, claimed, lone = [], [], set(), []
    for folder in folders:
        files = sorted(p for p in folder.iterdir() if is_image_file(p))
        masks: dict[str, list[Path]] = {}
        for file in files:
            match = BUSI_MASK.match(file.stem)
            if match:
                masks.setdefault(match["stem"], []).append(file)
        if categories is not None and all(BUSI_MASK.match(f.stem) for f in files):
            problems.append(
                f"{folder}: no images, yet data.categories names {folder.name!r}; add its images "
                "or drop it from data.categories"
            )
        for file in files:
            if BUSI_MASK.match(file.stem):
                continue
            found = sorted(masks.get(file.stem, []), key=lambda p: (len(p.stem), p.stem))
            if not found:
                problems.append(
                    f"{file}: no mask ({file.stem}_mask{file.suffix} beside it); add it or "
                    "remove the image"
                )
                continue
            pairs.append(Pair(file, found, folder.name))
            claimed.update(found)
        lone += [m for found in masks.values() for m in found if m not in claimed]
    return pairs, problems, lone_masks_line(sorted(lone))


def _split_folders(root: Path) -> dict[str | None, Path]:
    names = {"train": "train", "valid": "valid", "val": "valid", "test": "test"}
    found = {names[p.name]: p for p in root.iterdir() if p.is_dir() and p.name in names}
    return found if "train" in found else {None: root}


def folder_pairs(
    root: Path, images_dir: str, masks_dir: str, suffix: str
) -> tuple[list[Pair], list[str], list[str]]:
    """`images/` + `masks/` pairs by stem (under split folders when there are), one line per
    image without its mask, and the warning lines (masks without their image)."""
    pairs, problems, lone = [], [], []
    for split, base in _split_folders(root).items():
        images, masks = base / images_dir, base / masks_dir
        for folder, field_name in ((images, "images_dir"), (masks, "masks_dir")):
            if not folder.is_dir():
                problems.append(f"{folder}: no such folder (data.{field_name})")
        if problems:
            continue
        by_stem: dict[str, list[Path]] = {}
        for mask in sorted(masks.iterdir()):
            if is_image_file(mask):
                by_stem.setdefault(mask.stem, []).append(mask)
        for image in sorted(p for p in images.iterdir() if is_image_file(p)):
            found = by_stem.get(image.stem + suffix, [])
            if len(found) != 1:
                wanted = f"{masks / (image.stem + suffix)}.*"
                what = "no mask" if not found else f"{len(found)} masks"
                problems.append(
                    f"{image}: {what} {wanted} ({', '.join(IMAGE_SUFFIXES[:3])}, ...); "
                    "give each image exactly one mask"
                )
                continue
            pairs.append(Pair(image, found, "", None if split in (None, "train") else split))
        stems = {image.stem + suffix for image in images.iterdir() if is_image_file(image)}
        lone += [m for stem, found in by_stem.items() if stem not in stems for m in found]
    return pairs, problems, lone_masks_line(sorted(lone))
