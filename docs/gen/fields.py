"""Pydantic fields as Markdown table rows: type, default, limits and description, in words."""

from __future__ import annotations

import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types as at
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

#: where a sub-model is described (`#train`, `methods.md#...`) and the link's words
Anchors = dict[type[BaseModel], tuple[str, str]]


def cell(text: str) -> str:
    """Text safe inside a Markdown table cell: one line; outside code spans pipes, `<` and `>`
    escaped (`<model>` would otherwise be read as an HTML tag); no pipe inside one (GitHub
    would end the cell there, MkDocs would show the backslash)."""
    parts = " ".join(str(text).split()).split("`")
    for i in range(0, len(parts), 2):  # the even parts lie outside code spans
        parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
    for i in range(1, len(parts), 2):  # a pipe in code would end the cell on GitHub
        parts[i] = parts[i].replace("|", "or")
    return "`".join(parts)


def type_name(tp: Any, anchors: Anchors) -> str:
    """An annotation in words: `a`, `b` or `c`; list of int; [float, float]; a section link."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is type(None):
        return "null"
    if tp is Any:
        return "any"
    if origin is typing.Annotated:
        return type_name(args[0], anchors)
    if origin is Literal:
        return _either([f"`{json.dumps(a) if not isinstance(a, str) else a}`" for a in args])
    if origin in (Union, types.UnionType):
        return _either([type_name(a, anchors) for a in args])
    if origin is list:
        inner = type_name(args[0], anchors)
        return f"list of ({inner})" if " or " in inner else f"list of {inner}"
    if origin is dict:
        return f"map of {type_name(args[0], anchors)} to {type_name(args[1], anchors)}"
    if origin is tuple:
        return "[" + ", ".join(type_name(a, anchors) for a in args) + "]"
    if tp is Path:
        return "path"
    if tp is Path:
        return "path"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        href, words = anchors.get(tp, ("", "a section"))
        return f"[{words}]({href})" if href else words
    return {"str": "text", "int": "integer", "float": "number", "bool": "true/false"}.get(
        getattr(tp, "__name__", ""), str(tp)
    )


def _either(words: list[str]) -> str:
    words = list(dict.fromkeys(words))
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def default_text(info: FieldInfo) -> str:
    """The default as a job file would write it; `required` when there is none."""
    if info.is_required():
        return "required"
    value = info.default_factory() if info.default_factory is not None else info.default
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, BaseModel):
        return "its defaults"
    return f"`{_yaml_value(value)}`"


def _yaml_value(value: Any) -> str:
    if isinstance(value, Path):  # a default under the home folder: as a user writes it
        home = str(Path.home())
        return "~" + str(value)[len(home) :] if str(value).startswith(home) else str(value)
    if isinstance(value, str):
        return value or '""'
    return json.dumps(value, default=str).replace('"', "")


_LIMITS = {at.Ge: ("ge", "≥"), at.Gt: ("gt", ">"), at.Le: ("le", "≤"), at.Lt: ("lt", "<")}


def limits_text(info: FieldInfo) -> str:
    """The field's bounds, lengths and pattern in words (`≥ 1`, `at least 1 item`)."""
    words = []
    for meta in info.metadata:
        for kind, (attribute, sign) in _LIMITS.items():
            if isinstance(meta, kind):
                words.append(f"{sign} {_number(getattr(meta, attribute))}")
        if isinstance(meta, at.MinLen) and meta.min_length:
            words.append(f"at least {meta.min_length} item{'s' * (meta.min_length > 1)}")
        if isinstance(meta, at.MaxLen):
            unit = "characters" if info.annotation is str else "items"
            words.append(f"at most {meta.max_length} {unit}")
        pattern = getattr(meta, "pattern", None)
        if pattern:
            words.append(f"pattern `{pattern}`")
    return ", ".join(words)


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def field_rows(model: type[BaseModel], anchors: Anchors, skip: tuple[str, ...] = ()) -> str:
    """A Markdown table of `model`'s fields: name, type, default, meaning."""
    lines = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        meaning = "; ".join(x for x in (info.description, limits_text(info)) if x)
        lines.append(
            f"| `{info.alias or name}` | {cell(type_name(info.annotation, anchors))} | "
            f"{cell(default_text(info))} | {cell(meaning)} |"
        )
    return "\n".join(lines) + "\n"


def sub_models(tp: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds (through unions, lists, maps, Annotated)."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    return [m for arg in get_args(tp) for m in sub_models(arg)]


def first_sentence(doc: str | None) -> str:
    """A docstring's first sentence (up to the first period that ends a sentence)."""
    text = " ".join((doc or "").split())
    for end in (". ", ".\n"):
        if end in text:
            return text[: text.index(end) + 1]
    return text


def slug(heading: str) -> str:
    """The anchor MkDocs gives a heading (Python-Markdown's toc slugify)."""
    from markdown.extensions.toc import slugify

    return slugify(heading.replace("`", ""), "-")
