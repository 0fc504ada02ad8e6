"""Whether two methods' numbers differ by more than their seeds do: paired tests for the paper tables (issue #21).

Two methods run on the same seeds and the same test set are paired twice over:

- **over seeds** (``paired_over_seeds``): the per-seed differences of a metric, their mean with a Student-t
  confidence interval and the paired t-test's p-value (``scipy.stats.ttest_rel``). With n seeds the test has
  n - 1 degrees of freedom; below ``MIN_SEEDS`` no difference is ever marked significant, whatever the p-value.
- **over test images** (``mcnemar``): on pooled predictions (every seed's test predictions, image by image),
  the exact McNemar test: among the images exactly one of the two methods gets right, is the split even? That is
  a two-sided binomial test of the discordant counts (``scipy.stats.binomtest``). ``paired_bootstrap`` resamples
  test images to give a confidence interval of the difference of any metric of (labels, predictions).

These test the difference between two *trained models* (or sets of them) on one test set; they say nothing
about another dataset. Tables state the test in their notes.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping

import numpy as np
from scipy import stats

MIN_SEEDS = 3        # fewer paired seeds than this: never marked significant
ALPHA = 0.05


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """``mean`` of ours - reference over ``n`` paired seeds, its ``ci`` (two-sided, ``confidence``) and ``p``."""

    mean: float
    ci: tuple[float, float]
    p: float
    n: int
    confidence: float = 0.95

    @property
    def significant(self) -> bool:
        """p < ALPHA with at least MIN_SEEDS paired seeds (the CI then excludes 0)."""
        return self.n >= MIN_SEEDS and self.p < ALPHA

    def mark(self) -> str:
        """'*' when significant, '' otherwise (always '' below MIN_SEEDS seeds)."""
        return "*" if self.significant else ""


def paired_over_seeds(ours: Mapping[int, float], reference: Mapping[int, float],
                      confidence: float = 0.95) -> PairedDifference | None:
    """The paired difference over the seeds both have (None when they share none). One seed: the difference
    with no interval (NaN) and p = NaN; identical differences on every seed: a zero-width interval, p = 0
    unless the difference is 0 (p = 1)."""
    seeds = sorted(set(ours) & set(reference))
    if not seeds:
        return None
    a = np.array([ours[s] for s in seeds], dtype=np.float64)
    b = np.array([reference[s] for s in seeds], dtype=np.float64)
    d = a - b
    n, mean = len(d), float(d.mean())
    if n < 2:
        return PairedDifference(mean, (math.nan, math.nan), math.nan, n, confidence)
    if np.all(d == d[0]):                              # no spread: t is undefined, the difference is exact
        return PairedDifference(mean, (mean, mean), 1.0 if mean == 0 else 0.0, n, confidence)
    result = stats.ttest_rel(a, b)
    ci = result.confidence_interval(confidence_level=confidence)
    return PairedDifference(mean, (float(ci.low), float(ci.high)), float(result.pvalue), n, confidence)


@dataclasses.dataclass(frozen=True)
class McNemar:
    """Discordant counts (``only_ours``: images only ours gets right; ``only_reference``) and the exact p."""

    only_ours: int
    only_reference: int
    p: float

    @property
    def significant(self) -> bool:
        return self.p < ALPHA


def mcnemar(ours_correct: np.ndarray, reference_correct: np.ndarray) -> McNemar:
    """Exact McNemar test on paired per-image correctness (bool arrays of the same test images, pooled over
    seeds if wanted): a two-sided binomial test of the discordant pairs at 1/2."""
    a = np.asarray(ours_correct, dtype=bool)
    b = np.asarray(reference_correct, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"mcnemar needs paired predictions of the same images; got {a.shape} and {b.shape}.")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    p = 1.0 if only_a + only_b == 0 else float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)
    return McNemar(only_a, only_b, p)


def paired_bootstrap(labels: np.ndarray, ours: np.ndarray, reference: np.ndarray,
                     metric: Callable[[np.ndarray, np.ndarray], float], n_boot: int = 2000, seed: int = 0,
                     confidence: float = 0.95) -> tuple[float, tuple[float, float]]:
    """The difference metric(ours) - metric(reference) on the test images and its percentile interval over
    ``n_boot`` resamples of the images (the same resample for both methods: the pairing is kept)."""
    labels, ours, reference = (np.asarray(x) for x in (labels, ours, reference))
    if not len(labels) == len(ours) == len(reference):
        raise ValueError("paired_bootstrap needs labels and both predictions for the same images.")
    diff = float(metric(labels, ours) - metric(labels, reference))
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    for i in range(n_boot):
        idx = rng.integers(0, len(labels), len(labels))
        boots[i] = metric(labels[idx], ours[idx]) - metric(labels[idx], reference[idx])
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(boots, [tail, 100 - tail])
    return diff, (float(low), float(high))
