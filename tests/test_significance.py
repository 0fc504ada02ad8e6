"""Paired significance (issue #21): oracles computed by hand from the textbook formulas."""
import math

import numpy as np
import pytest
from scipy import stats

from fer_bench import significance as S


def test_paired_over_seeds_matches_the_t_formula():
    ours = {0: 0.81, 1: 0.79, 2: 0.84, 3: 0.80}
    ref = {0: 0.78, 1: 0.79, 2: 0.80, 3: 0.76, 9: 0.5}                 # seed 9 has no pair: left out
    d = np.array([0.03, 0.0, 0.04, 0.04])
    n, mean, se = 4, d.mean(), d.std(ddof=1) / 2
    t = mean / se
    q = stats.t.ppf(0.975, n - 1)                                     # the t quantile, the only table look-up
    result = S.paired_over_seeds(ours, ref)
    assert result.n == 4 and result.mean == pytest.approx(mean)
    assert result.ci == pytest.approx((mean - q * se, mean + q * se))
    assert result.p == pytest.approx(2 * stats.t.sf(abs(t), n - 1))
    assert result.significant == (result.p < 0.05) and result.mark() == ("*" if result.p < 0.05 else "")


def test_never_significant_below_three_seeds():
    result = S.paired_over_seeds({0: 0.9, 1: 0.91}, {0: 0.1, 1: 0.12})
    assert result.n == 2 and result.p < 0.05 and not result.significant and result.mark() == ""
    one = S.paired_over_seeds({0: 0.9}, {0: 0.1})
    assert one.mean == pytest.approx(0.8) and math.isnan(one.p) and one.mark() == ""
    assert S.paired_over_seeds({0: 0.9}, {1: 0.1}) is None


def test_a_constant_difference_is_exact():
    same = S.paired_over_seeds({0: 0.5, 1: 0.6, 2: 0.7}, {0: 0.5, 1: 0.6, 2: 0.7})
    assert same.mean == 0 and same.p == 1.0 and not same.significant


def test_mcnemar_is_the_exact_binomial_of_the_discordant_pairs():
    ours = np.array([1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 0], dtype=bool)
    ref = np.array([0, 0, 0, 0, 0, 1, 1, 1, 0, 1, 1, 0], dtype=bool)
    result = S.mcnemar(ours, ref)
    b, c = 5, 1                                                        # only ours right / only the reference
    tail = sum(math.comb(b + c, k) for k in range(min(b, c) + 1)) / 2 ** (b + c)
    assert (result.only_ours, result.only_reference) == (b, c)
    assert result.p == pytest.approx(min(1.0, 2 * tail))
    assert S.mcnemar(ours, ours).p == 1.0
    with pytest.raises(ValueError, match="same images"):
        S.mcnemar(ours, ref[:5])


def test_paired_bootstrap_interval_covers_the_difference_and_keeps_the_pairing():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 500)
    ref = np.where(rng.random(500) < 0.6, labels, (labels + 1) % 3)
    ours = np.where(rng.random(500) < 0.5, labels, ref)                # ours fixes half of the reference's errors
    acc = lambda y, p: float((y == p).mean())                          # noqa: E731
    diff, (low, high) = S.paired_bootstrap(labels, ours, ref, acc, n_boot=500)
    assert diff == pytest.approx(acc(labels, ours) - acc(labels, ref))
    assert 0 < low < diff < high                                        # ours never worse on an image: CI above 0
    assert S.paired_bootstrap(labels, ref, ref, acc, n_boot=50)[1] == (0.0, 0.0)
