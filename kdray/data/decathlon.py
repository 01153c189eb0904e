"""NIfTI segmentation folders as a volume data kind: `data: {kind: decathlon, root: ...}`.

Two layouts, told apart by `dataset.json`:
- Medical Segmentation Decathlon (`TaskNN_X/`): `training` lists `{image, label}` paths relative
  to the root (`./imagesTr/la_003.nii.gz`), `labels` maps index -> name (`{"0": "background"}`);
- nnU-Net v2 (`DatasetNNN_X/`): images `imagesTr/<case>_0000<file_ending>`, labels
  `labelsTr/<case><file_ending>`, `labels` maps name -> index (`{"background": 0}`); files whose
  name starts with "." or "_" (macOS `._` copies) are skipped as nnU-Net's converter does.
Only one-channel volumes are read yet. Every pair's headers are checked before any voxel is
decoded (shape, spacing, orientation, 3D; a missing or unreadable file), each problem one line
naming the file; label values are checked when the cache decodes them. Valid and test are carved
off the training cases (`split_by`, seeded by case name).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import Field

from kdray.data.base import DataError, DistinctNames
from kdray.data.files import carve, raise_problems
from kdray.data.folder import SplitFractions
from kdray.data.nifti import (
    NIFTI_SUFFIXES,
    MultiChannelError,
    NiftiHeader,
    multi_channel_line,
    pair_problem,
    read_header,
    read_image,
    read_label,
)
from kdray.data.volume_base import Volume, VolumeConfigBase
from kdray.data.volume_prep import prepare_volume, spacing_problem

SPLITS = ("train", "valid", "test")


class Config(VolumeConfigBase):
    """`data: {kind: decathlon, root: ...}`: a Decathlon or nnU-Net v2 folder of NIfTI files."""

    kind: Literal["decathlon"] = "decathlon"
    root: Path = Field(description="the folder holding dataset.json, imagesTr/ and labelsTr/")
    classes: DistinctNames | None = Field(
        None, min_length=2, description="names of the label values 0, 1, ...; default: "
        "dataset.json's labels"
    )  # fmt: skip
    split_by: SplitFractions = Field(default_factory=SplitFractions)
    split_seed: int = Field(0, description="seeds the carving of valid/test")

    def declared_task(self) -> str | None:
        return "segmentation"


@dataclass(frozen=True)
class Case:
    name: str
    image: Path
    label: Path


@dataclass
class NiftiVolumeSource:
    """One split of a folder's cases, decoded and prepared one volume at a time."""

    cases: list[Case]
    cfg: Config
    masks: bool = True
    # train only: what dataset.json let pass (a numTraining the folder disagrees with)
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.cases)

    def volume(self, index: int) -> Volume:
        case = self.cases[index]
        image, spacing = read_image(case.image)
        mask = read_label(case.label)
        return prepare_volume(Volume(image, spacing, mask=mask), self.cfg)

    def describe(self, index: int) -> str:
        return str(self.cases[index].image)

    def describe_mask(self, index: int) -> str:
        return str(self.cases[index].label)

    def files(self) -> list[Path]:
        """Every image and label file (their stamps are part of the cache's fingerprint)."""
        return [path for case in self.cases for path in (case.image, case.label)]


