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
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field

from kdray.data.base import DataError, DistinctNames
from kdray.data.files import carve, raise_problems
from kdray.data.folder import SplitFractions
from kdray.data.nifti import pair_problem, read_header, read_image, read_label
from kdray.data.volume_base import Volume, VolumeConfigBase
from kdray.data.volume_prep import prepare_volume

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
    problems += [p for case in cases if (p := _case_problem(case))]
    raise_problems(problems)
    if not cases:
        raise DataError([f"{root / 'imagesTr'}: no training cases; add images and labels"])
    wanted = {"valid": cfg.split_by.valid, "test": cfg.split_by.test}
    carved = carve([c.name for c in cases], wanted, cfg.split_seed)
    sources = {}
    for split in SPLITS:
        chosen = [c for c in cases if c.name in carved[split]]
        if not chosen:
            problems.append(f"{root}: no cases in the {split} split; add cases or fix split_by")
        sources[split] = NiftiVolumeSource(chosen, cfg)
    raise_problems(problems)
    return classes, sources


def dataset_classes(meta: dict, meta_path: Path) -> list[str]:
    """Class names by label value from dataset.json's `labels` (MSD: index -> name; nnU-Net:
    name -> index)."""
    labels = meta.get("labels")
    if not isinstance(labels, dict) or len(labels) < 2:
        raise DataError([f"{meta_path}: `labels` must map at least two label values and names "
                         "(or set data.classes)"])  # fmt: skip
    try:
        if all(str(k).isdigit() for k in labels):  # MSD
            by_index = {int(k): str(v) for k, v in labels.items()}
        else:  # nnU-Net v2
            by_index = {int(v): str(k) for k, v in labels.items()}
    except (TypeError, ValueError):
        raise DataError([f"{meta_path}: `labels` maps names to single label values here; "
                         "regions (lists of values) are not read yet"]) from None  # fmt: skip
    if sorted(by_index) != list(range(len(by_index))):
        values = sorted(by_index)
        raise DataError([f"{meta_path}: label values {values} are not 0..{len(values) - 1}"])
    return [by_index[i] for i in range(len(by_index))]


def msd_cases(root: Path, meta: dict, meta_path: Path) -> tuple[list[Case], list[str]]:
    """The Decathlon's `training` list: image and label paths relative to the root."""
    cases, problems = [], []
    modality = meta.get("modality", {})
    if isinstance(modality, dict) and len(modality) > 1:
        problems.append(f"{meta_path}: {len(modality)} modalities {list(modality.values())}; "
                        "kdray reads one-channel volumes yet")  # fmt: skip
    for entry in meta["training"]:
        if not isinstance(entry, dict) or not {"image", "label"} <= entry.keys():
            problems.append(f"{meta_path}: a `training` entry without image and label: {entry}")
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
                        "kdray reads one-channel volumes yet")  # fmt: skip
    images = root / "imagesTr"
    if not images.is_dir():
        return [], [f"{images}: no such folder (nnU-Net's layout: imagesTr/<case>_0000{ending})"]
    cases = []
    for path in sorted(images.iterdir()):
        if path.name.startswith((".", "_")) or not path.name.endswith(f"_0000{ending}"):
            continue
        name = path.name[: -len(f"_0000{ending}")]
        cases.append(Case(name, path, root / "labelsTr" / f"{name}{ending}"))
    return cases, problems


def _case_problem(case: Case) -> str | None:
    """One line if the case's files are missing, unreadable, not 3D or not a matching pair."""
    if not case.image.is_file():
        return f"{case.image}: image file missing (listed in dataset.json)"
    if not case.label.is_file():
        return f"{case.label}: label file missing for {case.image.name}; add it or remove the case"
    try:
        return pair_problem(read_header(case.image), read_header(case.label))
    except ValueError as exc:
        return str(exc)


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
