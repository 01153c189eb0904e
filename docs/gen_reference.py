"""The docs' generated parts, written from the code they describe so they cannot drift.

A page marks each generated part with a pair of HTML comments:

    <!-- generated: job-reference -->
    ... (rewritten by this script) ...
    <!-- end generated -->

Everything outside the marks is written by hand. Run it after changing a job field, a method, a
results column or a layer:

    .venv/bin/python docs/gen_reference.py           # rewrite the marked parts
    .venv/bin/python docs/gen_reference.py --check   # exit 1 naming the stale pages

`tests/test_docs.py` runs the check, so a stale page fails the suite.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
if str(REPO) not in sys.path:  # run as a script: kdray and docs from this checkout
    sys.path.insert(0, str(REPO))

from docs.gen import architecture, job_file, methods, results  # noqa: E402

MARKED = re.compile(
    r"(?P<open><!-- generated: (?P<name>[a-z0-9-]+) -->\n)(?P<body>.*?)"
    r"(?P<close><!-- end generated -->)",
    re.S,
)

PARTS: dict[str, Callable[[], str]] = {
    "job-reference": job_file.reference,
    "methods-table": methods.summary_table,
    "readme-methods": methods.readme_table,
    "methods-reference": methods.reference,
    "trials-schema": results.trials_table,
    "epochs-schema": results.epochs_table,
    "layers": architecture.layers,
    "modules": architecture.modules_table,
}


class UnknownPartError(Exception):
    """A mark names a part this script does not know."""


def render(text: str, where: str = "<page>") -> str:
    """`text` with every marked part rewritten."""

    def fill(match: re.Match) -> str:
        name = match["name"]
        if name not in PARTS:
            raise UnknownPartError(
                f"{where}: unknown generated part {name!r}; known: {sorted(PARTS)}"
            )
        return match["open"] + PARTS[name]().rstrip("\n") + "\n" + match["close"]

    return MARKED.sub(fill, text)


def pages() -> list[Path]:
    """The pages (docs/ and README.md) that hold a marked part."""
    candidates = [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]
    return [p for p in candidates if MARKED.search(p.read_text(encoding="utf-8"))]


def stale_pages() -> list[Path]:
    """The pages whose marked parts differ from what the code says now."""
    return [p for p in pages() if render(p.read_text(encoding="utf-8"), str(p)) != p.read_text()]


def main(argv: list[str]) -> int:
    if argv == ["--check"]:
        stale = stale_pages()
        for page in stale:
            print(
                f"error: {page.relative_to(REPO)} is stale; run .venv/bin/python "
                "docs/gen_reference.py",
                file=sys.stderr,
            )
        return 1 if stale else 0
    if argv:
        print("usage: gen_reference.py [--check]", file=sys.stderr)
        return 2
    for page in pages():
        text = page.read_text(encoding="utf-8")
        new = render(text, str(page))
        if new != text:
            page.write_text(new, encoding="utf-8")
            print(f"wrote {page.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