def open_sources(cfg: Config) -> tuple[list[str], dict[str, NiftiVolumeSource]]:
    """The classes and the train, valid and test splits of the folder."""
    root = Path(cfg.root)
    meta_path = root / "dataset.json"
    if not root.is_dir():
        raise DataError([f"{root}: no such folder; set data.root to a Decathlon/nnU-Net folder"])
    meta = _read_json(meta_path)
    classes = list(cfg.classes) if cfg.classes else dataset_classes(meta, meta_path)
    cases, problems = (msd_cases if "training" in meta else nnunet_cases)(root, meta, meta_path)
    headers = _checked_headers(cases, problems)
    if problem := spacing_problem(cfg, [(str(h.path), h.shape, h.spacing) for h in headers]):
        problems.append(problem)
    raise_problems(problems)
    if not cases:
        raise DataError([_no_cases_line(root, meta, meta_path)])
    wanted = {"valid": cfg.split_by.valid, "test": cfg.split_by.test}
    carved = carve([c.name for c in cases], wanted, cfg.split_seed)
    sources = {}
    for split in SPLITS:
        chosen = [c for c in cases if c.name in carved[split]]
        if not chosen:
            problems.append(f"{root}: no cases in the {split} split; add cases or fix split_by")
        sources[split] = NiftiVolumeSource(chosen, cfg)
    raise_problems(problems)
    declared = meta.get("numTraining")
    if isinstance(declared, int) and declared != len(cases):
        sources["train"].warnings = [
            f"{meta_path}: numTraining is {declared} but imagesTr/labelsTr hold {len(cases)} "
            "cases (a partial download?)"
        ]
    return classes, sources


def dataset_classes(meta: dict, meta_path: Path) -> list[str]:
    """Class names by label value from dataset.json's `labels` (MSD: index -> name; nnU-Net:
    name -> index)."""
    labels = meta.get("labels")
    if not isinstance(labels, dict) or len(labels) < 2:
        raise DataError([f"{meta_path}: `labels` must map at least two label values and names "
                         "(or set data.classes)"])  # fmt: skip
    if all(str(k).isdigit() for k in labels):  # MSD
        by_index = {int(k): str(v) for k, v in labels.items()}
    else:  # nnU-Net v2
        by_index = {_label_value(v, str(k), meta_path): str(k) for k, v in labels.items()}
    if sorted(by_index) != list(range(len(by_index))):
        values = sorted(by_index)
        raise DataError([f"{meta_path}: label values {values} are not 0..{len(values) - 1}"])
    return [by_index[i] for i in range(len(by_index))]


def _label_value(value, name: str, meta_path: Path) -> int:
    """An nnU-Net `labels` value: a whole number (regions, lists of values, are not read)."""
    if isinstance(value, list | tuple | dict):
        raise DataError(
            [f"{meta_path}: `labels` maps {name!r} to a region {value}; kdray reads single "
             "label values, regions (lists of values) are not read yet"]
        )  # fmt: skip
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = None
    if isinstance(value, bool) or number is None or not number.is_integer():
        raise DataError([f"{meta_path}: `labels` value {value!r} of {name!r} is not a whole "
                         "number; give each name its label value 0, 1, ..."])  # fmt: skip
    return int(number)


def msd_cases(root: Path, meta: dict, meta_path: Path) -> tuple[list[Case], list[str]]:
    """The Decathlon's `training` list: image and label paths relative to the root."""
    cases, problems = [], []
    modality = meta.get("modality", {})
    if isinstance(modality, dict) and len(modality) > 1:
        problems.append(f"{meta_path}: {len(modality)} modalities {list(modality.values())}; "
                        "multi-channel volumes are not supported yet")  # fmt: skip
    if not isinstance(meta["training"], list):
        return [], [f"{meta_path}: `training` must be a list of {{image, label}} entries"]
    for number, entry in enumerate(meta["training"]):
        paths = [entry.get(k) if isinstance(entry, dict) else None for k in ("image", "label")]
        if not all(isinstance(path, str) and path for path in paths):
            problems.append(f"{meta_path}: `training` entry {number} {json.dumps(entry)[:120]} "
                            "needs image and label paths (strings relative to the root); fix "
                            "the entry")  # fmt: skip
            continue
        image, label = root / entry["image"], root / entry["label"]
        cases.append(Case(_stem(image), image.resolve(), label.resolve()))
    return cases, problems


