"""The job file reference: every section of `kdray.spec.job.Job`, its fields' types, defaults,
limits and descriptions, read from the pydantic models themselves."""

from __future__ import annotations

import re

from pydantic import BaseModel

from docs.gen.fields import Anchors, field_rows, first_sentence, slug, sub_models

METHODS_LINK = "methods.md#each-methods-parameters"


def _walk(model: type[BaseModel], path: str, found: list[tuple[str, type[BaseModel]]]) -> None:
    """Add every section below `model` to `found` as (path, model), depth first, in field
    order. Data kinds and methods are described apart (`data`, the Methods page)."""
    from kdray.data.base import DataConfigBase
    from kdray.data.volume_base import VolumeConfigBase
    from kdray.methods import MethodParams

    described_apart = (DataConfigBase, VolumeConfigBase, MethodParams)
    for name, info in model.model_fields.items():
        where = f"{path}.{name}" if path else name
        if "dict[str" in str(info.annotation):
            where += ".NAME"  # a map's values: studies.NAME
        subs = sub_models(info.annotation)
        for sub in subs:
            if issubclass(sub, described_apart):
                continue
            if all(sub is not seen for _, seen in found):
                # one of several forms (a search dimension): named by its first key
                keys = [f.alias or n for n, f in sub.model_fields.items()]
                form = f" ({keys[0]})" if len(subs) > 1 and keys else ""
                found.append((where + form, sub))
                _walk(sub, where, found)


def _sections() -> list[tuple[str, type[BaseModel]]]:
    """Every section below the top level but `data`, in the order the job file lists them."""
    from kdray.spec.job import Job

    found: list[tuple[str, type[BaseModel]]] = []
    _walk(Job, "", found)
    return found


def _data_sections() -> list[tuple[str, type[BaseModel]]]:
    """The sections inside data kinds (`data.split_by`, ...), each once."""
    from kdray.data import DATA_KINDS

    found: list[tuple[str, type[BaseModel]]] = []
    for module in DATA_KINDS.values():
        _walk(module.Config, "data", found)
    return found


def _anchors() -> Anchors:
    from kdray.data import DATA_KINDS
    from kdray.methods import METHODS

    anchors: Anchors = {}
    for path, model in _sections() + _data_sections():
        anchors[model] = (f"#{slug(path)}", f"`{path}`")
    for kind in DATA_KINDS.values():
        anchors[kind.Config] = ("#data", "a data kind")
    for method in METHODS.values():
        anchors[method.Params] = (METHODS_LINK, "a method and its settings")
    return anchors


def reference() -> str:
    """The whole reference: the top level, `data` (common fields, then each kind), the rest."""
    from kdray.spec.job import Job

    anchors = _anchors()
    out = ["## Top level\n", field_rows(Job, anchors), _data_section(anchors)]
    for path, model in _sections():
        out += [f"## {path}\n", *_doc_line(model), field_rows(model, anchors)]
    return re.sub(r"^(#+) ", r"#\1 ", "\n".join(out), flags=re.M)  # below the page's `## Reference`


def _data_section(anchors: Anchors) -> str:
    from kdray.data import DATA_KINDS
    from kdray.data.base import DataConfigBase

    base = DataConfigBase.model_fields
    common = tuple(base)
    out = [
        "## data\n",
        "`kind` picks the data kind; these fields are common to every image kind (the volume "
        "kinds, `spatial_rank` 3, list their own):\n",
        field_rows(DataConfigBase, anchors),
    ]
    for name, module in DATA_KINDS.items():
        out.append(f"### data.kind: {name}\n")
        out.append(f"{first_sentence(module.Config.__doc__)}\n")
        same = tuple(  # common fields this kind leaves at the common default
            name
            for name in common
            if name not in module.Config.model_fields
            or _same(module.Config.model_fields[name], base[name])
        )
        out.append(field_rows(module.Config, anchors, skip=(*same, "kind")))
    for path, model in _data_sections():
        out += [f"### {path}\n", *_doc_line(model), field_rows(model, anchors)]
    return "\n".join(out)


def _same(one, other) -> bool:
    return (one.annotation, one.default, one.description) == (
        other.annotation,
        other.default,
        other.description,
    )


def _doc_line(model: type[BaseModel]) -> list[str]:
    doc = first_sentence(model.__doc__)
    return [f"{doc}\n"] if doc else []
