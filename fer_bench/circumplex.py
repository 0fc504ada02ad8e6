"""Circumplex-order agreement of an embedding's class centroids (metric family for every method).

Rao, Wang & Cottrell (CogSci 2017), "A Deep Siamese Neural Network Learns the Human-Perceived
Similarity Structure of Facial Expressions Without Explicit Categories", compare the angular order of
the six basic emotions in a learned 2-D space with the human circumplex of Dailey et al. (2002):
Happy, Surprise, Fear, Sad, Anger, Disgust (a cycle: rotation and reflection do not matter). An exact
match has chance 1/60 ((6 - 1)! / 2 distinct cycles); their Fear / Surprise overlap gives 1/30.
This module turns that argument into metrics with exact null distributions (shared/notes/methods.md
section 4.4):

1. Centroids: the class means (or medians) of the embedding, six basic emotions only. For D > 2 the
   six centroids are reduced to 2-D by classical MDS of their Euclidean distances (double centring,
   top two eigenvectors; identical to PCA of the centred centroids). The centre is the unweighted
   mean of the six centroids; each class gets its angle around it.
2. Cyclic positions: classes sorted by angle; neighbours closer than ``tie_degrees`` (single
   linkage, around the circle) share a position, i.e. are tied (the paper's Fear / Surprise overlap).
3. ``circular tau`` (primary): for each of the C(6,3) = 20 triples, the orientation (clockwise or
   not) in the model's cycle times the orientation in the reference; tied triples count 0. Reflection
   is allowed, so tau = |sum| / 20 in [0, 1]. One adjacent swap flips 4 triples: tau = 0.6.
4. ``exact``: 1 when the model's cycle equals the reference up to rotation and reflection (with
   ties: when some order of the tied classes does).
5. ``adjacency``: how many of the reference's 6 neighbour pairs are neighbours (or tied) in the
   model's cycle.
6. ``rsa``: a centre-free check that needs no 2-D reduction: Spearman correlation between the 15
   centroid distances (in the full embedding) and the reference hexagon steps min(|i-j|, 6-|i-j|).
7. Exact p-values: every statistic is recomputed for all 720 assignments of the six labels to the
   observed positions (or distance matrix) and p = P(null >= observed). Without ties this gives
   P(exact) = 1/60 and P(tau >= 0.6) = 0.1167; with one tied adjacent pair P(exact) = 1/30.
8. A bootstrap over test images (resampled within class, seeded): mean and 95% interval of tau and
   the fraction of resamples with an exact match.

``circumplex_report(embeddings, labels, classes)`` returns these as a flat ``dict[str, float]`` (empty
when the six basic emotions are not all present); ``circumplex_analysis`` returns everything,
including centroids, angles and the order, for figures (``plot_circumplex``).
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import os
from typing import Sequence

import numpy as np

from fer_bench import labels as L

log = logging.getLogger(__name__)

# Dailey et al. (2002) / Rao et al. (2017): the human circumplex order of the six basic emotions.
REFERENCE_ORDER: tuple[int, ...] = (L.HAPPY, L.SURPRISE, L.FEAR, L.SAD, L.ANGER, L.DISGUST)
N = len(REFERENCE_ORDER)
TRIPLES = np.array(list(itertools.combinations(range(N), 3)), dtype=np.int64)      # (20, 3)
PAIRS = np.array(list(itertools.combinations(range(N), 2)), dtype=np.int64)        # (15, 2)
PERMUTATIONS = np.array(list(itertools.permutations(range(N))), dtype=np.int64)   # (720, 6)
CENTROIDS = ("mean", "median")


# --------------------------------------------------------------------------------------------------
# Order statistics on cyclic positions (index r = the r-th emotion of REFERENCE_ORDER)


def triple_orientations(positions: np.ndarray, k: int | np.ndarray) -> np.ndarray:
    """Orientation of every triple (a < b < c) of classes on a cycle of ``k`` positions.

    positions: (..., 6) integer positions in 0..k-1. Returns (..., 20) in {-1, 0, +1}: +1 when going
    forward from a one meets b before c, -1 otherwise, 0 when two of the three share a position.
    """
    p = np.asarray(positions, dtype=np.int64)
    k = np.asarray(k, dtype=np.int64)[..., None]
    pa, pb, pc = p[..., TRIPLES[:, 0]], p[..., TRIPLES[:, 1]], p[..., TRIPLES[:, 2]]   # (..., 20)
    db, dc = (pb - pa) % k, (pc - pa) % k
    out = np.where(db < dc, 1, -1)
    tied = (pa == pb) | (pb == pc) | (pa == pc)
    return np.where(tied, 0, out)


REFERENCE_ORIENTATION = triple_orientations(np.arange(N), N)                      # (20,)


def circular_tau(positions: np.ndarray, k: int | np.ndarray) -> np.ndarray:
    """Circular Kendall tau against the reference, reflection allowed: |sum_t o(t) o_ref(t)| / 20."""
    return np.abs(triple_orientations(positions, k) @ REFERENCE_ORIENTATION) / len(TRIPLES)


def neighbour_agreement(positions: np.ndarray, k: int | np.ndarray) -> np.ndarray:
    """How many of the reference's 6 neighbour pairs (r, r+1 mod 6) are neighbours or tied in the model."""
    p = np.asarray(positions, dtype=np.int64)
    k = np.asarray(k, dtype=np.int64)
    nxt = np.roll(np.arange(N), -1)
    diff = (p[..., nxt] - p) % k[..., None]                                         # (..., 6)
    return ((diff == 0) | (diff == 1) | (diff == k[..., None] - 1)).sum(-1)