def nnunet_cases(root: Path, meta: dict, meta_path: Path) -> tuple[list[Case], list[str]]:
    """nnU-Net v2's `imagesTr/<case>_0000<ending>` with `labelsTr/<case><ending>`."""
    ending = meta.get("file_ending", ".nii.gz")
    channels = meta.get("channel_names", meta.get("modality", {"0": "?"}))
    problems = []
    if len(channels) > 1:
        problems.append(f"{meta_path}: {len(channels)} channels {list(channels.values())}; "
                        "multi-channel volumes are not supported yet")  # fmt: skip
    images = root / "imagesTr"
    if ending not in NIFTI_SUFFIXES:
        found = _endings(images)
        reads = " and ".join(NIFTI_SUFFIXES)
        return [], [f"{meta_path}: file_ending is {ending!r}, which kdray does not read (it "
                    f"reads {reads}); imagesTr holds {found or 'no'} files: convert them to "
                    "NIfTI or fix file_ending"]  # fmt: skip
    if not images.is_dir():
        return [], [f"{images}: no such folder (nnU-Net's layout: imagesTr/<case>_0000{ending})"]
    cases = []
    for path in sorted(images.iterdir()):
        if path.name.startswith((".", "_")) or not path.name.endswith(f"_0000{ending}"):
            continue
        name = path.name[: -len(f"_0000{ending}")]
        cases.append(Case(name, path, root / "labelsTr" / f"{name}{ending}"))
    return cases, problems


def _no_cases_line(root: Path, meta: dict, meta_path: Path) -> str:
    """Why no case was found: no `training` list and no nnU-Net names, or a `file_ending` the
    files do not have."""
    images = root / "imagesTr"
    if "training" in meta:
        return f"{meta_path}: `training` lists no cases; add images and labels"
    found = _endings(images)
    ending = meta.get("file_ending")
    if ending is None:
        return f"{meta_path}: no `training` list (the Decathlon's layout), and imagesTr " \
            "holds no images named <case>_0000.nii.gz (nnU-Net's); add `training` or name " \
            "the images <case>_0000.nii.gz"  # fmt: skip
    if found and ending not in found:
        return f"{meta_path}: file_ending is {ending!r} but imagesTr holds {found} files; set " \
            "file_ending to the files' ending"  # fmt: skip
    return f"{images}: no training cases named <case>_0000{ending}; add images and labels"


def _endings(folder: Path) -> list[str]:
    """The file endings (`.nii.gz` counted whole) in a folder, skipping hidden and `_` files."""
    if not folder.is_dir():
        return []
    names = [p.name for p in folder.iterdir() if not p.name.startswith((".", "_"))]
    return sorted({".nii.gz" if n.endswith(".nii.gz") else Path(n).suffix for n in names})


def _checked_headers(cases: list[Case], problems: list[str]) -> list[NiftiHeader]:
    """The image headers of the cases whose pair is sound; a line in `problems` for each other
    case, the multi-channel ones said once."""
    headers, multi = [], []
    for case in cases:
        try:
            headers.append(_case_header(case))
        except MultiChannelError as exc:
            multi.append(str(exc))
        except ValueError as exc:
            problems.append(str(exc))
    if multi and not any("multi-channel" in line for line in problems):
        problems.append(multi_channel_line(multi))
    return headers


def _case_header(case: Case) -> NiftiHeader:
    """The image's header; ValueError if the case's files are missing, unreadable, not 3D or
    not a matching pair."""
    if not case.image.is_file():
        raise ValueError(f"{case.image}: image file missing (listed in dataset.json)")
    if not case.label.is_file():
        raise ValueError(
            f"{case.label}: label file missing for {case.image.name}; add it or remove the case"
        )
    image = read_header(case.image)
    if problem := pair_problem(image, read_header(case.label)):
        raise ValueError(problem)
    return image


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise DataError([f"{path}: missing; a Decathlon or nnU-Net folder has a dataset.json"])
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError([f"{path}: not readable JSON ({exc})"]) from None
    if not isinstance(meta, dict):
        raise DataError([f"{path}: a JSON object is expected"])
    return meta


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem
