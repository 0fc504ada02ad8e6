"""Metrics of fer-bench (DESIGN.md section 5): pure functions on numpy arrays.

What comes from where:

* Classification: accuracy, mean class accuracy, macro precision / recall / F1, per-class recall,
  confusion matrix. ``sgm_f1`` is the F1 of Marrero Fernandez, Ren and Tsang, "Deep Metric
  Structured Learning for Facial Expression Recognition" (the SGMLoss paper), section 4.1 and the
  authors' ``eval_fer.py``: 2PR / (P + R) built from the *macro* P and R, which is not the mean of
  per-class F1 that ``macro_precision_recall_f1`` (and scikit-learn's ``average="macro"``) return.
* Retrieval, also from the SGMLoss paper (section 4.1, Fig. 3): Recall@K (a query scores 1 if any
  of its K nearest neighbours in the test set shares its label) and Acc@K (the fraction of the K
  nearest that share it), the test set queried against itself with the query excluded; kNN
  classification with k = 11 training neighbours (its Table 2); NMI of k-means clusters, and AMI
  (scikit-learn's ``adjusted_mutual_info_score``) of the same clusters.
* MAP@R and R-precision from Musgrave, Belongie and Lim, "A Metric Learning Reality Check" (ECCV
  2020), computed as pytorch-metric-learning's ``AccuracyCalculator`` computes
  ``mean_average_precision_at_r`` and ``r_precision``.
* KL / JS divergence to reference label distributions are in :mod:`fer_bench.divergence`.
* Cost helpers (parameter count, peak memory, inference time) are in :mod:`fer_bench.cost`.

Conventions. Labels are integer class indices ``0..C-1``. Where a per-class ratio has a zero
denominator (a class absent from ``y_true`` has no recall, a class never predicted has no
precision) the ratio is 0, as scikit-learn's ``zero_division=0``; macro averages run over all
``num_classes`` classes of the label space, present or not. ``mean_class_accuracy`` is the
exception: it averages recall over the classes present in ``y_true`` only (scikit-learn's
``balanced_accuracy_score``). k-means for NMI / AMI uses k = the number of classes present.

Retrieval metrics (Recall@K, Acc@K, MAP@R, R-precision) leave out lone queries, those whose class
has no other member in the set, as ``AccuracyCalculator`` does; they are NaN if every query is lone.

Nearest neighbours (``knn_indices``) are exact: ordered by the float64 squared distance, ties broken by
the smaller gallery index, whatever the chunk size, device or thread count (the search is
:mod:`fer_bench.neighbours`).
"""
from __future__ import annotations

import logging
import math
import warnings
from typing import Sequence

import numpy as np
import torch

from fer_bench.neighbours import iter_knn

logger = logging.getLogger(__name__)

DEFAULT_KS: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
TIE_BREAKS: tuple[str, ...] = ("nearest", "lowest_label")
_MAX_EMBEDDING = 1e150  # larger values could overflow a float64 squared distance


# --------------------------------------------------------------------------------------------
# input checks (one voice: "The 'x' parameter of f must be ... Got ... instead.")
# --------------------------------------------------------------------------------------------

def _labels(y: object, name: str, func: str, num_classes: int | None = None) -> np.ndarray:
    """Return ``y`` as a 1-D int64 array of class indices, checked against ``num_classes``."""
    arr = np.asarray(y)
    if arr.ndim == 1 and arr.size == 0:
        arr = arr.astype(np.int64)  # [] is float64 to numpy
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise ValueError(
            f"The '{name}' parameter of {func} must be a 1-D array of integer class indices. "
            f"Got dtype {arr.dtype} and shape {arr.shape} instead.")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and arr.min() < 0:
        raise ValueError(f"The '{name}' parameter of {func} must hold class indices >= 0. "
                         f"Got {arr.min()} instead.")
    if num_classes is not None and arr.size and arr.max() >= num_classes:
        raise ValueError(f"The '{name}' parameter of {func} must hold class indices in "
                         f"[0, {num_classes}). Got {arr.max()} instead; pass the right num_classes.")
    return arr