def exact_match(positions: np.ndarray, k: int) -> bool:
    """The model's cycle equals the reference up to rotation and reflection, for some order of tied classes."""
    p = np.asarray(positions, dtype=np.int64)
    groups = [np.flatnonzero(p == g) for g in range(k)]
    for resolution in itertools.product(*(itertools.permutations(g) for g in groups)):
        order = np.concatenate([np.asarray(r, dtype=np.int64) for r in resolution])  # classes around the cycle
        strict = np.empty(N, dtype=np.int64)
        strict[order] = np.arange(N)
        if circular_tau(strict, N) == 1.0:
            return True
    return False


def cyclic_positions(angles: np.ndarray, tie_radians: float = 0.0) -> tuple[np.ndarray, int]:
    """(positions (6,), k): classes sorted by angle; angular gaps <= ``tie_radians`` merge into one position.

    Ties chain (single linkage) and wrap around the circle; exactly equal angles always tie.
    """
    a = np.mod(np.asarray(angles, dtype=np.float64), 2 * math.pi)
    order = np.argsort(a, kind="stable")
    s = a[order]
    gaps = np.diff(np.append(s, s[0] + 2 * math.pi))                                # gap after each sorted item
    breaks = gaps > tie_radians
    positions = np.empty(len(a), dtype=np.int64)
    if not breaks.any():
        positions[:] = 0
        return positions, 1
    start = (int(np.flatnonzero(breaks)[0]) + 1) % len(a)                           # first item after a break
    group = 0
    for step in range(len(a)):
        i = (start + step) % len(a)
        positions[order[i]] = group
        if breaks[i]:
            group += 1
    return positions, group


# --------------------------------------------------------------------------------------------------
# Exact null distributions (all 720 relabellings)


