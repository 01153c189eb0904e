"""The tables `kdray run` prints when its grid ends, fitted to the terminal (or the `COLUMNS` of a
log): a table that fits is printed as a table; one that does not is printed as stacked rows,
each row's names on one line and its numbers as `Column value` pairs below, so that no number
is ever cut short (a table squeezed into 80 columns showed `0.7…` and `Stu…`). The full tables
stay in the Markdown files of `kdray export` (summary.md and the rest).
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd
from rich import box
from rich.console import Console, Group, RenderableType
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from kdray.export.markdown import statistics_note, tables
from kdray.results.cells import metric_title
from kdray.results.cost_ratios import compression_note
from kdray.spec.plan import SearchCell

# the columns that name a row (the rest are its numbers), per table of the closing output
ROW_NAMES = {
    "teachers": ["Teacher", "Used by"],
    "summary": ["Study", "Method", "Student", "Teacher", "Setting"],
    "compression": ["Study", "Method", "Student", "Teacher", "Setting"],
    "improvement": ["Study"],
    "unfinished": ["trial_id"],
}
EMPTY = ("", "—", "nan", "None")


def closing_output(
    trials: pd.DataFrame,
    studies: list[str],
    width: int,
    teacher_warnings: list[str] = (),
    searches: Iterable[SearchCell] = (),
) -> list[RenderableType]:
    """What `kdray run` prints after its grid: the teachers, each study's student x teacher
    table, the KD gain table, how often KD won and what it bought, each `width` wide at most.
    `teacher_warnings` (teachers that learned little) follow the teachers and the KD gain;
    `searches`: the plan's searched cells (a search table row for each)."""
    made = tables(trials, studies, searches)
    metric = metric_title(trials)
    notes = {"improvement": statistics_note(metric), "compression": compression_note(metric)}
    searches = [f"{s}.search" for s in [*studies, "baseline"]]
    shown = ["teachers", *studies, *searches, "summary", "improvement", "compression", "unfinished"]
    out: list[RenderableType] = []
    for name in [n for n in shown if n in made]:
        title, table = made[name]
        out.append(Text(f"\n{title}", style="bold"))
        if not len(table.columns) or table.empty:
            out.append(Text("no finished trials", style="italic"))
        else:
            keys = ROW_NAMES.get(name, list(table.columns[:2]))  # a study: Student, Split
            out.append(fitted(table.fillna(""), keys, width))
        if table.attrs.get("note"):  # why a study's teacher failed
            out.append(Text(table.attrs["note"], style="italic"))
        if table.empty:
            continue
        if name in notes:
            out.append(Text(f"\n{notes[name]}", style="dim"))
        if name in ("teachers", "summary"):
            out += [Text.assemble(("warning ", "bold yellow"), line) for line in teacher_warnings]
    return out


def fitted(table: pd.DataFrame, keys: list[str], width: int) -> RenderableType:
    """The table as a table when it fits `width` uncut, else as stacked rows."""
    grid = Table(box=box.SIMPLE_HEAD, show_edge=False, header_style="bold", pad_edge=False)
    for column in table.columns:
        grid.add_column(str(column), no_wrap=True)
    for row in table.itertuples(index=False):
        grid.add_row(*(Text(str(v)) for v in row))
    needed = Measurement.get(Console(width=10_000), Console(width=10_000).options, grid).maximum
    if needed <= width:
        return grid
    return stacked(table, [k for k in keys if k in table.columns], width)


def stacked(table: pd.DataFrame, keys: list[str], width: int) -> RenderableType:
    """Each row: its names joined by ` · `, then `Column value` pairs, as many per line as fit."""
    blocks = []
    for row in table.to_dict("records"):
        names = " · ".join(str(row[k]) for k in keys if str(row[k]) not in EMPTY)
        blocks.append(Text(f"  {names}", style="bold"))
        pairs = [f"{column} {row[column]}" for column in table.columns if column not in keys]
        line = ""
        for pair in pairs:
            if line and len(line) + 3 + len(pair) > width - 4:
                blocks.append(Text(f"    {line}"))
                line = ""
            line = f"{line}   {pair}" if line else pair
        if line:
            blocks.append(Text(f"    {line}"))
    return Group(*blocks)
