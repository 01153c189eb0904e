"""The accuracy/cost frontier figure of `report.html`: test accuracy against MACs and against
batch-1 latency (log x), every KD student (colour: its study) next to its no-KD baseline
(squares) and its teachers (triangles), the Pareto-optimal models ringed and joined.

A bare `matplotlib.figure.Figure` (no pyplot state), turned into SVG by `kdray.export.report.svg`.
"""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import EngFormatter, LogLocator, NullFormatter

from kdray.results.cost_ratios import BASELINE, KD, TEACHER

PANELS = (
    ("macs", "pareto_macs", "MACs per image (multiply-adds, log)"),
    ("latency_ms_p50", "pareto_latency", "batch-1 latency, median (ms, log)"),
)
MARKERS = {KD: "o", BASELINE: "s", TEACHER: "^"}


def _log_axis(ax, low: float, high: float) -> None:
    """Log x with ticks at 1, 2, 5 x 10^k labelled 20M, 50M (a model grid often spans less than
    a decade), and room on the right for the points' labels."""
    ax.set_xscale("log")
    ax.set_xlim(low / 1.15, high * 1.8)
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.xaxis.set_minor_formatter(NullFormatter())


def frontier_figure(points: pd.DataFrame, metric: str = "accuracy") -> Figure | None:
    """Two panels, accuracy against MACs and against latency; None when nothing was measured."""
    if points.empty or points[[p[0] for p in PANELS]].notna().to_numpy().sum() == 0:
        return None
    studies = list(dict.fromkeys(points.study.dropna()))
    colours = {s: f"C{i % 10}" for i, s in enumerate(studies)}
    fig = Figure(figsize=(11.0, 4.4))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, (cost, optimal, xlabel) in zip(axes, PANELS, strict=True):
        shown = points[points[cost].notna() & points.test_score.notna()]
        for row in shown.itertuples(index=False):
            colour = colours.get(row.study, "0.35" if row.kind == BASELINE else "0.1")
            size, zorder = (6, 3) if row.kind == KD else (9, 2)  # a KD dot shows on its baseline
            ax.plot(getattr(row, cost), row.test_score, MARKERS[row.kind], color=colour, ms=size,
                    alpha=0.85, zorder=zorder)  # fmt: skip
        # one label per place: a KD student as accurate as its baseline shares the point
        for (x, acc), group in shown.groupby([cost, "test_score"], sort=False):
            ax.annotate(
                "\n".join(group.label), (x, acc), fontsize=6, xytext=(5, 3),
                textcoords="offset points", va="bottom",
            )  # fmt: skip
        best = shown[shown[optimal]].sort_values(cost)
        if not best.empty:
            ax.plot(best[cost], best.test_score, "o", ms=14, mfc="none", color="C3", mew=1.5)
            ax.step(best[cost], best.test_score, where="post", color="C3", lw=1, ls="--")
        if shown.empty:
            ax.text(0.5, 0.5, "not measured", ha="center", transform=ax.transAxes)
        else:
            _log_axis(ax, shown[cost].min(), shown[cost].max())
        ax.set_xlabel(xlabel)
        ax.grid(True, which="both", alpha=0.25)
    axes[0].set_ylabel(f"test {metric} (mean over seeds)")
    legend = [
        *(Line2D([], [], marker="o", ls="", color=colours[s], label=f"KD: {s}") for s in studies),
        Line2D([], [], marker="s", ls="", color="0.35", label=BASELINE),
        Line2D([], [], marker="^", ls="", color="0.1", label=TEACHER),
        Line2D([], [], marker="o", ms=11, mfc="none", ls="--", color="C3", label="Pareto-optimal"),
    ]
    fig.legend(handles=legend, loc="upper center", ncol=min(len(legend), 6), fontsize=8,
               bbox_to_anchor=(0.5, 1.02), frameon=False)  # fmt: skip
    fig.suptitle(f"What distillation bought: {metric} against cost", y=1.09)
    return fig
