"""What every data kind's job section shares."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_serializer, model_validator

PATH_FIELDS = ("path", "root", "csv", "image_root")


def distinct(names: list[str]) -> list[str]:
    if len(set(names)) != len(names):
        raise ValueError("names must be distinct")
    return names


DistinctNames = Annotated[list[str], AfterValidator(distinct)]


def absolute_paths(data: Any) -> Any:
    """Resolve relative data paths against the working directory of `kdray run`, so the
    experiment folder (and a later `kdray resume` from elsewhere) sees the same files."""
    if isinstance(data, dict):
        data = dict(data)
        for key in PATH_FIELDS:
            if isinstance(data.get(key), str | Path):
                data[key] = str(Path(data[key]).expanduser().resolve())
    return data


class DataConfigBase(BaseModel):
    """Fields common to every `data:` section; each kind subclasses it with its `kind` literal."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    image_size: int = Field(32, ge=8, le=1024, description="images are resized to this square")
    channels: Literal[1, 3] = Field(1, description="1: grayscale, 3: RGB (gray is replicated)")
    on_bad_image: Literal["error", "skip"] = Field(
        "error", description="a missing/unreadable image stops the run (error) or is skipped"
    )
    task_type: Literal["single_label", "multi_label", "segmentation"] | None = Field(
        None,
        description="what a target is (kdray.tasks); default: from the data (MedMNIST's "
        "registry; a row of labels per image is multi_label; masks are segmentation)",
    )

    #: whether this kind's targets are masks (segmentation) rather than labels
    holds_masks: ClassVar[bool] = False
    #: images (2); volume kinds (`kdray.data.volume_base`) are 3
    spatial_rank: ClassVar[int] = 2

    def declared_task(self) -> str | None:
        """The task the data kind knows without reading the data (MedMNIST's registry)."""
        return None

    def task_type_problem(self) -> str | None:
        """`task_type` set to a task this data cannot be (known without reading it): one line
        naming the field, or None."""
        known = self.declared_task()
        if self.task_type is None or self.task_type == known:
            return None
        if known is None and (self.task_type == "segmentation") == self.holds_masks:
            return None  # labels: single- or multi-label, known once the data is read
        if known is not None:
            return (
                f"data.task_type: {self.task_type} does not fit {self.kind} data, which is "
                f"{known.replace('_', '-')}; drop data.task_type or set it to {known}"
            )
        return (
            f"data.task_type: {self.task_type} does not fit {self.kind} data, which has a label "
            "per image, no masks; drop data.task_type or set it to single_label or multi_label"
        )

    def unused_fields(self) -> set[str]:
        """Fields left out of the section's dump (and so of cache fingerprints and run ids):
        fields added later, at their default, keep older jobs' ids."""
        return {"task_type"} if self.task_type is None else set()

    @model_serializer(mode="wrap")
    def _without_unused_fields(self, handler: Any) -> dict[str, Any]:
        unused = self.unused_fields()
        return {k: v for k, v in handler(self).items() if k not in unused}

    @model_validator(mode="before")
    @classmethod
    def _absolute_paths(cls, data: Any) -> Any:
        return absolute_paths(data)

    def file_stamps(self) -> dict[str, list]:
        """Size and mtime of the data's own files (the file itself, or a root's top-level
        files such as MURA's CSVs): a file replaced in place gives a new cache fingerprint."""
        stamps = {}
        for key in PATH_FIELDS:
            value = getattr(self, key, None)
            if value is None:
                continue
            path = Path(value)
            files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
            stamps[key] = [
                [p.name, p.stat().st_size, int(p.stat().st_mtime)] for p in files if p.exists()
            ]
        return stamps


class DataError(Exception):
    """Bad input data; `problems` holds one line per problem, each naming the file."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems
