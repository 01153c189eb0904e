"""Segmentation data on disk as a data kind: `data: {kind: masks, ...}`.

Three sources (`kdray.data.mask_layouts` for the two folder layouts):
- `root:` with `layout: busi`: BUSI's `<category>/<name>.png` + `<name>_mask*.png` (unioned);
  `categories` picks the folders (default: all; BUSI's `normal` images have empty masks);
- `root:` with `layout: pairs`: `images/` + `masks/` with matching stems (Kvasir-SEG; ISIC 2018
  with `mask_suffix: _segmentation`), optionally under `train/`, `valid/`, `test/`;
- `path:` a MedSegBench `.npz` with `{train,val,test}_images` and `{train,val,test}_label`
  (N x H x W masks; 0/255 binary masks read as 0/1).
Valid and test are carved off train where the data does not split itself (`split_by`, seeded,
stratified by BUSI category). `classes` names the mask values in order (background first).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from kdray.data.base import DataConfigBase, DataError, DistinctNames
from kdray.data.cache import SPLITS, MaskArraySource
from kdray.data.files import carve, raise_problems
from kdray.data.folder import SplitFractions
from kdray.data.mask_layouts import FileMaskSource, busi_pairs, folder_pairs
from kdray.data.npz import read_array

NPZ_SPLITS = {"train": "train", "valid": "val", "test": "test"}


class Config(DataConfigBase):
    """`data: {kind: masks, root: ...}` (BUSI or image/mask folders) or `{kind: masks, path: ...}`
    (a MedSegBench .npz)."""

    kind: Literal["masks"] = "masks"
    root: Path | None = Field(None, description="a folder in the `layout`")
    path: Path | None = Field(None, description="a MedSegBench .npz archive")
    layout: Literal["busi", "pairs"] = Field(
        "pairs",
        description="busi: <category>/<name>.png + <name>_mask*.png; pairs: images/ + masks/",
    )
    categories: DistinctNames | None = Field(
        None, description="busi: the category folders to read (default: all)"
    )
    images_dir: str = Field("images", description="pairs: the folder of images")
    masks_dir: str = Field("masks", description="pairs: the folder of masks")
    mask_suffix: str = Field("", description="pairs: a mask's stem is its image's plus this")
    mask_threshold: int = Field(
        128, ge=1, le=255, description="binary JPEG masks: a pixel at or above it is lesion"
    )
    classes: DistinctNames = Field(
        default_factory=lambda: ["background", "lesion"],
        min_length=2,
        max_length=127,
        description="names of the mask values 0, 1, ... (background first)",
    )
    split_by: SplitFractions = Field(
        default_factory=SplitFractions, description="the splits carved off train when missing"
    )
    split_seed: int = Field(0, description="seeds the carving of valid/test")

    @field_validator("mask_suffix", "images_dir", "masks_dir")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if "/" in value or "\\" in value:
            raise ValueError("a name inside the folder, without '/'")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> Config:
        if (self.root is None) == (self.path is None):
            raise ValueError("give exactly one of root (a folder of images and masks) or path "
                             "(a MedSegBench .npz)")  # fmt: skip
        if self.categories is not None and (self.layout != "busi" or self.root is None):
            raise ValueError("categories name BUSI's folders: give root and layout: busi")
        return self

    holds_masks: ClassVar[bool] = True

    def declared_task(self) -> str | None:
        return "segmentation"


def open_sources(cfg: Config) -> tuple[list[str], dict]:
    """The train, valid and test splits of the folder or archive."""
    if cfg.path is not None:
        return list(cfg.classes), npz_sources(Path(cfg.path), cfg)
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DataError([f"{root}: no such folder; set data.root to a folder of images and masks"])
    if cfg.layout == "busi":
        pairs, problems, warnings = busi_pairs(root, cfg.categories)
    else:
        layout = (cfg.images_dir, cfg.masks_dir, cfg.mask_suffix)
        pairs, problems, warnings = folder_pairs(root, *layout)
    raise_problems(problems)
    given = {p.split for p in pairs if p.split is not None}
    wanted = {s: getattr(cfg.split_by, s) for s in ("valid", "test") if s not in given}
    pool = [p for p in pairs if p.split is None]
    keys = [str(p.image) for p in pool]
    carved = carve(keys, wanted, cfg.split_seed, [p.category for p in pool])
    split_of = {key: split for split, members in carved.items() for key in members}
    sources = {}
    for split in SPLITS:
        chosen = [p for p in pairs if (p.split or split_of[str(p.image)]) == split]
        if not chosen:
            problems.append(f"{root}: no images in the {split} split; add images or fix split_by")
        sources[split] = FileMaskSource(chosen, len(cfg.classes), cfg.mask_threshold)
    raise_problems(problems)
    sources["train"].warnings = warnings
    return list(cfg.classes), sources


def npz_sources(path: Path, cfg: Config) -> dict[str, MaskArraySource]:
    """A MedSegBench archive's splits; binary 0/255 masks become 0/1."""
    if not zipfile.is_zipfile(path):
        what = "does not exist" if not path.exists() else "is not an .npz (zip) archive"
        raise DataError([f"{path}: {what}; set data.path to a MedSegBench .npz file"])
    sources, problems = {}, []
    with np.load(path, allow_pickle=False) as archive:
        for split, key in NPZ_SPLITS.items():
            names = (f"{key}_images", f"{key}_label")
            missing = [n for n in names if n not in archive.files]
            if missing:
                problems.append(f"{path}: no array {missing} (MedSegBench has {list(names)})")
                continue
            images, masks = (read_array(archive, path, name) for name in names)
            masks = masks[..., 0] if masks.ndim == 4 and masks.shape[-1] == 1 else masks
            problem = _npz_problem(path, key, images, masks, len(cfg.classes))
            if problem:
                problems.append(problem)
                continue
            if len(cfg.classes) == 2 and set(np.unique(masks).tolist()) <= {0, 255}:
                masks = (masks > 0).astype(np.int8)
            sources[split] = MaskArraySource(images, masks, where=f"{path} {key}_images")
    raise_problems(problems)
    return sources


def _npz_problem(path, key, images, masks, num_classes) -> str | None:
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or not len(images):
        return f"{path}: {key}_images has shape {images.shape} and dtype {images.dtype}; " \
            "expected uint8 N x H x W (x C)"  # fmt: skip
    if masks.shape != images.shape[:3]:
        return (
            f"{path}: {key}_label has shape {masks.shape}, its images {images.shape[:3]}; "
            "a mask per image, of its size"
        )
    values = np.unique(masks)
    allowed = {0, 255} | set(range(num_classes)) if num_classes == 2 else set(range(num_classes))
    bad = [v for v in values.tolist() if v not in allowed]
    if bad:
        return f"{path}: {key}_label has values {bad[:6]}; expected class indices " \
            f"0..{num_classes - 1}" + (" (or 0/255)" if num_classes == 2 else "")  # fmt: skip
    return None
