"""Synthetic label noise for the noisy-label protocols (SCE-ALD and the label-noise tables).

``noisy_labels`` is a pure function of (labels, rate, kind, seed): applied to the train split only,
and the hash of its result is recorded with every result.

- ``symmetric``: each label is, with probability ``rate``, replaced by a different class drawn
  uniformly (the usual "symmetric" noise of the noisy-FER literature, e.g. SCN and RUL);
- ``pairflip``: each label is, with probability ``rate``, replaced by the next class (c -> c+1 mod C).
"""
from __future__ import annotations

import hashlib

import numpy as np

NOISE_KINDS = ("symmetric", "pairflip")


def noisy_labels(labels: np.ndarray, num_classes: int, rate: float, kind: str = "symmetric",
                 seed: int = 0) -> np.ndarray:
    """Labels with a fraction ``rate`` (in expectation) flipped to another class."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"label noise rate must be in [0, 1). Got {rate} instead.")
    if kind not in NOISE_KINDS:
        raise ValueError(f"label noise kind {kind!r} is not allowed; use one of {', '.join(NOISE_KINDS)}.")
    labels = np.asarray(labels, dtype=np.int64)
    if rate == 0.0:
        return labels.copy()
    rng = np.random.default_rng([seed, 0x6E6F6973])
    flip = rng.random(len(labels)) < rate
    if kind == "symmetric":
        shift = rng.integers(1, num_classes, size=len(labels))  # never 0: always a different class
    else:
        shift = np.ones(len(labels), dtype=np.int64)
    return np.where(flip, (labels + shift) % num_classes, labels)


def labels_hash(labels: np.ndarray) -> str:
    """Short sha256 of a label vector (recorded with results trained on noisy labels)."""
    return hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int64).tobytes()).hexdigest()[:16]
