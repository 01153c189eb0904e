"""The Methods page's generated parts: each registered method (`kdray.methods.METHODS`) with
its formula and sources (its module's docstring), what it needs, the tasks it supports and its
parameters with their defaults."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from docs.gen.fields import cell, field_rows, first_sentence, slug

NEEDS = {
    "logits": "logits (the teacher's cached soft labels, or the teacher online)",
    "features": "stage features (the teacher runs online)",
    "none": "no teacher run",
}
REPO = Path(__file__).resolve().parents[2]


def _methods() -> list:
    """The registered methods, Hinton KD first, then by name."""
    from kdray.methods import METHODS

    return [METHODS[name] for name in sorted(METHODS, key=lambda n: (n != "kd", n))]


def _module_doc(method) -> str:
    return inspect.cleandoc(inspect.getmodule(method).__doc__ or "")


CITED = re.compile(r'^(?P<what>[^(]+?) \((?P<authors>[^"]+?), "[^"]+", (?P<venue>[^;)]+)')


def short_title(method) -> str:
    """What the method is and its paper in short: `Decoupled KD (Zhao et al., CVPR 2022)`."""
    sentence = first_sentence(_module_doc(method))
    cited = CITED.match(sentence)
    if not cited:
        return sentence.split(" (")[0].rstrip(".")
    authors = cited["authors"]
    first = re.split(r",| &", authors)[0]
    authors = f"{first} et al." if "," in authors else authors
    return f"{cited['what']} ({authors}, {cited['venue'].strip()})"


def _params_in_words(method) -> str:
    fields = [(n, i) for n, i in method.Params.model_fields.items() if n != "name"]
    return ", ".join(f"`{n}` {_short(i.default)}" for n, i in fields)


def _short(value) -> str:
    """A default in a few characters: `auto` for None (the method decides), 4 for 4.0."""
    if value is None:
        return "auto"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _tasks(method) -> str:
    return ", ".join(t.replace("_", "-") for t in method.tasks)


def _ranks(method) -> str:
    return ", ".join(f"{rank}D" for rank in method.ranks)


def summary_table(link_prefix: str = "") -> str:
    """One row per method: its name (a link to its section), what it is, what it needs, its
    tasks and spatial ranks (2D images, 3D volumes), its parameters and their defaults."""
    lines = [
        "| method | what (paper) | needs from a teacher | tasks | data | parameters (defaults) |",
        "|---|---|---|---|---|---|",
    ]
    for method in _methods():
        lines.append(
            f"| [`{method.name}`]({link_prefix}#{slug(method.name)}) | "
            f"{cell(short_title(method))} | {method.needs} | "
            f"{cell(_tasks(method))} | {_ranks(method)} | {cell(_params_in_words(method))} |"
        )
    return "\n".join(lines) + "\n"


def readme_table() -> str:
    """The README's methods table: the same rows, linking into the docs."""
    return summary_table("docs/methods.md")


def reference() -> str:
    """Each method's section: its module's docstring, its traits and its parameters table."""
    out = []
    for method in _methods():
        source = Path(inspect.getsourcefile(method)).resolve().relative_to(REPO)
        distilled = ", ".join(f"`{k}`" for k in method.distill_defaults) or "—"
        out += [
            f"### `{method.name}`\n",
            _module_doc(method) + "\n",
            "| | |",
            "|---|---|",
            f"| needs from a teacher | {NEEDS[method.needs]} |",
            f"| tasks | {_tasks(method)} |",
            f"| data (spatial rank) | {_ranks(method)} |",
            f"| several teachers (an ensemble) | {'yes' if method.allows_ensemble else 'no'} |",
            f"| trains on unlabelled images | {'yes' if method.uses_unlabelled else 'no'} |",
            f"| unset parameters taken from `distill` | {distilled} |",
            f"| source | `{source}`, class `{method.__name__}` |\n",
            f"`method: {{name: {method.name}, ...}}` takes:\n",
            field_rows(method.Params, {}, skip=("name",)),
        ]
    return "\n".join(out)
