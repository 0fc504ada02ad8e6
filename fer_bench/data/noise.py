"""Synthetic label noise for the noisy-label protocols (SCE-ALD and the label-noise tables).

``noisy_labels`` is a pure function of (labels, rate, kind, seed[, confusion]): applied to the train
split only, and the hash of its result is recorded with every result.

- ``symmetric``: each label is, with probability ``rate``, replaced by a different class drawn
  uniformly (the usual "symmetric" noise of the noisy-FER literature, e.g. SCN and RUL; SCE-ALD
  section IV-B: "randomly revising the given one-hot label to another category with a certain
  probability");
- ``pairflip``: each label is, with probability ``rate``, replaced by the next class (c -> c+1 mod C);
- ``asymmetric``: each label ``y`` is, with probability ``rate``, replaced by a different class ``j``
  drawn with probability proportional to ``confusion[y, j]`` (j != y): a given confusion matrix of
  which classes annotators mix up. A row with no off-diagonal mass keeps its labels.

``exact=True`` flips exactly ``round(rate * N)`` labels (a seeded random subset) instead of each
label independently with probability ``rate``; the default (False) is the paper's rule.
"""
from __future__ import annotations

import hashlib

import numpy as np

from fer_bench import labels as L

NOISE_KINDS = ("symmetric", "pairflip", "asymmetric")


def noisy_labels(labels: np.ndarray, num_classes: int, rate: float, kind: str = "symmetric",
                 seed: int = 0, confusion: np.ndarray | None = None, exact: bool = False) -> np.ndarray:
    """Labels with a fraction ``rate`` (in expectation, or exactly with ``exact``) flipped to another class."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"label noise rate must be in [0, 1). Got {rate} instead.")
    if kind not in NOISE_KINDS:
        raise ValueError(f"label noise kind {kind!r} is not allowed; use one of {', '.join(NOISE_KINDS)}.")
    labels = np.asarray(labels, dtype=np.int64)
    offdiag = _check_confusion(confusion, num_classes) if kind == "asymmetric" else None
    if rate == 0.0:
        return labels.copy()
    rng = np.random.default_rng([seed, 0x6E6F6973])
    if exact:
        flip = np.zeros(len(labels), dtype=bool)
        flip[rng.permutation(len(labels))[:int(round(rate * len(labels)))]] = True
    else:
        flip = rng.random(len(labels)) < rate
    if kind == "symmetric":
        shift = rng.integers(1, num_classes, size=len(labels))  # never 0: always a different class
        return np.where(flip, (labels + shift) % num_classes, labels)
    if kind == "pairflip":
        return np.where(flip, (labels + 1) % num_classes, labels)
    # asymmetric: inverse-CDF draw from the off-diagonal row of the true class
    rows = offdiag[labels]                                   # (N, C), zero on the true class
    mass = rows.sum(axis=1)
    cdf = np.cumsum(rows, axis=1) / np.where(mass > 0, mass, 1.0)[:, None]
    u = rng.random(len(labels))
    target = np.minimum((u[:, None] >= cdf).sum(axis=1), num_classes - 1)
    return np.where(flip & (mass > 0), target, labels)


def _check_confusion(confusion: np.ndarray | None, num_classes: int) -> np.ndarray:
    """The confusion matrix with its diagonal zeroed (only which wrong class is drawn matters)."""
    if confusion is None:
        raise ValueError("asymmetric label noise needs a confusion matrix (C x C, row y = how often class y is "
                         "mistaken for each other class); pass confusion=...")
    m = np.array(confusion, dtype=np.float64)
    if m.shape != (num_classes, num_classes) or not np.all(np.isfinite(m)) or (m < 0).any():
        raise ValueError(f"the confusion matrix must be a non-negative finite {num_classes} x {num_classes} array. "
                         f"Got shape {m.shape} instead.")
    np.fill_diagonal(m, 0.0)
    return m


def transition_matrix(rate: float, num_classes: int, kind: str = "symmetric",
                      confusion: np.ndarray | None = None) -> np.ndarray:
    """The expected noise transition matrix T[y, j] = P(noisy = j | clean = y) of ``noisy_labels``."""
    if kind == "symmetric":
        t = np.full((num_classes, num_classes), rate / (num_classes - 1))
    elif kind == "pairflip":
        t = np.zeros((num_classes, num_classes))
        t[np.arange(num_classes), (np.arange(num_classes) + 1) % num_classes] = rate
    elif kind == "asymmetric":
        off = _check_confusion(confusion, num_classes)
        mass = off.sum(axis=1, keepdims=True)
        t = np.where(mass > 0, rate * off / np.where(mass > 0, mass, 1.0), 0.0)
    else:
        raise ValueError(f"label noise kind {kind!r} is not allowed; use one of {', '.join(NOISE_KINDS)}.")
    np.fill_diagonal(t, 0.0)
    np.fill_diagonal(t, 1.0 - t.sum(axis=1))
    return t


def labels_hash(labels: np.ndarray) -> str:
    """Short sha256 of a label vector (recorded with results trained on noisy labels)."""
    return hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int64).tobytes()).hexdigest()[:16]


def read_noise_matrix(path: str) -> dict[str, dict[str, float]]:
    """An asymmetric-noise matrix from a CSV file: a header row and a first column of emotion names
    (true class = row, noisy class = column), non-negative weights; returned as {true: {noisy: w}}
    with canonical names, so it applies to any dataset's class order (``confusion_for``)."""
    import pandas as pd
    try:
        frame = pd.read_csv(path, index_col=0)
    except (OSError, ValueError) as exc:
        raise ValueError(f"--noise-matrix {path}: cannot read it as a CSV ({exc}); write a header row and a first "
                         f"column of emotion names, e.g. ',happy,sad' then 'happy,0,1'.") from None
    out: dict[str, dict[str, float]] = {}
    for true, row in frame.iterrows():
        t = L.NAMES[L.canonical_id(str(true))]
        out[t] = {L.NAMES[L.canonical_id(str(noisy))]: float(w) for noisy, w in row.items() if float(w) != 0.0}
        if any(w < 0 for w in out[t].values()):
            raise ValueError(f"--noise-matrix {path}: row {true!r} has a negative weight; weights must be >= 0.")
    if not any(w > 0 for t, row in out.items() for noisy, w in row.items() if noisy != t):
        raise ValueError(f"--noise-matrix {path} flips nothing: every non-zero weight is on the diagonal (true = "
                         f"noisy); put weight on the wrong classes a true class should turn into.")
    return out


def confusion_for(matrix: dict[str, dict[str, float]], classes: tuple[int, ...]) -> np.ndarray:
    """The (C, C) confusion weights of ``read_noise_matrix`` in a dataset's class order (absent classes: 0)."""
    position = {c: i for i, c in enumerate(classes)}
    out = np.zeros((len(classes), len(classes)))
    for true, row in matrix.items():
        for noisy, weight in row.items():
            i, j = position.get(L.canonical_id(true)), position.get(L.canonical_id(noisy))
            if i is not None and j is not None:
                out[i, j] = weight
    return out
