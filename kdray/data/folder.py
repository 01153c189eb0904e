"""Image files on disk as a data kind: class folders, or a CSV listing files and labels.

Three ways to lay the files out:
- `root/<class>/...` (files at any depth below the class folder): valid and test are carved off
  by `split_by`, stratified by class, seeded;
- `root/{train,valid,test}/<class>/...` (`val` also names valid): the splits as given; a missing
  valid or test folder is carved off train as above;
- `csv:` with a header `path,label[,split,group]`: paths relative to the CSV's folder (or
  `image_root`); splits the CSV does not use are carved off train, by group when there is a group
  column (no group in two splits), else by file, stratified by class;
- `csv:` with `label_columns:` (multi-label, the CheXpert / ChestX-ray14 way): `path`, one column
  per label and optionally `split` and `group` (`kdray.data.label_columns`: cells 1 / 0 / empty /
  -1, uncertain resolved by `uncertain`); carved splits are not stratified.
PNG, JPEG, BMP, TIFF and DICOM (`.dcm`) files are read; other files in class folders are ignored.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from kdray.data.base import DataConfigBase, DataError, DistinctNames
from kdray.data.cache import SPLITS
from kdray.data.files import (
    IMAGE_SUFFIXES,
    SKIP_HINT,
    FileSource,
    carve,
    carve_groups,
    is_image_file,
    not_a_file,
    raise_problems,
)
from kdray.data.label_columns import header_columns, label_matrix, label_row

SPLIT_NAMES = {"train": "train", "valid": "valid", "val": "valid", "validation": "valid"}
SPLIT_NAMES["test"] = "test"


class SplitFractions(BaseModel):
    """Fractions of the train pool moved to valid and test when the data does not split itself."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    valid: float = Field(0.1, ge=0, lt=1, description="share of the train pool moved to valid")
    test: float = Field(0.1, ge=0, lt=1, description="share of the train pool moved to test")

    @model_validator(mode="after")
    def _leaves_train(self) -> SplitFractions:
        if self.valid + self.test >= 1:
            raise ValueError("valid + test must be below 1 (the rest is train)")
        return self


class CsvSplitting(BaseModel):
    """The fields a CSV of labelled files shares with the `folder` kind (`nifti_csv` too): how
    the splits it lacks are carved, and its label columns when multi-label."""

    split_by: SplitFractions = Field(
        default_factory=SplitFractions, description="the splits carved off train when missing"
    )
    split_seed: int = Field(0, description="seeds the carving of valid/test")
    label_columns: DistinctNames | None = Field(
        None,
        min_length=1,
        description="multi-label: the CSV's columns holding one label each (1, 0, empty, -1)",
    )
    uncertain: Literal["ignore", "zeros", "ones"] = Field(
        "ignore", description="multi-label: what an uncertain label (-1) becomes"
    )


class Config(CsvSplitting, DataConfigBase):
    """`data: {kind: folder, root: ...}` or `data: {kind: folder, csv: ...}`."""

    kind: Literal["folder"] = "folder"
    root: Path | None = Field(None, description="one sub-folder per class (or train/valid/test)")
    csv: Path | None = Field(None, description="a CSV with columns path,label[,split,group]")
    classes: DistinctNames | None = Field(
        None, min_length=2, description="class names in label order (default: sorted names)"
    )
    image_root: Path | None = Field(
        None, description="csv: the folder image paths are relative to (default: the CSV's)"
    )

    @model_validator(mode="after")
    def _one_source(self) -> Config:
        if (self.root is None) == (self.csv is None):
            raise ValueError("give exactly one of root (class folders) or csv (a file list)")
        if self.label_columns is not None and self.csv is None:
            raise ValueError("label_columns name columns of a CSV: give csv, not root")
        if self.label_columns is not None and self.classes is not None:
            raise ValueError("a multi-label CSV's labels are its label_columns; drop classes")
        return self

    def unused_fields(self) -> set[str]:
        """Fields added with multi-label CSVs, at their defaults, keep older jobs' ids."""
        defaults = {"label_columns": None, "uncertain": "ignore", "image_root": None}
        unused = {k for k, v in defaults.items() if getattr(self, k) == v}
        return super().unused_fields() | unused

    def declared_task(self) -> str | None:
        return "multi_label" if self.label_columns is not None else None