def _embeddings(x: object, name: str, func: str) -> np.ndarray:
    """Return ``x`` as a 2-D array of finite values: float32 (and float16) as float32, anything
    else as float64, so that no value is rounded (no copy when already so)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = (x.float() if x.dtype in (torch.float16, torch.bfloat16) else x).numpy()
    arr = np.asarray(x)
    arr = arr.astype(np.float32 if arr.dtype in (np.float32, np.float16) else np.float64, copy=False)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"The '{name}' parameter of {func} must be a non-empty 2-D array (N, D). "
                         f"Got shape {arr.shape} instead.")
    # One pass each for the extremes, no temporaries: NaN propagates to both, so ``not <`` catches it.
    if not max(float(arr.max()), -float(arr.min())) < _MAX_EMBEDDING:
        raise ValueError(f"The '{name}' parameter of {func} must hold finite numbers of magnitude "
                         f"below {_MAX_EMBEDDING:g} (so that squared distances are finite in "
                         f"float64). Got NaN, inf or a larger number instead.")
    return arr if arr.flags.writeable else arr.copy()  # torch.from_numpy warns on read-only arrays


def _same_length(func: str, **arrays: np.ndarray) -> None:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"The parameters of {func} must have the same number of rows. "
                         f"Got {lengths} instead.")


def _positive_int(value: object, name: str, func: str, upper: int | None = None) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1 \
            or (upper is not None and value > upper):
        allowed = f"[1, {upper}]" if upper is not None else "[1, inf)"
        raise ValueError(f"The '{name}' parameter of {func} must be an int in {allowed}. "
                         f"Got {value!r} instead.")
    return int(value)


def _num_classes(num_classes: int | None, *label_arrays: np.ndarray, func: str) -> int:
    if num_classes is None:
        return int(max(int(a.max()) for a in label_arrays if a.size) + 1)
    return _positive_int(num_classes, "num_classes", func)


# --------------------------------------------------------------------------------------------
# classification
# --------------------------------------------------------------------------------------------
# These are a few lines of numpy over one confusion matrix. scikit-learn computes the same numbers
# (the tests check it) but validates every call heavily; one matrix also keeps P, R, F1, per-class
# recall and sgm_f1 consistent with each other by construction.

def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """(C, C) int64 counts; row = true class, column = predicted class."""
    c = _positive_int(num_classes, "num_classes", "confusion_matrix")
    t = _labels(y_true, "y_true", "confusion_matrix", c)
    p = _labels(y_pred, "y_pred", "confusion_matrix", c)
    _same_length("confusion_matrix", y_true=t, y_pred=p)
    return np.bincount(t * c + p, minlength=c * c).reshape(c, c)


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den == 0 (the zero-division rule of this module)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den != 0)


def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Fraction of items with ``y_pred == y_true``."""
    t = _labels(y_true, "y_true", "accuracy")
    p = _labels(y_pred, "y_pred", "accuracy")
    _same_length("accuracy", y_true=t, y_pred=p)
    if t.size == 0:
        raise ValueError("The 'y_true' parameter of accuracy must not be empty. Got 0 items instead.")
    return float(np.mean(t == p))


