"""A CSV of NIfTI volumes with labels as a volume data kind of classification:
`data: {kind: nifti_csv, csv: volumes.csv}`, or with `label_columns` multi-label.

The CSV is the 2D `folder` kind's (`kdray.data.folder`, read by its own functions): a header
`path,label[,split,group]`, paths relative to the CSV's folder (or `image_root`), labels class
names (or indices 0..K-1 of `classes`); splits the CSV does not use are carved off train by
group where there is a group column (one patient's volumes never in two splits), else by file,
stratified by class. With `label_columns` (multi-label) the CSV has `path`, one column per
label (1, 0, empty, or -1 uncertain, resolved by `uncertain`: `kdray.data.label_columns`) and
optionally `split` and `group`; its carved splits are not stratified.

Each volume is one sample, read with `kdray.data.nifti` (RAS+, spacing from the header),
prepared like every volume kind (`kdray.data.volume_prep`: resampled, resized, windowed,
normalised) and trained and predicted whole: `patch` (default `size` where volumes are resized)
is the classifier's input, each volume centre-cropped or padded to it.

Every header is read before any voxel is decoded: a missing file, an unreadable NIfTI and a 4D
volume are one line each naming the file and the CSV row, as is a label outside the classes;
so is a class without a volume in a split (single-label, as the 2D `folder` kind).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from kdray.data.base import DataError, DistinctNames
from kdray.data.files import SKIP_HINT, empty_class_problems, raise_problems
from kdray.data.folder import (
    CsvSplitting,
    Item,
    assign_splits,
    checked_rows,
    group_share_warnings,
    natural_sorted,
    read_csv,
)
from kdray.data.nifti import MultiChannelError, multi_channel_line, read_header, read_image
from kdray.data.volume_base import Volume, VolumeConfigBase
from kdray.data.volume_prep import prepare_volume, spacing_problem

SPLITS = ("train", "valid", "test")


class Config(CsvSplitting, VolumeConfigBase):
    """`data: {kind: nifti_csv, csv: ...}`: NIfTI volumes listed in a CSV with their labels."""

    kind: Literal["nifti_csv"] = "nifti_csv"
    csv: Path = Field(
        description="a CSV with columns path,label[,split,group], or path,<label_columns>"
        "[,split,group] (multi-label)"
    )
    classes: DistinctNames | None = Field(
        None, min_length=2, description="class names in label order (default: sorted labels)"
    )
    image_root: Path | None = Field(
        None, description="the folder volume paths are relative to (default: the CSV's)"
    )

    @model_validator(mode="before")
    @classmethod
    def _resized_patch(cls, data: Any) -> Any:
        """A classifier's input defaults to the resized volume (`size`) where one is given."""
        if isinstance(data, dict) and "patch" not in data and data.get("size") is not None:
            return {**data, "patch": data["size"]}
        return data

    @model_validator(mode="after")
    def _labels_or_classes(self) -> Config:
        if self.label_columns is not None and self.classes is not None:
            raise ValueError("a multi-label CSV's labels are its label_columns; drop classes")
        return self

    def declared_task(self) -> str | None:
        return "multi_label" if self.label_columns is not None else "single_label"


@dataclass
class NiftiCsvSource:
    """One split of the CSV's volumes, decoded and prepared one at a time."""

    items: list[Item]
    labels: list[int | np.ndarray]  # class indices, or multi-label rows
    cfg: Config
    masks: bool = False
    # train only: what the CSV let pass (rows repeated alike, blank groups, group shares),
    # shown by `kdray validate` (`kdray.data.data_warnings`)
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    def volume(self, index: int) -> Volume:
        image, spacing = read_image(self.items[index].file)
        volume = Volume(image, spacing, label=self.labels[index])
        return prepare_volume(volume, self.cfg)

    def describe(self, index: int) -> str:
        return f"{self.items[index].file} ({self.items[index].where})"

    def describe_mask(self, index: int) -> str:
        return self.describe(index)

    def files(self) -> list[Path]:
        return [item.file for item in self.items]


def open_sources(cfg: Config) -> tuple[list[str], dict[str, NiftiCsvSource]]:
    """The classes and the train, valid and test splits of the CSV; `DataError` naming every
    bad row and file."""
    csv_path = Path(cfg.csv)
    items, missing, problems = read_csv(csv_path, skip_missing=True, cfg=cfg)
    problems += [line.removesuffix(f" ({SKIP_HINT})").replace("not an image", "not a NIfTI")
                 + "; fix the path or drop the row" for line in missing]  # fmt: skip
    items, conflicts, warnings = checked_rows(items, csv_path)
    problems += conflicts + _header_problems(items, cfg)
    if cfg.label_columns is not None:
        classes = list(cfg.label_columns)
        labels = [np.asarray(item.label, dtype=np.int64) for item in items]
    else:
        classes = list(cfg.classes) if cfg.classes else natural_sorted({i.label for i in items})
        labels = [_class_index(item, classes, problems) for item in items]
    raise_problems(problems)
    if len(classes) < 2 and cfg.label_columns is None:
        raise DataError([f"{csv_path}: {len(classes)} class(es) {classes}; need at least 2"])
    splits = assign_splits(items, cfg.split_by, cfg.split_seed)
    warnings += group_share_warnings(items, splits, cfg)
    sources = {}
    for split in SPLITS:
        chosen = [k for k, s in enumerate(splits) if s == split]
        if not chosen:
            problems.append(f"{csv_path}: no rows in the {split} split; add rows or fix split_by")
        elif cfg.label_columns is None:  # single-label: every class in every split, as 2D
            problems += empty_class_problems(
                classes, [labels[k] for k in chosen], split, str(csv_path),
                "add rows, or fix data.classes / data.split_by", samples="volumes",
            )  # fmt: skip
        sources[split] = NiftiCsvSource([items[k] for k in chosen], [labels[k] for k in chosen],
                                        cfg)  # fmt: skip
    raise_problems(problems)
    sources["train"].warnings = warnings
    return classes, sources


def _header_problems(items: list[Item], cfg: Config) -> list[str]:
    """A line for each row whose file is no readable 3D NIfTI (read from its header alone), the
    4D ones said once, and one if `data.spacing` resamples a volume past `size`'s limits."""
    problems, multi, headers = [], [], []
    for item in items:
        try:
            header = read_header(item.file)
        except MultiChannelError as exc:
            multi.append(f"{item.where}: {exc}")
        except ValueError as exc:
            problems.append(f"{item.where}: {exc}")
        else:
            headers.append((f"{item.file} ({item.where})", header.shape, header.spacing))
    if multi:
        problems.append(multi_channel_line(multi))
    if problem := spacing_problem(cfg, headers):
        problems.append(problem)
    return problems


def _class_index(item: Item, classes: list[str], problems: list[str]) -> int:
    """The row's class index: its label names a class, or is an index 0..K-1 of `classes`."""
    if item.label in classes:
        return classes.index(item.label)
    if item.label.isdigit() and int(item.label) < len(classes):
        return int(item.label)
    problems.append(
        f"{item.where}: label {item.label!r} is not one of data.classes {classes} (or an "
        f"index 0..{len(classes) - 1}); fix the row or data.classes"
    )
    return -1