@dataclass
class Item:
    file: Path
    label: str | tuple[int, ...]  # a class name, or a multi-label row
    split: str | None  # None: in the train pool, valid/test may be carved from it
    group: str | None
    where: str  # the folder or "<csv> line N", for messages


def natural_sorted(names: set[str]) -> list[str]:
    """Names sorted; numerically when they are all integers ("2" before "10")."""
    if all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


# --- class folders ----------------------------------------------------------------------------


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _class_items(folder: Path, split: str | None) -> tuple[list[Item], list[str]]:
    """The image files below each class folder, and one line per entry that is no file to
    read (`not_a_file`: a symlink loop, a symlink to /dev/zero, ...), which is never opened."""
    items, odd = [], []
    for class_dir in _subfolders(folder):
        for file in sorted(class_dir.rglob("*")):
            if is_image_file(file):
                items.append(Item(file, class_dir.name, split, None, str(class_dir)))
            elif file.is_symlink() or file.suffix.lower() in IMAGE_SUFFIXES:
                why = not_a_file(file)
                if why is not None:
                    odd.append(f"{file}: {why}")
    return items, odd


def scan_root(root: Path) -> tuple[list[Item], list[Path], list[str]]:
    """The items under `root`, the class folders seen (for messages and empty classes), and
    the entries that are no files (see `_class_items`)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError([f"{root}: no such folder; set data.root to a folder of class folders"])
    split_dirs = {SPLIT_NAMES[p.name]: p for p in _subfolders(root) if p.name in SPLIT_NAMES}
    if "train" not in split_dirs:
        items, odd = _class_items(root, None)
        return items, _subfolders(root), odd
    items, class_dirs, odd = [], [], []
    for split, folder in split_dirs.items():
        found, strange = _class_items(folder, None if split == "train" else split)
        items, odd = items + found, odd + strange
        class_dirs += _subfolders(folder)
    return items, class_dirs, odd


# --- CSV --------------------------------------------------------------------------------------


def read_csv(path: Path, skip_missing: bool, cfg: Config | None = None):
    """(items, dropped rows, problems) of a `path,label[,split,group]` CSV, or with
    `cfg.label_columns` a `path,<label>,...[,split,group]` one."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError([f"{path}: no such file; set data.csv to a path,label[,split,group] CSV"])
    folder = Path(cfg.image_root) if cfg is not None and cfg.image_root else path.parent
    items, dropped, problems = [], [], []
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            raw_header = next(reader, [])
            header = [c.strip().lower() for c in raw_header]
            col, labels = _csv_columns(path, header, raw_header, cfg)
            for cells in reader:
                where = f"{path} line {reader.line_num}"
                if not any(c.strip() for c in cells):
                    continue
                item = _csv_item(folder, cells, col, header, where, problems, labels, cfg)
                if item is None:
                    continue
                if not item.file.is_file():
                    why = not_a_file(item.file)
                    why = f": {why}" if why else " does not exist"
                    if item.file.is_dir():
                        why = " is a folder, not an image file"
                    message = f"{where}: {item.file}{why} ({SKIP_HINT})"
                    (dropped if skip_missing else problems).append(message)
                    continue
                items.append(item)
    except (csv.Error, UnicodeDecodeError) as exc:
        raise DataError([f"{path}: not a readable CSV ({exc})"]) from None
    return items, dropped, problems


def _csv_columns(path: Path, header: list[str], raw_header: list[str], cfg: Config | None):
    """(index of path / label / split / group, index of each label column or None)."""
    multi = cfg is not None and cfg.label_columns is not None
    needed = ("path",) if multi else ("path", "label")
    missing = [c for c in needed if c not in header]
    labels = None
    if multi:
        labels, absent = header_columns(raw_header, list(cfg.label_columns))
        missing += absent
    if missing:
        expected = "path,<label columns>[,split,group]" if multi else "path,label[,split,group]"
        raise DataError(
            [f"{path} line 1: header {raw_header} lacks {missing}; expected columns {expected}"]
        )
    col = {n: header.index(n) for n in ("path", "label", "split", "group") if n in header}
    return col, labels


