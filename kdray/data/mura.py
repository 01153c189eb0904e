"""Stanford's MURA-v1.1 musculoskeletal radiographs as a data kind, read from its own CSVs.

The archive lists its images in `{train,valid}_image_paths.csv` (paths start with `MURA-v1.1/`,
relative to the archive's parent) and labels studies in `{train,valid}_labeled_studies.csv`
(`<study folder>/,<0|1>`). The file list comes from those CSVs, never from globbing, so a stray
file on disk is ignored and a listed file that is missing is reported.

Two tasks: `body_part` classifies the study type (XR_<TYPE> folder, 7 classes; the thesis's
setup, usually on a balanced subset) and `abnormality` is MURA's own binary task (label of the
study: 0 negative, 1 positive). MURA's test set is hidden, so `test_fraction` of the train
patients become the test split, chosen by a hash of (split_seed, patient id): the same patients
on every machine, for every trial, whatever the task or subset.

Each image's group is its study key (`MURA-v1.1/valid/XR_WRIST/patient11185/study1_positive`);
`study_level` averages image probabilities per study, as MURA is judged.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from kdray.data.base import DataConfigBase, DataError, distinct
from kdray.data.files import (
    SKIP_HINT,
    FileSource,
    cap_per_class,
    carve,
    empty_class_problems,
    raise_problems,
)

ARCHIVE = "MURA-v1.1"
BODY_PARTS = ("ELBOW", "FINGER", "FOREARM", "HAND", "HUMERUS", "SHOULDER", "WRIST")
ABNORMALITY_CLASSES = ["negative", "positive"]
BodyPart = Literal["ELBOW", "FINGER", "FOREARM", "HAND", "HUMERUS", "SHOULDER", "WRIST"]
PATH_SHAPE = f"{ARCHIVE}/<train|valid>/XR_<TYPE>/<patient>/<study>/<image>.png"


class SplitCaps(BaseModel):
    """Images kept per class and split; a single number caps every split alike."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    train: int | None = Field(None, ge=1, description="images per class in train")
    valid: int | None = Field(None, ge=1, description="images per class in valid")
    test: int | None = Field(None, ge=1, description="images per class in test")

    @model_validator(mode="before")
    @classmethod
    def _number_for_all(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return {"train": value, "valid": value, "test": value}
        return value


class Config(DataConfigBase):
    """`data: {kind: mura, root: ...}`: the MURA-v1.1 archive."""

    kind: Literal["mura"] = "mura"
    root: Path = Field(description=f"the folder containing {ARCHIVE}/ (or {ARCHIVE} itself)")
    task: Literal["body_part", "abnormality"] = Field(
        "body_part", description="body_part: 7 study types; abnormality: normal vs abnormal"
    )
    body_parts: Annotated[list[BodyPart], AfterValidator(distinct)] | None = Field(
        None, min_length=1, description="study types to keep (default: all 7)"
    )
    max_per_class: SplitCaps | None = Field(
        None, description="at most this many images per class, e.g. {train: 2201, valid: 250}"
    )
    test_fraction: float = Field(0.1, gt=0, lt=1, description="train patients moved to test")
    split_seed: int = Field(0, description="seeds the test patients and the per-class subset")

    @model_validator(mode="after")
    def _two_classes(self) -> Config:
        if self.task == "body_part" and self.body_parts is not None and len(self.body_parts) < 2:
            raise ValueError("task body_part needs at least 2 body_parts")
        return self


# --- study keys -------------------------------------------------------------------------------


def _type_index(parts: list[str]) -> int:
    for i, part in enumerate(parts):
        if part.startswith("XR_"):
            return i
    raise ValueError(f"no XR_<TYPE> folder in {'/'.join(parts)!r}")


def body_part_of(study_key: str) -> str:
    """`ELBOW` for `MURA-v1.1/train/XR_ELBOW/patient00011/study1_negative`."""
    parts = study_key.strip("/").split("/")
    return parts[_type_index(parts)].removeprefix("XR_")


def patient_of(study_key: str) -> str:
    """`patient00011` for `MURA-v1.1/train/XR_ELBOW/patient00011/study1_negative`."""
    parts = study_key.strip("/").split("/")
    return parts[_type_index(parts) + 1]


def held_out_patients(patients: list[str] | set[str], fraction: float, seed: int) -> list[str]:
    """The patients (sorted) that form the test split: deterministic for a seed."""
    return sorted(carve(sorted(set(patients)), {"test": fraction}, seed)["test"])


def study_level(
    probs: np.ndarray, labels: np.ndarray, groups: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Average image probabilities per study: (study_probs, study_labels, study_keys)."""
    from kdray.tasks.classification_metrics import (
        aggregate_by_group,  # scikit-learn: not needed to read the data
    )

    return aggregate_by_group(probs, labels, groups)


def group_category(study_key: str) -> str:
    """The category study-level metrics are broken down by: the study type (body part)."""
    return body_part_of(study_key)


# --- reading the archive ----------------------------------------------------------------------


@dataclass
class ImageRow:
    """One row of an image-paths CSV."""

    where: str  # "<csv> line N", for messages
    file: Path
    key: str  # canonical image path, MURA-v1.1/...
    study: str  # canonical study key
    body_part: str


def find_archive(root: Path) -> Path:
    """The MURA-v1.1 folder: `root/MURA-v1.1`, or `root` itself when it holds the CSVs."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(
            [f"{root}: no such folder; set data.root to the folder containing {ARCHIVE}/"]
        )
    if (root / ARCHIVE).is_dir():
        return root / ARCHIVE
    if (root / "train_image_paths.csv").is_file() or (root / "valid_image_paths.csv").is_file():
        return root
    raise DataError(
        [
            f"{root}: neither a {ARCHIVE}/ folder nor train_image_paths.csv here; "
            f"set data.root to the folder containing {ARCHIVE}/"
        ]
    )


def read_rows(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, cells) of a CSV: any line endings, blank lines and a header row skipped
    (a header is a first row whose first cell is not a path, e.g. `Img_Path,Label`)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            rows = [(reader.line_num, [c.strip() for c in row]) for row in reader]
    except (csv.Error, UnicodeDecodeError) as exc:
        raise DataError([f"{path}: not a readable CSV ({exc})"]) from None
    rows = [(n, cells) for n, cells in rows if any(cells)]
    if rows and "/" not in rows[0][1][0].replace("\\", "/"):
        rows = rows[1:]
    return rows


def _inner_parts(raw: str) -> list[str]:
    """The path components below the archive folder, from a CSV path."""
    parts = [p for p in raw.replace("\\", "/").split("/") if p and p != "."]
    if parts and parts[0].startswith("MURA"):
        parts = parts[1:]
    return parts


def read_image_list(archive: Path, split: str) -> tuple[list[ImageRow], list[str]]:
    """The images of `<split>_image_paths.csv` and the problems with its rows."""
    csv_path = archive / f"{split}_image_paths.csv"
    images, problems = [], []
    for line, cells in read_rows(csv_path):
        where = f"{csv_path} line {line}"
        inner = _inner_parts(cells[0])
        if len(inner) != 5 or not inner[1].startswith("XR_"):
            problems.append(f"{where}: malformed path {cells[0]!r}; expected {PATH_SHAPE}")
            continue
        part = inner[1].removeprefix("XR_")
        if part not in BODY_PARTS:
            problems.append(f"{where}: unknown study type {inner[1]!r}; known: {BODY_PARTS}")
            continue
        images.append(
            ImageRow(
                where=where,
                file=archive.joinpath(*inner),
                key="/".join([ARCHIVE, *inner]),
                study="/".join([ARCHIVE, *inner[:4]]),
                body_part=part,
            )
        )
    return images, problems


def read_study_labels(archive: Path, split: str) -> tuple[dict[str, int], list[str]]:
    """{study key: 0|1} from `<split>_labeled_studies.csv` and the problems with its rows."""
    csv_path = archive / f"{split}_labeled_studies.csv"
    labels, problems = {}, []
    for line, cells in read_rows(csv_path):
        where = f"{csv_path} line {line}"
        inner = _inner_parts(cells[0])
        if len(cells) < 2 or len(inner) != 4:
            problems.append(f"{where}: expected '<study folder>/,<0|1>', got {','.join(cells)!r}")
            continue
        if cells[1] not in ("0", "1"):
            problems.append(
                f"{where}: label {cells[1]!r} is not 0 (negative) or 1 (positive); fix the row"
            )
            continue
        labels["/".join([ARCHIVE, *inner])] = int(cells[1])
    return labels, problems


def _missing_message(image: ImageRow) -> str:
    return f"{image.where}: {image.file} does not exist ({SKIP_HINT})"


def _select(
    cfg: Config, split: str, images: list[ImageRow], study_labels: dict[str, int]
) -> tuple[list[ImageRow], np.ndarray, list[ImageRow], list[str]]:
    """Keep the configured study types, drop or report missing files and unlabelled studies:
    (images, labels, dropped images, problems)."""
    order = list(cfg.body_parts or BODY_PARTS)
    kept, labels, dropped, problems = [], [], [], []
    for image in images:
        if image.body_part not in order:
            continue
        if not image.file.is_file():
            if cfg.on_bad_image == "skip":
                dropped.append(image)
            else:
                problems.append(_missing_message(image))
            continue
        if cfg.task == "body_part":
            labels.append(order.index(image.body_part))
        elif image.study in study_labels:
            labels.append(study_labels[image.study])
        else:
            problems.append(
                f"{image.where}: study {image.study}/ has no row in "
                f"{split}_labeled_studies.csv; add its label"
            )
            continue
        kept.append(image)
    return kept, np.asarray(labels, dtype=np.int64), dropped, problems


def _check_csvs(archive: Path, task: str) -> None:
    needed = ["image_paths"] + (["labeled_studies"] if task == "abnormality" else [])
    raise_problems(
        [
            f"{archive / f'{split}_{name}.csv'}: missing; {ARCHIVE} ships it (restore the file)"
            for split in ("train", "valid")
            for name in needed
            if not (archive / f"{split}_{name}.csv").is_file()
        ]
    )


def classes_of(cfg: Config) -> list[str]:
    """The class names, in label order."""
    if cfg.task == "abnormality":
        return list(ABNORMALITY_CLASSES)
    return list(cfg.body_parts or BODY_PARTS)


def open_sources(cfg: Config) -> tuple[list[str], dict[str, FileSource]]:
    """The train (minus the test patients), valid and test splits of the archive.

    The test patients are `held_out_patients(<every patient of train_image_paths.csv>,
    test_fraction, split_seed)`: they do not depend on the task, the study types kept, the caps
    or on files being missing, so jobs on the same archive and seed share one test split.
    """
    archive = find_archive(cfg.root)
    _check_csvs(archive, cfg.task)
    problems: list[str] = []
    listed, selected = {}, {}
    for split in ("train", "valid"):
        listed[split], image_problems = read_image_list(archive, split)
        study_labels: dict[str, int] = {}
        if cfg.task == "abnormality":
            study_labels, label_problems = read_study_labels(archive, split)
            problems += label_problems
        problems += image_problems
        selected[split] = _select(cfg, split, listed[split], study_labels)
        problems += selected[split][3]
    raise_problems(problems)

    held_out = set(
        held_out_patients(
            {patient_of(i.study) for i in listed["train"]}, cfg.test_fraction, cfg.split_seed
        )
    )
    train, train_labels, train_dropped, _ = selected["train"]
    in_test = np.array([patient_of(i.study) in held_out for i in train], dtype=bool)
    parts = {
        "train": (
            [i for i, t in zip(train, in_test, strict=True) if not t],
            train_labels[~in_test],
            [i for i in train_dropped if patient_of(i.study) not in held_out],
        ),
        "valid": selected["valid"][:3],
        "test": (
            [i for i, t in zip(train, in_test, strict=True) if t],
            train_labels[in_test],
            [i for i in train_dropped if patient_of(i.study) in held_out],
        ),
    }
    classes = classes_of(cfg)
    sources, problems = {}, []
    for split, (images, labels, dropped) in parts.items():
        cap = getattr(cfg.max_per_class, split) if cfg.max_per_class else None
        keep = cap_per_class(labels, [i.key for i in images], cap, cfg.split_seed)
        images, labels = [images[k] for k in keep], labels[keep]
        problems += empty_class_problems(classes, labels, split, str(archive), _empty_hint(split))
        sources[split] = FileSource(
            paths=[i.file for i in images],
            labels=labels,
            groups=np.asarray([i.study for i in images], dtype=str),
            dropped=[_missing_message(i) for i in dropped],
        )
    raise_problems(problems)
    patients = len({patient_of(i.study) for i in listed["train"]})
    sources["test"].notes = [
        f"test holds {len(held_out)} of the {patients} patients of MURA's train list "
        f"(test_fraction {cfg.test_fraction:g}, split_seed {cfg.split_seed}): MURA's own test "
        "set is hidden, so every job on this archive and seed tests on these patients"
    ]
    return classes, sources


def _empty_hint(split: str) -> str:
    if split == "test":
        return "raise data.test_fraction or change data.split_seed"
    return "check data.body_parts and the archive's CSVs"