def per_class_recall(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """(C,) recall of each class; 0 for a class absent from ``y_true``."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    return _safe_divide(np.diag(cm), cm.sum(axis=1))


def mean_class_accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Mean over the classes present in ``y_true`` of their recall (balanced accuracy)."""
    t = _labels(y_true, "y_true", "mean_class_accuracy")
    p = _labels(y_pred, "y_pred", "mean_class_accuracy")
    if t.size == 0:
        raise ValueError("The 'y_true' parameter of mean_class_accuracy must not be empty. "
                         "Got 0 items instead.")
    c = int(max(t.max(), p.max() if p.size else 0)) + 1
    cm = confusion_matrix(t, p, c)
    present = cm.sum(axis=1) > 0
    return float(np.mean(np.diag(cm)[present] / cm.sum(axis=1)[present]))


def macro_precision_recall_f1(y_true: Sequence[int], y_pred: Sequence[int],
                              num_classes: int) -> tuple[float, float, float]:
    """Macro (P, R, F1): means over all ``num_classes`` classes of the label space, also those
    absent from ``y_true`` (recall 0) or never predicted (precision 0); F1 is the mean of per-class
    F1, not 2PR / (P + R) (that is ``sgm_f1``).

    Equals scikit-learn's ``precision_recall_fscore_support(average="macro",
    labels=range(num_classes), zero_division=0)``.
    """
    cm = confusion_matrix(y_true, y_pred, num_classes)
    tp = np.diag(cm).astype(np.float64)
    precision = _safe_divide(tp, cm.sum(axis=0))  # (C,) column sums = predicted counts
    recall = _safe_divide(tp, cm.sum(axis=1))  # (C,) row sums = true counts
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    return float(precision.mean()), float(recall.mean()), float(f1.mean())


def sgm_f1(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> float:
    """SGMLoss paper's F1: 2PR / (P + R) from the macro P and R (0 when P + R = 0).

    P and R are those of ``macro_precision_recall_f1``: means over all ``num_classes`` classes of
    the label space, a class absent from ``y_true`` and never predicted counting 0 in both.
    """
    p, r, _ = macro_precision_recall_f1(y_true, y_pred, num_classes)
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def classification_report(y_true: Sequence[int], y_pred: Sequence[int],
                          num_classes: int) -> dict[str, float]:
    """Flat name -> value dict of the classification metrics, for the result store.

    ``macro_*`` and ``sgm_f1`` average over all ``num_classes`` classes of the label space (a class
    absent from ``y_true`` has recall 0, a class never predicted precision 0); ``mean_class_accuracy``
    over the classes present in ``y_true``; ``recall_class{c}`` for every c < num_classes.
    """
    p, r, f1 = macro_precision_recall_f1(y_true, y_pred, num_classes)
    report = {
        "accuracy": accuracy(y_true, y_pred),
        "mean_class_accuracy": mean_class_accuracy(y_true, y_pred),
        "macro_precision": p,
        "macro_recall": r,
        "macro_f1": f1,
        "sgm_f1": 0.0 if p + r == 0 else 2 * p * r / (p + r),
    }
    for c, value in enumerate(per_class_recall(y_true, y_pred, num_classes)):
        report[f"recall_class{c}"] = float(value)
    return report


# --------------------------------------------------------------------------------------------
# nearest neighbours
# --------------------------------------------------------------------------------------------
# The search itself is fer_bench.neighbours; knn_indices checks its input and collects it.


def knn_indices(queries: np.ndarray, gallery: np.ndarray, k: int, exclude_self: bool = False,
                chunk: int = 4096, device: str | torch.device = "cpu") -> np.ndarray:
    """(Nq, k) int64 indices of the k nearest gallery rows (Euclidean), nearest first.

    Exact: the order is that of the float64 squared distances ``sum_j (q_j - g_j)^2`` (float32
    inputs are exact in float64), ties going to the smaller gallery index. It is the first k
    columns of a stable argsort of the full float64 distance matrix, whatever the chunk size,
    device or thread count. With ``exclude_self`` row i of ``queries`` is taken to be row i of
    ``gallery`` and is never its own neighbour (pass the same array twice). Memory is
    O(N_gallery x chunk): the scores of at most ``chunk`` queries are held at a time. On the CPU
    the work runs on ``torch.get_num_threads()`` threads. Time is that of the float32 product, a
    vectorised pass over its scores and O(k (D + log N_gallery)) per row, and O(N_gallery D) more
    for a row whose k-th place is tied (or closer than float32 can tell) with items beyond the
    k + margin screened candidates (see ``_iter_knn``).
    """
    func = "knn_indices"
    q = _embeddings(queries, "queries", func)
    g = q if gallery is queries else _embeddings(gallery, "gallery", func)
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"The 'queries' and 'gallery' parameters of {func} must have the same "
                         f"dimension. Got {q.shape[1]} and {g.shape[1]} instead.")
    if exclude_self and q.shape[0] != g.shape[0]:
        raise ValueError(f"With exclude_self=True the 'queries' parameter of {func} must be the "
                         f"gallery itself. Got {q.shape[0]} queries for {g.shape[0]} gallery rows.")
    available = g.shape[0] - int(exclude_self)
    k = _positive_int(k, "k", func, upper=available)
    chunk = _positive_int(chunk, "chunk", func)
    out = np.empty((q.shape[0], k), dtype=np.int64)
    for start, idx in iter_knn(q, g, k, exclude_self, chunk, device):
        out[start:start + len(idx)] = idx
    return out


# --------------------------------------------------------------------------------------------
# embedding metrics
# --------------------------------------------------------------------------------------------
# Lone queries. A query whose class has no other member in the set cannot retrieve its class:
# Recall@K, Acc@K, MAP@R and R-precision leave it out (pytorch-metric-learning's
# AccuracyCalculator does the same), and are NaN when every query is lone.

def _others_in_class(y: np.ndarray) -> np.ndarray:
    """(N,) number of other items with each item's label (R of MAP@R; 0 for a lone query)."""
    return np.bincount(y)[y] - 1


def retrieval_metrics(embeddings: np.ndarray, labels: Sequence[int],
                      ks: Sequence[int] = DEFAULT_KS, chunk: int = 4096,
                      device: str | torch.device = "cpu") -> tuple[dict[int, float], dict[int, float]]:
    """(Recall@K, Acc@K) dicts of the SGMLoss paper, the set queried against itself.

    Recall@K: fraction of queries with at least one of their K nearest (self excluded) sharing the
    query's label. Acc@K: mean over queries of the fraction of the K nearest sharing it. Both
    average over the queries that have another item of their class; lone queries are left out,
    and the values are NaN if every query is lone. K larger than N - 1 is skipped. Neighbours are
    those of ``knn_indices`` (exact float64 order, ties to the smaller index).
    """
    func = "retrieval_metrics"
    x = _embeddings(embeddings, "embeddings", func)
    y = _labels(labels, "labels", func)
    _same_length(func, embeddings=x, labels=y)
    ks = sorted({_positive_int(k, "ks", func) for k in ks})
    ks = [k for k in ks if k <= len(x) - 1]
    if not ks:
        return {}, {}
    keep = _others_in_class(y) > 0  # (N,) not lone
    if not keep.any():
        return {k: math.nan for k in ks}, {k: math.nan for k in ks}
    idx = knn_indices(x, x, ks[-1], exclude_self=True, chunk=chunk, device=device)  # (N, Kmax)
    same = (y[idx] == y[:, None])[keep]  # (N', Kmax)
    recall = {k: float(same[:, :k].any(axis=1).mean()) for k in ks}
    acc = {k: float(same[:, :k].mean()) for k in ks}
    return recall, acc


def recall_at_k(embeddings: np.ndarray, labels: Sequence[int],
                ks: Sequence[int] = DEFAULT_KS, **knn_options: object) -> dict[int, float]:
    """Recall@K of the SGMLoss paper, lone queries left out (see ``retrieval_metrics``)."""
    return retrieval_metrics(embeddings, labels, ks, **knn_options)[0]


def acc_at_k(embeddings: np.ndarray, labels: Sequence[int],
             ks: Sequence[int] = DEFAULT_KS, **knn_options: object) -> dict[int, float]:
    """Acc@K of the SGMLoss paper, lone queries left out (see ``retrieval_metrics``)."""
    return retrieval_metrics(embeddings, labels, ks, **knn_options)[1]


def _neighbour_labels(train_emb: np.ndarray, train_labels: Sequence[int], test_emb: np.ndarray,
                      k: int, num_classes: int | None, func: str, chunk: int,
                      device: str | torch.device) -> tuple[np.ndarray, int]:
    """((N, k) labels of the k nearest training rows, nearest first; C)."""
    train_x = _embeddings(train_emb, "train_emb", func)
    train_y = _labels(train_labels, "train_labels", func, num_classes)
    _same_length(func, train_emb=train_x, train_labels=train_y)
    test_x = _embeddings(test_emb, "test_emb", func)
    c = _num_classes(num_classes, train_y, func=func)
    idx = knn_indices(test_x, train_x, k, chunk=chunk, device=device)
    return train_y[idx], c


def knn_predict_proba(train_emb: np.ndarray, train_labels: Sequence[int], test_emb: np.ndarray,
                      k: int = 11, num_classes: int | None = None, chunk: int = 4096,
                      device: str | torch.device = "cpu") -> np.ndarray:
    """(N, C) fraction of the k nearest training rows in each class (uniform votes).

    ``argmax`` of it breaks tied votes by the smaller class index (scikit-learn's
    ``KNeighborsClassifier`` rule); ``knn_predict`` can break them by the nearest neighbour.
    """
    nl, c = _neighbour_labels(train_emb, train_labels, test_emb, k, num_classes,
                              "knn_predict_proba", chunk, device)
    return _vote_shares(nl, c)


def knn_predict_proba_at(train_emb: np.ndarray, train_labels: Sequence[int], test_emb: np.ndarray,
                         ks: Sequence[int], num_classes: int | None = None, chunk: int = 4096,
                         device: str | torch.device = "cpu") -> dict[int, np.ndarray]:
    """``{k: knn_predict_proba(..., k)}`` for every k of ``ks`` from one neighbour search (the k nearest are the
    first k of the largest k's, ``knn_indices`` being exact)."""
    func = "knn_predict_proba_at"
    ks = sorted({_positive_int(k, "ks", func) for k in ks})
    if not ks:
        raise ValueError(f"The 'ks' parameter of {func} must name at least one k. Got none instead.")
    nl, c = _neighbour_labels(train_emb, train_labels, test_emb, ks[-1], num_classes, func, chunk, device)
    return {k: _vote_shares(nl[:, :k], c) for k in ks}


def _vote_shares(nl: np.ndarray, c: int) -> np.ndarray:
    """(N, k) neighbour labels -> (N, C) share of the k votes that each class got."""
    rows = np.repeat(np.arange(len(nl)), nl.shape[1])
    votes = np.bincount(rows * c + nl.ravel(), minlength=len(nl) * c).reshape(len(nl), c)
    return votes / nl.shape[1]


def knn_predict(train_emb: np.ndarray, train_labels: Sequence[int], test_emb: np.ndarray,
                k: int = 11, num_classes: int | None = None, tie_break: str = "lowest_label",
                chunk: int = 4096, device: str | torch.device = "cpu") -> np.ndarray:
    """(N,) majority vote of the k nearest training labels.

    ``tie_break="lowest_label"`` (default): the smaller class index wins (scikit-learn, and the
    SGMLoss authors' ``eval_fer.py``, which used scikit-learn); it equals ``knn_predict_proba(...)
    .argmax(1)``, so the runner's ``knn_acc`` and a kNN method's ``predict`` agree. ``"nearest"``:
    among the classes with the most votes, the one owning the nearest of the k neighbours wins.
    """
    func = "knn_predict"
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"The 'tie_break' parameter of {func} must be one of {TIE_BREAKS}. "
                         f"Got {tie_break!r} instead.")
    nl, c = _neighbour_labels(train_emb, train_labels, test_emb, k, num_classes, func, chunk, device)
    n, k = nl.shape
    rows = np.arange(n)
    votes = np.zeros((n, c), dtype=np.int64)
    first = np.full((n, c), k, dtype=np.int64)  # rank of each class's nearest neighbour (k: none)
    for j in range(k - 1, -1, -1):
        votes[rows, nl[:, j]] += 1
        first[rows, nl[:, j]] = j
    if tie_break == "lowest_label":
        return votes.argmax(axis=1)
    # votes dominate (k - first lies in [0, k]); among equal votes the smaller rank wins.
    return (votes * (k + 1) + (k - first)).argmax(axis=1)