def _csv_item(
    folder: Path,
    cells: list[str],
    col: dict[str, int],
    header: list[str],
    where: str,
    problems: list[str],
    label_columns: dict[str, int] | None = None,
    cfg: Config | None = None,
) -> Item | None:
    cells = [c.strip() for c in cells]
    if len(cells) != len(header):
        problems.append(f"{where}: {len(cells)} fields, the header has {len(header)}; fix the row")
        return None
    path = cells[col["path"]]
    if label_columns is not None:
        label = label_row(cells, label_columns, cfg.uncertain, where, problems)
        if label is None:
            return None
    else:
        label = cells[col["label"]]
    if not path or not label:
        problems.append(f"{where}: empty path or label; fix the row")
        return None
    split = None
    if "split" in col:
        raw = cells[col["split"]].lower()
        if raw not in SPLIT_NAMES:
            problems.append(f"{where}: split {raw!r} is not train, valid (val) or test")
            return None
        split = None if SPLIT_NAMES[raw] == "train" else SPLIT_NAMES[raw]
    group = cells[col["group"]] if "group" in col else None  # "": a blank cell
    file = folder / path.replace("\\", "/")
    return Item(file, label, split, group, where)


def checked_rows(items: list[Item], csv_path: Path) -> tuple[list[Item], list[str], list[str]]:
    """The rows with each image once, the problems (an image listed again with other labels,
    split or group) and the warnings (an image listed twice alike, kept once so it is never
    in two splits; blank group cells, each then a group of one)."""
    first: dict[Path, Item] = {}
    kept, problems, repeated = [], [], []
    for item in items:
        earlier = first.setdefault(item.file, item)
        if earlier is item:
            kept.append(item)
        elif (earlier.label, earlier.split, earlier.group) != (item.label, item.split, item.group):
            problems.append(
                f"{item.where}: {item.file} is listed again, with label {item.label!r}, split "
                f"{item.split or 'train'!r}, group {item.group!r} ({earlier.where}: "
                f"{earlier.label!r}, {earlier.split or 'train'!r}, {earlier.group!r}); give "
                "each image one row"
            )
        else:
            repeated.append(f"line {_line(item)} repeats line {_line(earlier)}")
    warnings = []
    if repeated:
        shown = "; ".join(repeated[:3]) + ("; ..." if len(repeated) > 3 else "")
        warnings.append(
            f"{csv_path}: {len(repeated)} row(s) list an image again with the same labels "
            f"({shown}); each image is used once"
        )
    blank = sum(1 for i in kept if i.group == "")
    if blank:
        warnings.append(
            f"{csv_path}: {blank} of {len(kept)} rows have a blank group cell; each such image "
            "is a group of its own, so one patient's images can land in both train and test: "
            "fill in the group column"
        )
    return kept, problems, warnings


def _line(item: Item) -> str:
    return item.where.rsplit(" ", 1)[-1]  # "<csv> line N"


# --- splits -----------------------------------------------------------------------------------


def assign_splits(items: list[Item], fractions: SplitFractions, seed: int) -> list[str]:
    """The split of each item: its own, or carved off the train pool for splits no item names.

    The pool is carved by group when items have groups (an item without one is its own group),
    else by file, stratified by class.
    """
    given = {i.split for i in items if i.split is not None}
    wanted = {s: getattr(fractions, s) for s in ("valid", "test") if s not in given}
    pool = [i for i in items if i.split is None]
    grouped = any(i.group for i in pool)

    def key_of(item: Item) -> str:
        return item.group if grouped and item.group else f"file:{item.file}"

    if grouped:  # whole groups, to fractions of the images (not of the groups)
        carved = carve_groups(Counter(key_of(i) for i in pool), wanted, seed)
    else:  # a multi-label row has no one class to stratify by
        keys = [key_of(i) for i in pool]
        stratify = [i.label for i in pool] if all(isinstance(i.label, str) for i in pool) else None
        carved = carve(keys, wanted, seed, stratify)
    split_of = {key: split for split, members in carved.items() for key in members}
    return [i.split if i.split is not None else split_of[key_of(i)] for i in items]


def group_share_warnings(items: list[Item], splits: list[str], cfg: Config) -> list[str]:
    """A warning when whole groups leave a carved split's share of the images more than 2
    points off its `split_by` fraction (a few large groups), with the shares reached."""
    given = {i.split for i in items if i.split is not None}
    pool = [s for i, s in zip(items, splits, strict=True) if i.split is None]
    if not any(i.group for i in items if i.split is None):
        return []
    wanted = {s: getattr(cfg.split_by, s) for s in ("valid", "test") if s not in given}
    share = {s: pool.count(s) / len(pool) for s in wanted}
    if all(abs(share[s] - f) <= 0.02 for s, f in wanted.items()):
        return []
    said = ", ".join(
        f"{s} {100 * share[s]:.1f}% (split_by {100 * f:g}%)" for s, f in wanted.items()
    )
    return [
        f"{cfg.csv}: whole groups give {said} of the images: a few groups hold many images; "
        "give more, smaller groups, or a split column"
    ]


