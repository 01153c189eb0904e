"""Is a KD gain real? Paired statistics of a KD cell against the same student's no-KD baseline.

A KD student and its baseline with the same seed see the same batches (kdray's batches depend
only on seed, rank and epoch), so they are compared pairwise, seed by seed: d = KD − baseline.
- interval: a t-interval on the mean gain when seeds are few (below `BOOTSTRAP_FROM`), a BCa
  bootstrap when there are enough (the bootstrap is too narrow on few values); which one is said;
- p: the paired t-test (`scipy.stats.ttest_rel`);
- verdict: `better` / `worse` when the Holm-corrected p across a study's cells is below 0.05,
  else `no evidence`; below `MIN_SEEDS` paired seeds, `n too small` and no verdict;
- probability of improvement: how often a KD run beat its paired baseline (ties count half).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

MIN_SEEDS = 3
BOOTSTRAP_FROM = 10
LEVEL = 0.95
ALPHA = 0.05


@dataclass
class Gain:
    """A KD cell's paired gain over its baseline; `p_holm` and `verdict` are set per study."""

    n: int
    mean: float | None = None
    low: float | None = None
    high: float | None = None
    interval: str | None = None  # "t" | "bootstrap" | None
    p: float | None = None
    p_holm: float | None = None
    verdict: str = "n too small"


def paired_gain(kd: dict[int, float], baseline: dict[int, float]) -> Gain:
    """The gain of `kd` over `baseline`, each a seed -> accuracy map, paired on common seeds."""
    seeds = sorted(set(kd) & set(baseline))
    a = np.array([kd[s] for s in seeds], dtype=float)
    b = np.array([baseline[s] for s in seeds], dtype=float)
    d = a - b
    gain = Gain(n=len(d), mean=float(d.mean()) if len(d) else None)
    if len(d) < MIN_SEEDS:
        return gain
    if np.all(d == d[0]):  # no spread: the t-test is undefined, the answer is not
        gain.low = gain.high = float(d[0])
        gain.interval, gain.p = "t", 1.0 if d[0] == 0 else 0.0
        return gain
    if len(d) >= BOOTSTRAP_FROM:
        result = stats.bootstrap(
            (d,), np.mean, confidence_level=LEVEL, method="BCa", rng=np.random.default_rng(0)
        )
        gain.low, gain.high = map(float, result.confidence_interval)
        gain.interval = "bootstrap"
    else:
        low, high = stats.t.interval(LEVEL, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
        gain.low, gain.high, gain.interval = float(low), float(high), "t"
    gain.p = float(stats.ttest_rel(a, b).pvalue)
    return gain


def signed(value: float) -> str:
    """A gain to 3 decimals with its sign, `+0.012` / `-0.012`; `0.000` when it rounds to zero
    (never `-0.000`, which reads as a loss)."""
    text = f"{value:+.3f}"
    return text[1:] if float(text) == 0 else text


def holm(pvalues: list[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (step-down, monotone, capped at 1), in input order."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted = [0.0] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def judge(gains: list[Gain]) -> list[Gain]:
    """Set `p_holm` and `verdict` for the cells of one study (corrected together)."""
    tested = [g for g in gains if g.p is not None]
    for gain, p_holm in zip(tested, holm([g.p for g in tested]), strict=True):
        gain.p_holm = p_holm
        if p_holm < ALPHA and gain.mean > 0:
            gain.verdict = "better"
        elif p_holm < ALPHA and gain.mean < 0:
            gain.verdict = "worse"
        else:
            gain.verdict = "no evidence"
    return gains


def probability_of_improvement(pairs: list[tuple[float, float]]) -> float | None:
    """Share of (KD, baseline) pairs where KD scored higher; ties count half."""
    if not pairs:
        return None
    wins = sum(1.0 if k > b else 0.5 if math.isclose(k, b) else 0.0 for k, b in pairs)
    return wins / len(pairs)