def knn_accuracy(train_emb: np.ndarray, train_labels: Sequence[int], test_emb: np.ndarray,
                 test_labels: Sequence[int], k: int = 11, tie_break: str = "lowest_label",
                 chunk: int = 4096, device: str | torch.device = "cpu") -> float:
    """Accuracy of ``knn_predict`` (training set as gallery) on the test set."""
    y = _labels(test_labels, "test_labels", "knn_accuracy")
    pred = knn_predict(train_emb, train_labels, test_emb, k, tie_break=tie_break,
                       num_classes=None, chunk=chunk, device=device)
    _same_length("knn_accuracy", test_emb=pred, test_labels=y)
    return float(np.mean(pred == y))


def clustering_metrics(embeddings: np.ndarray, labels: Sequence[int], seed: int = 0,
                       n_init: int = 10) -> tuple[float, float]:
    """(NMI, AMI) between the labels and one k-means clustering of the embeddings.

    k = the number of distinct labels, so a class of the label space that is absent from
    ``labels`` gets no cluster (before issue #19 k was the size of the label space). scikit-learn ``KMeans`` (k-means++, ``n_init`` restarts,
    ``random_state=seed``); NMI is ``normalized_mutual_info_score`` and AMI
    ``adjusted_mutual_info_score``, both with the arithmetic-mean normalisation.
    """
    from sklearn.cluster import KMeans  # imported here: importing fer_bench.metrics stays light
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

    func = "clustering_metrics"
    x = _embeddings(embeddings, "embeddings", func)
    y = _labels(labels, "labels", func)
    _same_length(func, embeddings=x, labels=y)
    k = len(np.unique(y))  # <= len(x) (non-empty): k-means can always run
    with warnings.catch_warnings():  # fewer distinct points than k (a constant embedding): NMI is then 0, as it should be
        warnings.simplefilter("ignore", ConvergenceWarning)
        clusters = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(x)
    return (float(normalized_mutual_info_score(y, clusters, average_method="arithmetic")),
            float(adjusted_mutual_info_score(y, clusters, average_method="arithmetic")))


