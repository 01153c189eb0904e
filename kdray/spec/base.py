"""What every part of the job schema shares: the one-line-per-problem error and strict models."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class JobError(Exception):
    """A job file that cannot be used; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