def label_sources(
    items: list[Item], dropped: list[str], cfg: Config, warnings: list[str] = ()
) -> dict[str, FileSource]:
    """The splits of a multi-label CSV: label rows stacked, every split required non-empty."""
    splits = assign_splits(items, cfg.split_by, cfg.split_seed)
    warnings = [*warnings, *group_share_warnings(items, splits, cfg)]
    has_groups = any(i.group for i in items)
    sources, problems = {}, []
    for split in SPLITS:
        chosen = [i for i, s in zip(items, splits, strict=True) if s == split]
        if not chosen:
            problems.append(f"{cfg.csv}: no rows in the {split} split; add rows or fix split_by")
        sources[split] = FileSource(
            paths=[i.file for i in chosen],
            labels=label_matrix([i.label for i in chosen], len(cfg.label_columns)),
            groups=np.asarray([i.group or str(i.file) for i in chosen], dtype=str)
            if has_groups
            else None,
            dropped=list(dropped) if split == "train" else [],
            warnings=list(warnings) if split == "train" else [],
        )
    raise_problems(problems)
    return sources


def open_sources(cfg: Config) -> tuple[list[str], dict[str, FileSource]]:
    """The train, valid and test splits of the class folders or the CSV."""
    dropped: list[str] = []
    warnings: list[str] = []
    if cfg.root is not None:
        items, class_dirs, odd = scan_root(cfg.root)
        skip = cfg.on_bad_image == "skip"
        problems: list[str] = [] if skip else [f"{line} ({SKIP_HINT})" for line in odd]
        dropped = odd if skip else []  # left out, counted and named by `validate`
        names = {d.name for d in class_dirs}
        where = str(Path(cfg.root).expanduser())
    else:
        items, dropped, problems = read_csv(cfg.csv, cfg.on_bad_image == "skip", cfg)
        items, conflicts, warnings = checked_rows(items, Path(cfg.csv))
        problems += conflicts
        if cfg.label_columns is not None:
            raise_problems(problems)
            return list(cfg.label_columns), label_sources(items, dropped, cfg, warnings)
        class_dirs, names = [], {i.label for i in items}
        where = str(Path(cfg.csv).expanduser())
    classes = list(cfg.classes) if cfg.classes else natural_sorted(names)
    known = set(classes)
    for folder in class_dirs:
        if folder.name not in known:
            problems.append(
                f"{folder}: folder {folder.name!r} is not one of data.classes {classes}; "
                "remove it or add it to data.classes"
            )
    for item in items if cfg.csv is not None else []:  # folder labels were checked above
        if item.label not in known:
            problems.append(
                f"{item.where}: label {item.label!r} is not one of data.classes {classes}; "
                "fix the row or data.classes"
            )
    raise_problems(problems)
    if len(classes) < 2:
        raise DataError([f"{where}: {len(classes)} class(es) {classes}; need at least 2"])

    splits = assign_splits(items, cfg.split_by, cfg.split_seed)
    warnings += group_share_warnings(items, splits, cfg)
    index = {name: k for k, name in enumerate(classes)}
    sources = {}
    for split in SPLITS:
        chosen = [i for i, s in zip(items, splits, strict=True) if s == split]
        labels = np.asarray([index[i.label] for i in chosen], dtype=np.int64)
        counts = np.bincount(labels, minlength=len(classes))
        for name, count in zip(classes, counts, strict=True):
            if count == 0:
                problems.append(
                    f"{where}: class {name!r} has no images in the {split} split "
                    f"(files ending {', '.join(IMAGE_SUFFIXES)}); add images, "
                    "or fix data.classes / data.split_by"
                )
        has_groups = any(i.group for i in items)
        sources[split] = FileSource(
            paths=[i.file for i in chosen],
            labels=labels,
            groups=np.asarray([i.group or str(i.file) for i in chosen], dtype=str)
            if has_groups
            else None,
            dropped=list(dropped) if split == "train" else [],  # rows of every split
            warnings=list(warnings) if split == "train" else [],
        )
    raise_problems(problems)
    return classes, sources