def null_statistics(positions: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """tau, adjacency and exact-match flag for each of the 720 assignments of labels to ``positions``."""
    perm = np.asarray(positions, dtype=np.int64)[PERMUTATIONS]                       # (720, 6)
    ks = np.full(len(perm), k)
    exact = np.array([exact_match(p, k) for p in perm], dtype=np.float64) if k < N else (circular_tau(perm, ks) == 1.0).astype(np.float64)
    return {"tau": circular_tau(perm, ks), "adjacency": neighbour_agreement(perm, ks).astype(np.float64), "exact": exact}


def null_distribution(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct values, probabilities) of a statistic over the equally likely relabellings."""
    vals, counts = np.unique(np.round(np.asarray(values, dtype=np.float64), 12), return_counts=True)
    return vals, counts / counts.sum()


def tau_null_distribution(positions: Sequence[int] | None = None, k: int = N) -> tuple[np.ndarray, np.ndarray]:
    """Exact null of circular tau for a tie structure (default: six distinct positions)."""
    pos = np.arange(N) if positions is None else np.asarray(positions)
    return null_distribution(null_statistics(pos, k)["tau"])


def upper_p(null: np.ndarray, observed: float) -> float:
    """P(null >= observed) with a tolerance for floating-point equality."""
    return float(np.mean(np.asarray(null) >= observed - 1e-9))


def hexagon_steps() -> np.ndarray:
    """(15,) reference steps min(|i-j|, 6-|i-j|) of the class pairs PAIRS, in reference order."""
    d = np.abs(PAIRS[:, 0] - PAIRS[:, 1])
    return np.minimum(d, N - d).astype(np.float64)


def _ranks(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata  # average ranks for ties, as Spearman's rho uses
    return rankdata(x, axis=-1)


def rsa_null(distances: np.ndarray) -> tuple[float, np.ndarray]:
    """Spearman rho between centroid distances (6, 6) and hexagon steps, and its 720-relabelling null."""
    steps = _ranks(hexagon_steps())                                                  # (15,)
    sd = steps - steps.mean()
    d = np.asarray(distances, dtype=np.float64)
    d = np.round(d / (d.max() or 1.0), 9)   # equal distances up to rounding error rank as ties
    perm = PERMUTATIONS
    vec = d[perm[:, PAIRS[:, 0]], perm[:, PAIRS[:, 1]]]                              # (720, 15)
    r = _ranks(vec)
    r = r - r.mean(axis=1, keepdims=True)
    denom = np.sqrt((r ** 2).sum(1) * (sd ** 2).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (r @ sd) / denom
    return float(rho[0]), rho  # PERMUTATIONS[0] is the identity


# --------------------------------------------------------------------------------------------------
# Centroids -> 2-D -> angles


def centroids_2d(centroids: np.ndarray) -> np.ndarray:
    """(6, D) centroids -> (6, 2) centred coordinates: as they are for D <= 2, classical MDS for D > 2."""
    c = np.asarray(centroids, dtype=np.float64)
    c = c - c.mean(axis=0, keepdims=True)                                            # centre: unweighted mean
    if c.shape[1] == 1:
        return np.column_stack([c[:, 0], np.zeros(len(c))])
    if c.shape[1] == 2:
        return c
    gram = c @ c.T                                                                   # (6, 6) = -1/2 J D^2 J
    vals, vecs = np.linalg.eigh(gram)                                                # ascending
    top = np.clip(vals[::-1][:2], 0.0, None)
    return vecs[:, ::-1][:, :2] * np.sqrt(top)                                       # (6, 2)


def _angles(xy: np.ndarray) -> np.ndarray:
    return np.arctan2(xy[:, 1], xy[:, 0])


@dataclasses.dataclass
class CircumplexResult:
    """Everything ``circumplex_analysis`` measured; rows are in REFERENCE_ORDER (Happy, Surprise, ...)."""

    classes: tuple[int, ...]              # REFERENCE_ORDER
    centroids: np.ndarray                 # (6, D) in the embedding
    xy: np.ndarray                        # (6, 2) after MDS, centred
    angles: np.ndarray                    # (6,) radians
    positions: np.ndarray                 # (6,) cyclic positions (ties share one)
    k: int                                # number of distinct positions
    model_order: tuple[int, ...]          # canonical ids counter-clockwise from Happy
    tau: float
    tau_p: float
    exact: float
    exact_p: float
    adjacency: float
    adjacency_p: float
    rsa: float
    rsa_p: float
    min_gap_degrees: float
    boot_tau: np.ndarray                  # (n_boot,)
    boot_exact: np.ndarray                # (n_boot,)

    def as_metrics(self) -> dict[str, float]:
        boot = self.boot_tau
        return {
            "circumplex_tau": self.tau, "circumplex_tau_p": self.tau_p,
            "circumplex_exact": self.exact, "circumplex_exact_p": self.exact_p,
            "circumplex_adjacency": self.adjacency, "circumplex_adjacency_p": self.adjacency_p,
            "circumplex_rsa": self.rsa, "circumplex_rsa_p": self.rsa_p,
            "circumplex_ties": float(N - self.k), "circumplex_min_gap_deg": self.min_gap_degrees,
            "circumplex_tau_boot_mean": float(boot.mean()) if len(boot) else math.nan,
            "circumplex_tau_ci_low": float(np.quantile(boot, 0.025)) if len(boot) else math.nan,
            "circumplex_tau_ci_high": float(np.quantile(boot, 0.975)) if len(boot) else math.nan,
            "circumplex_exact_boot": float(self.boot_exact.mean()) if len(boot) else math.nan,
        }


METRIC_KEYS: tuple[str, ...] = (
    "circumplex_tau", "circumplex_tau_p", "circumplex_exact", "circumplex_exact_p", "circumplex_adjacency",
    "circumplex_adjacency_p", "circumplex_rsa", "circumplex_rsa_p", "circumplex_ties", "circumplex_min_gap_deg",
    "circumplex_tau_boot_mean", "circumplex_tau_ci_low", "circumplex_tau_ci_high", "circumplex_exact_boot")


def _check_inputs(embeddings: np.ndarray, labels: np.ndarray, classes: Sequence[int]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    x = np.asarray(embeddings, dtype=np.float64)
    y = np.asarray(labels)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"circumplex: embeddings must be an (N, D) array; got shape {x.shape}.")
    if y.shape != (len(x),) or (y.size and not np.issubdtype(y.dtype, np.integer)):
        raise ValueError(f"circumplex: labels must be ({len(x)},) integer indices into classes; got {y.dtype} {y.shape}.")
    ids = [L.canonical_id(c) for c in classes]
    if y.size and (y.min() < 0 or y.max() >= len(ids)):
        raise ValueError(f"circumplex: labels must be in 0..{len(ids) - 1} (indices into classes); got {y.min()}..{y.max()}.")
    if not np.isfinite(x).all():
        raise ValueError("circumplex: embeddings contain NaN or inf; check the method's embed() output.")
    return x, y.astype(np.int64), ids


def _class_rows(y: np.ndarray, ids: list[int]) -> list[np.ndarray] | None:
    """Row indices of each reference emotion, or None when one is absent."""
    if not set(REFERENCE_ORDER) <= set(ids):
        return None
    rows = [np.flatnonzero(y == ids.index(c)) for c in REFERENCE_ORDER]
    return None if any(len(r) == 0 for r in rows) else rows


def _centroid(x: np.ndarray, how: str) -> np.ndarray:
    return x.mean(axis=0) if how == "mean" else np.median(x, axis=0)


def _order_stats(xy: np.ndarray, tie_radians: float) -> tuple[np.ndarray, int, float, float]:
    pos, k = cyclic_positions(_angles(xy), tie_radians)
    tau = float(circular_tau(pos, k))
    exact = float(exact_match(pos, k)) if k < N else float(tau == 1.0)
    return pos, k, tau, exact


def circumplex_analysis(embeddings: np.ndarray, labels: Sequence[int], classes: Sequence[int], *,
                        centroid: str = "mean", tie_degrees: float = 0.0, n_boot: int = 1000,
                        seed: int = 0) -> CircumplexResult | None:
    """The full analysis (see the module docstring); None when the six basic emotions are not all present.

    embeddings: (N, D) float; labels: (N,) indices into ``classes`` (canonical ids; classes outside the
    six basic emotions are ignored); centroid: "mean" or "median"; tie_degrees: angular gap at or
    below which neighbouring classes are tied (0: only equal angles); n_boot: bootstrap resamples of
    the images within each class (0: none); seed: the bootstrap's generator.
    Returns None too when the six centroids coincide (no direction is defined, e.g. a constant embedding).
    """
    if centroid not in CENTROIDS:
        raise ValueError(f"circumplex: centroid must be one of {', '.join(CENTROIDS)}; got {centroid!r}.")
    if not (isinstance(tie_degrees, (int, float)) and 0.0 <= tie_degrees < 180.0):
        raise ValueError(f"circumplex: tie_degrees must be a number in [0, 180); got {tie_degrees!r}.")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise ValueError(f"circumplex: n_boot must be an int >= 0; got {n_boot!r}.")
    x, y, ids = _check_inputs(embeddings, np.asarray(labels), classes)
    rows = _class_rows(y, ids)
    if rows is None:
        return None
    cents = np.stack([_centroid(x[r], centroid) for r in rows])                      # (6, D)
    xy = centroids_2d(cents)                                                         # (6, 2)
    scale = float(np.abs(cents).max()) or 1.0
    if float(np.linalg.norm(xy, axis=1).max()) <= 1e-9 * scale:
        log.info("circumplex: the six class centroids coincide; the order is undefined.")
        return None
    tie = math.radians(tie_degrees)
    pos, k, tau, exact = _order_stats(xy, tie)
    null = null_statistics(pos, k)
    adjacency = float(neighbour_agreement(pos, k))
    dist = np.linalg.norm(cents[:, None, :] - cents[None, :, :], axis=-1)           # (6, 6)
    rsa, rsa_null_values = rsa_null(dist)
    angles = _angles(xy)
    sorted_angles = np.sort(np.mod(angles, 2 * math.pi))
    gaps = np.diff(np.append(sorted_angles, sorted_angles[0] + 2 * math.pi))
    start = int(np.flatnonzero(np.asarray(REFERENCE_ORDER) == L.HAPPY)[0])
    ccw = np.argsort(np.mod(angles - angles[start], 2 * math.pi), kind="stable")
    boot_tau, boot_exact = _bootstrap(x, rows, centroid, tie, n_boot, seed)
    return CircumplexResult(
        classes=REFERENCE_ORDER, centroids=cents, xy=xy, angles=angles, positions=pos, k=k,
        model_order=tuple(REFERENCE_ORDER[i] for i in ccw), tau=tau, tau_p=upper_p(null["tau"], tau),
        exact=exact, exact_p=float(null["exact"].mean()), adjacency=adjacency,
        adjacency_p=upper_p(null["adjacency"], adjacency), rsa=rsa,
        rsa_p=upper_p(rsa_null_values, rsa) if np.isfinite(rsa) else math.nan,
        min_gap_degrees=float(np.degrees(gaps.min())), boot_tau=boot_tau, boot_exact=boot_exact)


def _bootstrap(x: np.ndarray, rows: list[np.ndarray], centroid: str, tie: float, n_boot: int,
               seed: int) -> tuple[np.ndarray, np.ndarray]:
    """tau and exact flag of ``n_boot`` resamples of the images within each class."""
    if n_boot == 0:
        return np.empty(0), np.empty(0)
    rng = np.random.default_rng([seed, 0xC1C])
    cents = np.empty((n_boot, N, x.shape[1]))                                        # (B, 6, D)
    for c, r in enumerate(rows):
        xc = x[r]                                                                    # (n_c, D)
        if centroid == "mean":   # multinomial counts: B resampled means without a (B, n_c, D) array
            counts = rng.multinomial(len(r), np.full(len(r), 1.0 / len(r)), size=n_boot)  # (B, n_c)
            cents[:, c] = counts @ xc / len(r)
        else:
            for b in range(n_boot):
                cents[b, c] = np.median(xc[rng.integers(0, len(r), len(r))], axis=0)
    taus, exacts = np.empty(n_boot), np.empty(n_boot)
    for b in range(n_boot):
        xy = centroids_2d(cents[b])
        _, _, taus[b], exacts[b] = _order_stats(xy, tie)
    return taus, exacts


def circumplex_report(embeddings: np.ndarray, labels: Sequence[int], classes: Sequence[int], *,
                      centroid: str = "mean", tie_degrees: float = 0.0, n_boot: int = 1000,
                      seed: int = 0) -> dict[str, float]:
    """Circumplex metrics of a test embedding as ``dict[str, float]`` (keys ``METRIC_KEYS``).

    Empty when the six basic emotions are not all present in ``classes`` and ``labels``; every value
    NaN when the six centroids coincide (a constant embedding has no order). See
    ``circumplex_analysis`` for the arguments.
    """
    x, y, ids = _check_inputs(embeddings, np.asarray(labels), classes)
    if _class_rows(y, ids) is None:
        return {}
    result = circumplex_analysis(x, y, classes, centroid=centroid, tie_degrees=tie_degrees, n_boot=n_boot, seed=seed)
    if result is None:
        return {key: math.nan for key in METRIC_KEYS}
    return result.as_metrics()


# --------------------------------------------------------------------------------------------------
# Figure


def plot_circumplex(points_2d: np.ndarray, labels: np.ndarray, classes: Sequence[int], path: str | os.PathLike,
                    title: str = "", max_points: int = 3000, seed: int = 0, ax=None) -> None:
    """2-D points coloured by class with the six basic centroids, their cyclic order drawn as a polygon
    and the reference order in the legend. Writes ``path`` (PNG) unless an ``ax`` is given to draw into."""
    from matplotlib.lines import Line2D

    from fer_bench import plots as P

    xy = np.asarray(points_2d, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"plot_circumplex: points_2d must be (N, 2); got shape {xy.shape}. Reduce to 2-D first.")
    y = np.asarray(labels, dtype=np.int64)
    names = L.names(classes)
    colours = np.array(P._palette_for(names))
    keep = P.subsample_indices(len(xy), max_points, seed)
    fig = None
    if ax is None:
        fig = P._new_figure(6.8, 5.2)
        ax = fig.add_subplot()
    ax.scatter(xy[keep, 0], xy[keep, 1], c=colours[y[keep]], s=float(np.clip(3000.0 / max(len(keep), 1), 3, 25)),
               alpha=0.55, linewidths=0)
    ids = [L.canonical_id(c) for c in classes]
    rows = _class_rows(y, ids)
    if rows is not None:
        cents = np.stack([xy[r].mean(0) for r in rows])                              # (6, 2)
        centre = cents.mean(0)
        ang = np.arctan2(cents[:, 1] - centre[1], cents[:, 0] - centre[0])
        cyc = np.argsort(ang)
        loop = np.append(cyc, cyc[0])
        ax.plot(cents[loop, 0], cents[loop, 1], "-", color="black", lw=1.2, zorder=3)
        pos, k = cyclic_positions(ang)
        tau = float(circular_tau(pos, k))
        for i, c in enumerate(REFERENCE_ORDER):
            ax.scatter([cents[i, 0]], [cents[i, 1]], s=160, marker="X", color=colours[ids.index(c)],
                       edgecolors="black", linewidths=1.0, zorder=4)
            ax.annotate(L.names([c], "short")[0], cents[i], xytext=(6, 6), textcoords="offset points",
                        fontsize=9, weight="bold", zorder=5)
        ax.plot([centre[0]], [centre[1]], "+", color="black", ms=10)
        order_text = " > ".join(L.names([REFERENCE_ORDER[i] for i in cyc], "short"))
        ax.text(0.01, 0.01, f"centroid order (ccw): {order_text}\ncircular tau vs human circumplex = {tau:.2f}",
                transform=ax.transAxes, fontsize=7, va="bottom")
    handles = [Line2D([], [], linestyle="", marker="o", color=colours[i], label=names[i]) for i in range(len(names))]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    ax.set_title(title, fontsize=9)
    if fig is not None:
        P._save(fig, P._png_path(path))


def plot_circumplex_grid(panels: Sequence[tuple[str, np.ndarray, np.ndarray]], classes: Sequence[int],
                         path: str | os.PathLike, seed: int = 0) -> None:
    """Several ``plot_circumplex`` panels side by side (training snapshots): (title, points (N, 2), labels)."""
    from fer_bench import plots as P

    if not panels:
        raise ValueError("plot_circumplex_grid: no panels to draw; pass at least one (title, points, labels).")
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = P._new_figure(5.6 * cols, 4.4 * rows)
    for i, (title, xy, y) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        plot_circumplex(xy, y, classes, path, title=title, seed=seed, ax=ax, max_points=1500)
    P._save(fig, P._png_path(path))
