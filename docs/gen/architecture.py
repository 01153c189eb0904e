"""The Architecture page's generated parts: the layers import-linter enforces (pyproject.toml)
and every module of the package with its docstring's first sentence."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

from docs.gen.fields import cell, first_sentence

REPO = Path(__file__).resolve().parents[2]


def _contracts() -> list[dict]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    return config["tool"]["importlinter"]["contracts"]


def layer_packages() -> list[list[str]]:
    """The layers of the first layers contract, top first, each a list of packages."""
    contract = next(c for c in _contracts() if c["type"] == "layers")
    return [[p.strip() for p in layer.split("|")] for layer in contract["layers"]]


def layers() -> str:
    """Every layers contract as a numbered list, the top layer first."""
    out = []
    for contract in (c for c in _contracts() if c["type"] == "layers"):
        out.append(f"**{contract['name']}**\n")
        for number, layer in enumerate(contract["layers"], 1):
            names = " and ".join(f"`{p.strip()}`" for p in layer.split("|"))
            out.append(f"{number}. {names}")
        out.append("")
    return "\n".join(out)


def modules_table() -> str:
    """One row per module of each layer's packages, top layer first: the module and its
    docstring's first sentence."""
    lines = ["| package | module | what it is (its docstring) |", "|---|---|---|"]
    for layer in layer_packages():
        for package in layer:
            folder = REPO / Path(*package.split("."))
            files = [folder.with_suffix(".py")] if not folder.is_dir() else _modules(folder)
            for index, path in enumerate(files):
                doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or "—"
                short = package.removeprefix("kdray.") + ("/" if folder.is_dir() else "")
                shown = f"`{short}`" if index == 0 else ""
                name = path.relative_to(folder).as_posix() if folder.is_dir() else path.name
                lines.append(f"| {shown} | `{name}` | {cell(first_sentence(doc))} |")
    return "\n".join(lines) + "\n"


def _modules(folder: Path) -> list[Path]:
    """A package's modules, `__init__.py` first, sub-packages' modules after."""
    files = sorted(folder.rglob("*.py"), key=lambda p: (p.name != "__init__.py", str(p)))
    return [p for p in files if "__pycache__" not in p.parts]