def nmi(embeddings: np.ndarray, labels: Sequence[int], seed: int = 0, n_init: int = 10) -> float:
    """NMI of labels and k-means clusters, k = the number of distinct labels (see
    ``clustering_metrics``)."""
    return clustering_metrics(embeddings, labels, seed, n_init)[0]


def ami(embeddings: np.ndarray, labels: Sequence[int], seed: int = 0, n_init: int = 10) -> float:
    """AMI of labels and k-means clusters, k = the number of distinct labels (see
    ``clustering_metrics``)."""
    return clustering_metrics(embeddings, labels, seed, n_init)[1]


def map_and_r_precision(embeddings: np.ndarray, labels: Sequence[int], chunk: int = 4096,
                        device: str | torch.device = "cpu") -> tuple[float, float]:
    """(MAP@R, R-precision) of Musgrave et al. 2020, the set queried against itself.

    R = number of other items with the query's label. MAP@R: mean over queries of
    (1/R) sum_{i<=R} P@i * rel_i; R-precision: mean over queries of the fraction of the R nearest
    sharing the label. As pytorch-metric-learning's ``AccuracyCalculator`` (k="max_bin_count"):
    lone queries (R = 0) are left out, NaN if every query is lone. Memory O(N x max R).
    """
    func = "map_and_r_precision"
    x = _embeddings(embeddings, "embeddings", func)
    y = _labels(labels, "labels", func)
    _same_length(func, embeddings=x, labels=y)
    r_all = _others_in_class(y)  # (N,)
    if r_all.max() == 0:
        return math.nan, math.nan
    total_ap, total_rp, count = 0.0, 0.0, 0
    for start, idx in iter_knn(x, x, int(r_all.max()), True, chunk, device):  # idx (m, Rmax)
        r = r_all[start:start + len(idx)]  # (m,)
        keep = r > 0
        rel = (y[idx] == y[start:start + len(idx), None])[keep]  # (m', Rmax)
        r = r[keep]
        hits = rel & (np.arange(rel.shape[1]) < r[:, None])  # (m', Rmax) relevant within the first R
        precision_at_i = np.cumsum(rel, axis=1) / np.arange(1, rel.shape[1] + 1)
        total_ap += float(np.sum((precision_at_i * hits).sum(axis=1) / r))
        total_rp += float(np.sum(hits.sum(axis=1) / r))
        count += len(r)
    return total_ap / count, total_rp / count


