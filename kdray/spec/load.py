"""Reading a job file: YAML (a key given twice refused), dotted `--set` overrides, validation
against `kdray.spec.job.Job`, each problem one line of a `JobError`."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    ValidationError,
)

from kdray.data import DATA_KINDS
from kdray.spec.base import JobError
from kdray.spec.checks import model_problems
from kdray.spec.job import Job
from kdray.spec.search import DIMENSION_KINDS


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one `a.b.c=value` override; the value is parsed as YAML (`1`, `true`, `[1, 2]`)."""
    if "=" not in assignment:
        raise JobError([f"--set {assignment}: expected FIELD.PATH=VALUE, e.g. train.epochs=1"])
    path, _, text = assignment.partition("=")
    keys = [k for k in path.strip().split(".") if k]
    if not keys:
        raise JobError([f"--set {assignment}: empty field path"])
    try:
        value = read_yaml(text)
    except yaml.YAMLError as exc:
        raise JobError(
            [f"--set {assignment}: value is not valid YAML ({_yaml_problem(exc)})"]
        ) from None
    node = raw
    for depth, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            where = ".".join(keys[: depth + 1])
            raise JobError([f"--set {assignment}: {where} is not a section"])
        node = child
    node[keys[-1]] = value


def _yaml_problem(exc: yaml.YAMLError, lines: bool = False) -> str:
    """`expected ',' or ']', but got '<stream end>' at column 3` (`line 4, column 3` for a
    file): the parser's own words in one line, without its quoted excerpt and caret."""
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if not problem:
        return " ".join(str(exc).split())
    context = getattr(exc, "context", None)
    where = (
        f"line {mark.line + 1}, column {mark.column + 1}" if lines else f"column {mark.column + 1}"
    )
    return f"{problem}{f' ({context})' if context else ''} at {where}" if mark else problem


# the names pydantic gives a union's branches in an error's location (`baseline.bool`,
# `baseline.SearchedBaseline.search...`): not fields of the job file
SCALAR_BRANCHES = ("bool", "int", "float", "str")
MODEL_BRANCHES = ("SearchedBaseline",)


def _is_branch(loc: tuple, index: int) -> bool:
    """A model branch anywhere; a scalar one only last (`int` is also a search dimension's
    kind: `space.temperature.int.0`)."""
    part = loc[index]
    if part in MODEL_BRANCHES:
        return True
    last = index == len(loc) - 1
    return last and (part in SCALAR_BRANCHES or str(part).startswith("literal["))


def _where(loc: tuple) -> str:
    """An error's field path as the job file spells it: without the data kind's name, a
    union's branch names, nor a search dimension's kind where pydantic repeats it
    (`space.temperature.choice.choice`)."""
    parts = [p for i, p in enumerate(loc) if p not in DATA_KINDS and not _is_branch(loc, i)]
    return ".".join(
        str(p)
        for i, p in enumerate(parts)
        if not (p in DIMENSION_KINDS and i + 1 < len(parts) and parts[i + 1] == p)
    )


def _format_validation_error(error: ValidationError) -> list[str]:
    lines = []
    for item in _one_branch(error.errors()):
        loc = _where(item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = (
                "unknown field (check the spelling; see docs/job-file.md, the job file reference)"
            )
        elif "input" in item and not isinstance(item["input"], dict | list):
            message = f"{message} (got {item['input']!r})"
        lines.append(f"{loc or '<job>'}: {message}")
    return lines


def _one_branch(items: list[dict]) -> list[dict]:
    """A union's errors from the branch the input was meant for: a mapping's from the model
    (not `baseline.bool: Input should be a valid boolean` for `baseline: {search: ...}`), a
    word's or number's from the scalar branch (not `... valid dictionary or instance of
    SearchedBaseline` for `baseline: maybe`)."""

    def other_branch(item: dict) -> bool:
        last, given = (item["loc"] or ("",))[-1], item.get("input")
        if last in SCALAR_BRANCHES:
            return isinstance(given, dict)
        return last in MODEL_BRANCHES and not isinstance(given, dict)

    kept = [item for item in items if not other_branch(item)]
    return kept or items


def parse_job(raw: Any, overrides: list[str] | tuple[str, ...] = ()) -> Job:
    if not isinstance(raw, dict):
        raise JobError(["<job>: the job file must be a YAML mapping (name:, data:, studies:, ...)"])
    for assignment in overrides:
        apply_override(raw, assignment)
    try:
        job = Job.model_validate(raw)
    except ValidationError as exc:
        raise JobError(_format_validation_error(exc)) from None
    problems = model_problems(job)
    if problems:
        raise JobError(problems)
    return job


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping: plain YAML keeps the last one, which
    silently drops a whole section written twice."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`, overridable
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (also on line {seen[key]}): YAML would keep only "
                    "the last one; merge them into one",
                    key_node.start_mark,
                )
            if isinstance(key, typing.Hashable):
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def read_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)


def load_job(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Job:
    path = Path(path)
    if path.is_dir():
        raise JobError([f"{path}: is a folder; give the job's YAML file"])
    if not path.is_file():
        raise JobError([f"{path}: no such job file"])
    try:
        raw = read_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise JobError(
            [f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8"]
        ) from None
    except yaml.YAMLError as exc:
        raise JobError([f"{path}: not valid YAML: {_yaml_problem(exc, lines=True)}"]) from None
    return parse_job(raw, overrides)
