"""The report's figure of a searched study: per cell, each sample's validation score against
each searched parameter, and its validation curve over epochs (a stopped sample's curve ends
with a cross at its stop); the setting chosen on validation ringed."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import pandas as pd

from kdray.results.searches import confirmed_runs, sample_runs


def search_figure(trials: pd.DataFrame, epochs: pd.DataFrame, study: str, metric: str):
    """A matplotlib figure (one row of panels per searched cell), or None without samples."""
    samples = sample_runs(trials, study)
    if samples.empty:
        return None
    chosen = set(confirmed_runs(trials, study).setting_label)
    cells = list(samples.groupby(["model", "budget", "teacher_label"], sort=False))
    params = sorted({k for s in samples.setting.dropna() for k in json.loads(s)})
    width = len(params) + 1
    fig, axes = plt.subplots(
        len(cells), width, figsize=(3.4 * width, 3.0 * len(cells)), squeeze=False
    )
    for row, ((student, _, teacher), group) in zip(axes, cells, strict=True):
        settings = [json.loads(s) if isinstance(s, str) else {} for s in group.setting]
        stopped = (group.status == "stopped").to_numpy()
        picked = group.setting_label.isin(chosen).to_numpy()
        for ax, name in zip(row, params, strict=False):
            x = [s.get(name) for s in settings]
            ax.scatter(x, group.val_score, c=["C7" if s else "C0" for s in stopped], s=18)
            ringed = [v for v, p in zip(x, picked, strict=True) if p]
            ax.scatter(ringed, group.val_score[picked], s=120, facecolors="none", edgecolors="C3")
            if _logarithmic(x):
                ax.set_xscale("log")
            ax.set_xlabel(name, fontsize=8)
            ax.set_title(f"{student} ← {teacher}", fontsize=8)
        _curves(row[-1], group, epochs, picked)
        row[0].set_ylabel(f"valid {metric}", fontsize=8)
    fig.suptitle(
        f"{study}: each sample (grey: stopped early; ringed: chosen on validation)", fontsize=9
    )
    fig.tight_layout()
    return fig


def _curves(ax, group: pd.DataFrame, epochs: pd.DataFrame, picked) -> None:
    runs = zip(group.trial_id, group.status, picked, strict=True)
    for run, status, is_chosen in runs:
        curve = epochs[epochs.trial_id == run].sort_values("epoch")
        if curve.empty:
            continue
        color = "C3" if is_chosen else "C7" if status == "stopped" else "C0"
        ax.plot(curve.epoch, curve.val_score, color=color, lw=2 if is_chosen else 0.8)
        if status == "stopped":
            ax.plot(curve.epoch.iloc[-1], curve.val_score.iloc[-1], "x", color=color)
    ax.set_xlabel("epoch", fontsize=8)
    ax.set_title("validation curves", fontsize=8)


def _logarithmic(values: list) -> bool:
    numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    return bool(numbers) and min(numbers) > 0 and max(numbers) / min(numbers) >= 100