def map_at_r(embeddings: np.ndarray, labels: Sequence[int], chunk: int = 4096,
             device: str | torch.device = "cpu") -> float:
    """MAP@R (Musgrave et al. 2020), lone queries left out (see ``map_and_r_precision``)."""
    return map_and_r_precision(embeddings, labels, chunk, device)[0]


def r_precision(embeddings: np.ndarray, labels: Sequence[int], chunk: int = 4096,
                device: str | torch.device = "cpu") -> float:
    """R-precision (Musgrave et al. 2020), lone queries left out (see ``map_and_r_precision``)."""
    return map_and_r_precision(embeddings, labels, chunk, device)[1]


def embedding_report(train_emb: np.ndarray, train_y: Sequence[int], test_emb: np.ndarray,
                     test_y: Sequence[int], seed: int = 0, ks: Sequence[int] = DEFAULT_KS, knn_k: int = 11) -> dict[str, float]:
    """Flat name -> value dict: recall@K, acc@K, knn_acc, nmi, ami, map@r, r_precision.

    K larger than N_test - 1 is left out; kNN uses min(knn_k, N_train) neighbours; nmi and ami
    share one k-means clustering with k = the number of classes present in ``test_y``
    (``clustering_metrics``). The retrieval values
    leave lone test queries out and are NaN if every test class has a single item.
    """
    recall, acc = retrieval_metrics(test_emb, test_y, ks)
    report = {f"recall@{k}": v for k, v in recall.items()}
    report.update({f"acc@{k}": v for k, v in acc.items()})
    k = min(knn_k, len(np.asarray(train_y)))
    report["knn_acc"] = knn_accuracy(train_emb, train_y, test_emb, test_y, k=k)
    report["nmi"], report["ami"] = clustering_metrics(test_emb, test_y, seed=seed)
    report["map@r"], report["r_precision"] = map_and_r_precision(test_emb, test_y)
    return report
