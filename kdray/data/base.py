"""What every data kind's job section shares."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class DataConfigBase(BaseModel):
    """Fields common to every `data:` section; each kind subclasses it with its `kind` literal."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_size: int = Field(32, ge=8, le=1024, description="images are resized to this square")
    channels: Literal[1, 3] = Field(1, description="1: grayscale, 3: RGB (gray is replicated)")
    on_bad_image: Literal["error", "skip"] = Field(
        "error", description="a missing/unreadable image stops the run (error) or is skipped"
    )


class DataError(Exception):
    """Bad input data; `problems` holds one line per problem, each naming the file."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems
