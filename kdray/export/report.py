"""`report.html`: the export's tables and figures in one self-contained file.

The tables are `kdray.export.markdown.tables`, the ones the Markdown files hold; the figures are
inline SVG drawn with matplotlib (Agg): each KD cell's test accuracy next to its student's no-KD
baseline, a Student x Teacher heatmap of test accuracy per study, test accuracy against MACs and
latency with the Pareto-optimal models marked (`kdray.export.frontier`), and validation accuracy
per epoch (one panel per study, its teachers dashed, the defective teachers' band shaded; one panel
for the baselines). No JavaScript, no external files, no network: it opens from disk.
Failed runs show "—" in the tables and are left out of the figures.
"""

from __future__ import annotations

import html
import io
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import matplotlib
import numpy as np
import pandas as pd

from kdray.export.frontier import frontier_figure
from kdray.export.markdown import statistics_note, tables
from kdray.export.search_plots import search_figure
from kdray.results.cells import Cell, baseline_rows, has_role, metric_title, study_cells
from kdray.results.cost_ratios import compression_note, frontier_points
from kdray.spec.plan import SearchCell

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
from matplotlib.ticker import MaxNLocator  # noqa: E402

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 0.5em 0 1.5em; }
figure svg { max-width: 100%; height: auto; }
.note { color: #666; font-style: italic; }
"""


@dataclass
class Examples:
    """The report's figure of predicted masks (`kdray.export.masks`, `.volume_views`)."""

    heading: str
    figure: str  # inline SVG


def html_table(df: pd.DataFrame) -> str:
    """The table, or a note where it has no rows; then its note (`df.attrs`), if any."""
    note = df.attrs.get("note")
    after = f'<p class="note">{html.escape(note)}</p>' if note else ""
    if not len(df.columns) or df.empty:
        return '<p class="note">no finished trials</p>' + after
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for row in df.itertuples(index=False):
        cells = []
        for value in row:
            text = "—" if value is None or pd.isna(value) else str(value)
            numeric = text[:1].isdigit() or text[:1] in "+-—"
            cells.append(f"<td{' class=num' if numeric else ''}>{html.escape(text)}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>{after}"


def svg(fig, key: str) -> str:
    """The figure as inline `<svg>` text (vector, text kept as text, no XML prolog), its ids
    prefixed with `key` so that several figures share one page; the figure is closed."""
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "kdray"}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    text = text[text.index("<svg") :]
    text = re.sub(r'\bid="([^"]+)"', rf'id="{key}-\1"', text)
    text = re.sub(r'href="#([^"]+)"', rf'href="#{key}-\1"', text)
    text = re.sub(r"url\(#([^)]+)\)", rf"url(#{key}-\1)", text)
    return f"<figure>{text}</figure>"


def _finite(values: pd.Series) -> pd.Series:
    return pd.to_numeric(values, errors="coerce").dropna()


def _mean_std(values: pd.Series) -> tuple[float, float, int]:
    values = _finite(values)
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return float(values.mean()) if len(values) else math.nan, std, len(values)


def gain_figure(cells: list[Cell], metric: str = "accuracy") -> str | None:
    """Paired bars: each KD cell's test accuracy and its student's baseline over the seeds the
    gain pairs; std over seeds."""
    bars = []
    for c in cells:
        kd_runs, base_runs = c.paired_runs()
        kd, base_ = _mean_std(kd_runs.test_score), _mean_std(base_runs.test_score)
        if kd[2]:
            bars.append((f"{c.study}: {c.student} ← {c.teacher}", kd, base_))
    if not bars:
        return None
    # one row per cell, read top to bottom in the tables' order: stays legible for a thesis grid
    y = np.arange(len(bars))[::-1]
    height = 0.38
    fig, ax = plt.subplots(figsize=(7.0, 0.55 * len(bars) + 1.4))
    several = any(c[1][2] > 1 or c[2][2] > 1 for c in bars)
    for offset, which, name, color in ((1, 1, "KD", "C0"), (-1, 2, "no-KD baseline", "C7")):
        means = [c[which][0] for c in bars]
        errs = [c[which][1] for c in bars] if several else None
        ax.barh(
            y + offset * height / 2, means, height, xerr=errs, capsize=3, label=name, color=color
        )
    ax.set_yticks(y, [c[0] for c in bars], fontsize=8)
    ax.set_xlabel(f"test {metric}")
    ax.set_xlim(0, 1)
    ax.legend(fontsize=8, loc="lower right")
    title = f"KD test {metric} against the student's baseline"
    ax.set_title(title + (" (± std over seeds)" if several else ""))
    return svg(fig, "gain")


def forest_figure(cells: list[Cell], study: str, metric: str = "accuracy") -> str | None:
    """The paired gain of each cell of a study with its 95% interval, a line at zero (drawn once
    some cell has enough seeds for an interval)."""
    rows = [c for c in cells if c.gain.mean is not None]
    if not any(c.gain.low is not None for c in rows):
        return None
    y = np.arange(len(rows))[::-1]
    fig, ax = plt.subplots(figsize=(7.0, 0.45 * len(rows) + 1.3))
    ax.axvline(0, color="C7", lw=1)
    for yi, c in zip(y, rows, strict=True):
        g = c.gain
        if g.low is not None:
            ax.plot([g.low, g.high], [yi, yi], color="C0", lw=2)
        color = {"better": "C2", "worse": "C3"}.get(g.verdict, "C0")
        ax.plot([g.mean], [yi], "o", color=color)
        ax.annotate(f" {g.verdict}, n={g.n}", (g.mean, yi), fontsize=7, va="bottom")
    ax.set_yticks(y, [f"{c.student} ← {c.teacher}" for c in rows], fontsize=8)
    ax.set_xlabel(f"test {metric} gain over the no-KD baseline (paired by seed, 95% interval)")
    ax.set_title(f"{study}: KD gain")
    return svg(fig, f"forest-{study}")


def sensitivity_figure(cells: list[Cell], study: str, metric: str = "accuracy") -> str | None:
    """Validation and test accuracy of every setting of a sweep, per cell; the chosen ringed."""
    swept = [c for c in cells if len(c.settings) > 1]
    if not swept:
        return None
    fig, axes = plt.subplots(
        1, len(swept), figsize=(4.6 * len(swept), 3.6), sharey=True, squeeze=False
    )
    for ax, c in zip(axes[0], swept, strict=True):
        labels = list(c.settings)
        x = np.arange(len(labels))
        for column, name, color in (("val_score", "valid", "C1"), ("test_score", "test", "C0")):
            stats = [_mean_std(c.settings[label][column]) for label in labels]
            ax.errorbar(
                x, [m for m, _, _ in stats], yerr=[s for _, s, _ in stats], fmt="o-",
                capsize=3, color=color, label=name,
            )  # fmt: skip
        chosen = labels.index(c.chosen)
        ax.plot([chosen], [_mean_std(c.runs.val_score)[0]], "o", ms=14, mfc="none", color="C3")
        ax.set_xticks(x, [label.replace(", ", "\n") for label in labels], fontsize=7)
        ax.set_title(f"{c.student} ← {c.teacher}", fontsize=9)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(f"{metric} (mean ± std over seeds)")
    fig.suptitle(f"{study}: every setting (ringed: chosen on validation)", fontsize=10)
    return svg(fig, f"sensitivity-{study}")


def heatmap_figure(cells: list[Cell], study: str, metric: str = "accuracy") -> str | None:
    """Student x Teacher mean test accuracy of one study (the chosen setting of a sweep)."""
    rows = [
        {"model": c.student, "teacher_label": c.teacher, "test_score": v}
        for c in cells
        for v in pd.to_numeric(c.runs.test_score, errors="coerce").dropna()
    ]
    if not rows:
        return None
    runs = pd.DataFrame(rows)
    grid = runs.pivot_table(
        index="model", columns="teacher_label", values="test_score", aggfunc="mean", sort=False
    )
    values = grid.to_numpy(dtype=float)
    fig, ax = plt.subplots(
        figsize=(max(3.5, 1.6 * grid.shape[1] + 2), max(2.2, 0.7 * grid.shape[0] + 1.4))
    )
    ax.pcolormesh(np.ma.masked_invalid(values), cmap="viridis", vmin=0, vmax=1)
    for (i, j), value in np.ndenumerate(values):
        text = "—" if np.isnan(value) else f"{value:.3f}"
        color = "black" if np.isnan(value) or value > 0.6 else "white"
        ax.text(j + 0.5, i + 0.5, text, ha="center", va="center", color=color, fontsize=9)
    ax.set_xticks(np.arange(grid.shape[1]) + 0.5, list(grid.columns), fontsize=8)
    ax.set_yticks(np.arange(grid.shape[0]) + 0.5, list(grid.index), fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("teacher")
    ax.set_ylabel("student")
    several = runs.groupby(["model", "teacher_label"]).size().max() > 1
    ax.set_title(f"{study}: test {metric}" + (" (mean over seeds)" if several else ""))
    return svg(fig, f"heatmap-{study}")


def _run_label(row, as_teacher: bool) -> str:
    if as_teacher:
        return f"teacher {row.model} s{row.seed}"
    if row.method == "none":
        return f"{row.model} s{row.seed}"
    return f"{row.model} ← {row.teacher or row.method} s{row.seed}"


def curves_figure(
    done: pd.DataFrame, epochs: pd.DataFrame, studies: list[str], metric: str = "accuracy"
) -> str | None:
    """Validation accuracy per epoch: one panel per study (its teachers dashed, its students
    solid, the teachers' band shaded), one for the no-KD baselines."""
    epochs = epochs[pd.to_numeric(epochs.val_score, errors="coerce").notna()]
    epochs = epochs[epochs.trial_id.isin(done.trial_id)]
    if epochs.empty:
        return None
    panels = []
    for study in studies:
        teachers = done[has_role(done, f"teacher:{study}")]
        panels.append((study, teachers, done[has_role(done, f"kd:{study}")]))
    panels.append(("no-KD baselines", done.iloc[:0], baseline_rows(done)))
    panels = [p for p in panels if epochs.trial_id.isin(pd.concat([p[1], p[2]]).trial_id).any()]
    if not panels:
        return None
    fig, axes = plt.subplots(
        1, len(panels), figsize=(4.2 * len(panels), 3.4), sharey=True, squeeze=False
    )
    for ax, (title, teachers, students) in zip(axes[0], panels, strict=True):
        bands = teachers[["band_low", "band_high"]].dropna().drop_duplicates()
        for low, high in bands.itertuples(index=False):
            ax.axhspan(low, high, color="C3", alpha=0.12, label=f"band [{low:.2f}, {high:.2f}]")
        for runs, as_teacher in ((teachers, True), (students, False)):
            for row in runs.itertuples(index=False):
                mine = epochs[epochs.trial_id == row.trial_id].sort_values("epoch")
                if not mine.empty:
                    style, label = "--" if as_teacher else "-", _run_label(row, as_teacher)
                    ax.plot(mine.epoch, mine.val_score, style, marker=".", label=label)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        # below the panel, not over the curves: a thesis study has a dozen runs per panel
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(0, -0.2), frameon=False)
    axes[0][0].set_ylabel(f"validation {metric}")
    axes[0][0].set_ylim(0, 1)
    return svg(fig, "curves")


def render_report(
    trials: pd.DataFrame,
    epochs: pd.DataFrame,
    studies: list[str],
    name: str,
    written: datetime | None = None,
    examples: Examples | None = None,
    searches: Iterable[SearchCell] = (),
) -> str:
    """The whole HTML page. `trials` / `epochs` are `trials.parquet` / `epochs.parquet` as pandas;
    `studies` are the job's studies, in order (absent studies have no section); `examples`:
    a figure of test images or volumes' slices and predicted masks (segmentation,
    `kdray.export.masks`, `kdray.export.volume_views`); `searches`: the plan's searched cells."""
    written = written or datetime.now(UTC)
    done = trials[trials.status == "finished"]
    all_tables = tables(trials, studies, searches)
    title = f"kdray report: {name}"
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p>written {written.isoformat(timespec='seconds')}; {len(trials)} runs, "
        f"{len(done)} finished. Values are mean ± std over seeds when a cell has several; "
        "— marks a cell without a finished run.</p>",
    ]

    def section(key: str, figure: str | None = None) -> None:
        heading, table = all_tables[key]
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        if figure:
            parts.append(figure)
        parts.append(html_table(table))

    cells = {study: study_cells(done, study) for study in studies}
    metric = metric_title(trials)
    section("summary", figure=gain_figure([c for s in studies for c in cells[s]], metric))
    for study in studies:
        parts.append(forest_figure(cells[study], study, metric) or "")
    section("improvement")
    parts.append(f'<p class="note">{html.escape(statistics_note(metric))}</p>')
    points = frontier_points([c for s in studies for c in cells[s]], done)
    frontier = frontier_figure(points, metric)
    section("compression", figure=svg(frontier, "frontier") if frontier else None)
    parts.append(f'<p class="note">{html.escape(compression_note(metric))}</p>')
    if "labels" in all_tables:
        section("labels")
    section("teachers")
    if "baseline" in all_tables:
        section("baseline")
    if "baseline.search" in all_tables:
        figure = search_figure(trials, epochs, "baseline", metric)
        section("baseline.search", figure=svg(figure, "search-baseline") if figure else None)
    for study in studies:
        section(study, figure=heatmap_figure(cells[study], study, metric))
        if f"{study}.sensitivity" in all_tables:
            figure = sensitivity_figure(cells[study], study, metric)
            section(f"{study}.sensitivity", figure=figure)
        if f"{study}.search" in all_tables:
            figure = search_figure(trials, epochs, study, metric)
            section(f"{study}.search", figure=svg(figure, f"search-{study}") if figure else None)
    parts.append("<h2>Learning curves</h2>")
    curves = curves_figure(done, epochs, studies, metric)
    parts.append(curves or '<p class="note">no epochs recorded</p>')
    if examples:
        parts.append(f"<h2>{html.escape(examples.heading)}</h2>")
        parts.append(examples.figure)
    if "unfinished" in all_tables:
        section("unfinished")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(parts)
        + "\n</body>\n</html>\n"
    )
