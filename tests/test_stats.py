"""The paired statistics of a KD gain, checked against scipy and hand counts."""

import numpy as np
import pytest
from scipy import stats

from kdray.results.stats import holm, judge, paired_gain, probability_of_improvement

KD = {0: 0.81, 1: 0.78, 2: 0.84, 3: 0.80, 4: 0.79}
BASE = {0: 0.76, 1: 0.77, 2: 0.79, 3: 0.74, 4: 0.78}


def test_paired_gain_matches_scipy_on_fixed_numbers():
    gain = paired_gain(KD, BASE)
    d = np.array([KD[s] - BASE[s] for s in range(5)])
    assert gain.n == 5 and gain.mean == pytest.approx(d.mean())
    assert gain.p == pytest.approx(stats.ttest_rel(list(KD.values()), list(BASE.values())).pvalue)
    t = stats.t.ppf(0.975, 4) * d.std(ddof=1) / np.sqrt(5)
    assert (gain.low, gain.high) == pytest.approx((d.mean() - t, d.mean() + t))
    assert gain.interval == "t"


def test_pairs_by_seed_not_by_position():
    shuffled = {4: BASE[4], 0: BASE[0], 3: BASE[3], 1: BASE[1], 2: BASE[2], 9: 0.1}
    assert paired_gain(KD, shuffled).p == pytest.approx(paired_gain(KD, BASE).p)
    assert paired_gain(KD, shuffled).n == 5  # seed 9 has no KD run: not paired


def test_a_large_consistent_gain_over_five_seeds_is_better():
    base = {s: 0.70 + 0.01 * s for s in range(5)}
    kd = {s: v + 0.08 + 0.002 * (s % 2) for s, v in base.items()}
    (gain,) = judge([paired_gain(kd, base)])
    assert gain.verdict == "better" and gain.low > 0
    (loss,) = judge([paired_gain(base, kd)])
    assert loss.verdict == "worse" and loss.high < 0


def test_pure_noise_gives_no_evidence():
    rng = np.random.default_rng(0)
    base = {s: 0.8 + rng.normal(0, 0.02) for s in range(5)}
    kd = {s: 0.8 + rng.normal(0, 0.02) for s in range(5)}
    (gain,) = judge([paired_gain(kd, base)])
    assert gain.verdict == "no evidence" and gain.low < 0 < gain.high


def test_two_seeds_are_too_few_for_a_verdict():
    (gain,) = judge([paired_gain({0: 0.9, 1: 0.91}, {0: 0.5, 1: 0.52})])
    assert gain.verdict == "n too small" and gain.p is None and gain.low is None
    assert gain.mean == pytest.approx(0.395)


def test_many_seeds_use_a_bootstrap_interval():
    rng = np.random.default_rng(1)
    base = {s: 0.8 + rng.normal(0, 0.02) for s in range(12)}
    kd = {s: v + 0.03 + rng.normal(0, 0.01) for s, v in base.items()}
    gain = paired_gain(kd, base)
    assert gain.interval == "bootstrap" and gain.low < gain.mean < gain.high


def test_holm_against_a_hand_computation_and_across_a_study():
    # sorted: 0.01*4 = 0.04, 0.03*3 = 0.09, 0.04*2 = 0.08 -> 0.09 (monotone), 0.2*1 = 0.2
    assert holm([0.01, 0.04, 0.03, 0.2]) == pytest.approx([0.04, 0.09, 0.09, 0.2])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    # a p of 0.03 alone is evidence; beside two others it is not, after correction
    strong = paired_gain(KD, BASE)
    assert strong.p < 0.05
    weak = [paired_gain({s: v + 0.001 * (s % 3) for s, v in BASE.items()}, BASE)] * 2
    judged = judge([strong, *weak])
    assert judged[0].p_holm == pytest.approx(min(1.0, 3 * strong.p))


def test_probability_of_improvement_counts_ties_half():
    assert probability_of_improvement([(0.8, 0.7), (0.7, 0.8), (0.75, 0.75), (0.9, 0.1)]) == 0.625
    assert probability_of_improvement([]) is None
