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
  classification with k = 11 training neighbours (its Table 2); NMI of k-means clusters.
* MAP@R from Musgrave, Belongie and Lim, "A Metric Learning Reality Check" (ECCV 2020), computed as
  pytorch-metric-learning's ``AccuracyCalculator`` computes ``mean_average_precision_at_r``.
* KL / JS divergence to reference label distributions (SCE-ALD and FERPlus-style vote targets).
* Cost helpers: parameter count, peak memory, inference milliseconds per image.

Conventions. Labels are integer class indices ``0..C-1``. Where a per-class ratio has a zero
denominator (a class absent from ``y_true`` has no recall, a class never predicted has no
precision) the ratio is 0, as scikit-learn's ``zero_division=0``; macro averages run over all
``num_classes`` classes. ``mean_class_accuracy`` is the exception: it averages recall over the
classes present in ``y_true`` only (scikit-learn's ``balanced_accuracy_score``).

Nearest neighbours (``knn_indices``) use squared Euclidean distance computed in float32 as chunked
matrix products plus ``torch.topk``; no N x N matrix is ever held. Neighbours are ordered by
distance, and ties in the computed distance are broken by the smaller gallery index, so results do
not depend on the chunk size, thread count or topk's internal order.
"""
from __future__ import annotations

import logging
import math
import resource
import sys
import time
import warnings
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from scipy.special import rel_entr

logger = logging.getLogger(__name__)

DEFAULT_KS: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
TIE_BREAKS: tuple[str, ...] = ("nearest", "lowest_label")


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
    """Return ``x`` as a 2-D float32 array of finite values (no copy when already so)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"The '{name}' parameter of {func} must be a non-empty 2-D array (N, D). "
                         f"Got shape {arr.shape} instead.")
    if not np.isfinite(arr).all():
        raise ValueError(f"The '{name}' parameter of {func} must hold finite numbers. "
                         f"Got NaN or inf (after the cast to float32) instead.")
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
    """Macro (P, R, F1) over all ``num_classes`` classes; F1 is the mean of per-class F1.

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
    """SGMLoss paper's F1: 2PR / (P + R) from the macro P and R (0 when P + R = 0)."""
    p, r, _ = macro_precision_recall_f1(y_true, y_pred, num_classes)
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def classification_report(y_true: Sequence[int], y_pred: Sequence[int],
                          num_classes: int) -> dict[str, float]:
    """Flat name -> value dict of the classification metrics, for the result store."""
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

_REPAIR_ROWS = 256  # rows per block on the (rare) tie-repair path


def _order_keys(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """int64 keys whose order is (float32 value, index) order; index must be in [0, 2**32)."""
    bits = (values + 0.0).contiguous().view(torch.int32)  # + 0.0 turns -0.0 into +0.0
    # IEEE floats order like sign-magnitude integers: flip the magnitude bits of negatives.
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return ordered.to(torch.int64) * (1 << 32) + index


@torch.no_grad()
def _iter_knn(queries: np.ndarray, gallery: np.ndarray, k: int, exclude_self: bool, chunk: int,
              device: str | torch.device) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (start, (m, k) int64 gallery indices) for consecutive blocks of query rows.

    Similarity of query q to gallery item g: q.g - ||g||^2 / 2, which is minus half the squared
    distance plus a per-query constant, so it ranks a row like the distance. It comes out of one
    matrix product of [q, -1/2] with [g, ||g||^2] (no separate pass to add the norms). Both sets are
    first centred on the gallery mean: distances are unchanged and float32 cancellation is smaller
    for data far from the origin.

    topk(k + 1) picks the candidates per row; int64 keys then give the exact (distance, index)
    order among them. If the k-th and (k+1)-th candidates tie, topk may have dropped a tied item
    with a smaller index: such a row refills its slots of that score with the first indices having
    it (items scoring better than the k-th are never dropped).
    """
    n_gallery, dim = gallery.shape
    dev = torch.device(device)
    k1 = min(k + 1, n_gallery)  # one more than k, to see a tie at the k-th place
    centre = torch.from_numpy(gallery.mean(axis=0, dtype=np.float64).astype(np.float32))
    g_aug = torch.empty((n_gallery, dim + 1), device=dev)  # (Ng, D+1) = [g, ||g||^2]
    g_aug[:, :dim] = torch.from_numpy(gallery).to(dev) - centre.to(dev)
    g_aug[:, dim] = g_aug[:, :dim].square().sum(dim=1)
    if queries is gallery:
        q_aug = g_aug.clone()  # (Nq, D+1) = [q, -1/2]
    else:
        q_aug = torch.empty((queries.shape[0], dim + 1), device=dev)
        q_aug[:, :dim] = torch.from_numpy(queries).to(dev) - centre.to(dev)
    q_aug[:, dim] = -0.5
    buffer = torch.empty((min(chunk, q_aug.shape[0]), n_gallery), device=dev)  # reused per chunk
    for start in range(0, q_aug.shape[0], chunk):
        stop = min(start + chunk, q_aug.shape[0])
        sim = buffer[:stop - start]  # (m, Ng)
        torch.mm(q_aug[start:stop], g_aug.t(), out=sim)
        if exclude_self:
            sim.diagonal(offset=start).fill_(-math.inf)
        cand_sim, cand_idx = torch.topk(sim, k1, dim=1, largest=True, sorted=True)  # (m, k1)
        # Exact order: larger similarity first, then smaller index.
        keys = _order_keys(-cand_sim, cand_idx)  # (m, k1)
        idx = torch.topk(keys, k, dim=1, largest=False, sorted=True).values & 0xFFFFFFFF  # (m, k)
        if k1 > k:
            kth = cand_sim[:, k - 1:k]  # (m, 1) k-th best similarity
            rows = torch.nonzero(cand_sim[:, k] == kth[:, 0]).flatten()
            for r0 in range(0, len(rows), _REPAIR_ROWS):
                r = rows[r0:r0 + _REPAIR_ROWS]
                equal = sim[r] == kth[r]  # (r, Ng)
                rank = equal.cumsum(dim=1, dtype=torch.int32)  # (r, Ng) 1-based rank among equals
                n_better = (cand_sim[r, :k] > kth[r]).sum(dim=1, dtype=torch.int32)  # (r,)
                row, col = torch.nonzero(equal & (rank <= (k - n_better)[:, None]), as_tuple=True)
                idx[r[row], (n_better[row] + rank[row, col] - 1).long()] = col
        yield start, idx


def knn_indices(queries: np.ndarray, gallery: np.ndarray, k: int, exclude_self: bool = False,
                chunk: int = 4096, device: str | torch.device = "cpu") -> np.ndarray:
    """(Nq, k) int64 indices of the k nearest gallery rows (Euclidean), nearest first.

    With ``exclude_self`` row i of ``queries`` is taken to be row i of ``gallery`` and is never its
    own neighbour (pass the same array twice). Memory is O(N_gallery x chunk); ties in the float32
    distance go to the smaller gallery index.
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
    for start, idx in _iter_knn(q, g, k, exclude_self, chunk, device):
        out[start:start + idx.shape[0]] = idx.cpu().numpy()
    return out


# --------------------------------------------------------------------------------------------
# embedding metrics
# --------------------------------------------------------------------------------------------

def retrieval_metrics(embeddings: np.ndarray, labels: Sequence[int],
                      ks: Sequence[int] = DEFAULT_KS, chunk: int = 4096,
                      device: str | torch.device = "cpu") -> tuple[dict[int, float], dict[int, float]]:
    """(Recall@K, Acc@K) dicts of the SGMLoss paper, the set queried against itself.

    Recall@K: fraction of queries with at least one of their K nearest (self excluded) sharing the
    query's label. Acc@K: mean over queries of the fraction of the K nearest sharing it. Every query
    counts (also one whose class has no other member). K larger than N - 1 is skipped.
    """
    func = "retrieval_metrics"
    x = _embeddings(embeddings, "embeddings", func)
    y = _labels(labels, "labels", func)
    _same_length(func, embeddings=x, labels=y)
    ks = sorted({_positive_int(k, "ks", func) for k in ks})
    ks = [k for k in ks if k <= len(x) - 1]
    if not ks:
        return {}, {}
    idx = knn_indices(x, x, ks[-1], exclude_self=True, chunk=chunk, device=device)  # (N, Kmax)
    same = y[idx] == y[:, None]  # (N, Kmax)
    recall = {k: float(same[:, :k].any(axis=1).mean()) for k in ks}
    acc = {k: float(same[:, :k].mean()) for k in ks}
    return recall, acc


def recall_at_k(embeddings: np.ndarray, labels: Sequence[int],
                ks: Sequence[int] = DEFAULT_KS, **knn_options: object) -> dict[int, float]:
    """Recall@K of the SGMLoss paper (see ``retrieval_metrics``)."""
    return retrieval_metrics(embeddings, labels, ks, **knn_options)[0]


def acc_at_k(embeddings: np.ndarray, labels: Sequence[int],
             ks: Sequence[int] = DEFAULT_KS, **knn_options: object) -> dict[int, float]:
    """Acc@K of the SGMLoss paper (see ``retrieval_metrics``)."""
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


def nmi(embeddings: np.ndarray, labels: Sequence[int], num_classes: int | None = None,
        seed: int = 0, n_init: int = 10) -> float:
    """NMI (arithmetic mean) between labels and k-means clusters of the embeddings.

    k = ``num_classes`` or, if None, the number of distinct labels; scikit-learn ``KMeans``
    (k-means++, ``n_init`` restarts, ``random_state=seed``).
    """
    from sklearn.cluster import KMeans  # imported here: importing fer_bench.metrics stays light
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import normalized_mutual_info_score

    func = "nmi"
    x = _embeddings(embeddings, "embeddings", func)
    y = _labels(labels, "labels", func)
    _same_length(func, embeddings=x, labels=y)
    k = len(np.unique(y)) if num_classes is None else _positive_int(num_classes, "num_classes", func)
    if k > len(x):
        raise ValueError(f"The 'num_classes' parameter of {func} must not exceed the number of "
                         f"embeddings ({len(x)}). Got {k} instead.")
    with warnings.catch_warnings():  # fewer distinct points than k (a constant embedding): NMI is then 0, as it should be
        warnings.simplefilter("ignore", ConvergenceWarning)
        clusters = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(x)
    return float(normalized_mutual_info_score(y, clusters, average_method="arithmetic"))


def map_at_r(embeddings: np.ndarray, labels: Sequence[int], chunk: int = 4096,
             device: str | torch.device = "cpu") -> float:
    """MAP@R (Musgrave et al. 2020): mean over queries of (1/R) sum_{i<=R} P@i * rel_i.

    R = number of other items with the query's label; queries with R = 0 are left out (as in
    pytorch-metric-learning); NaN if every query has R = 0. Memory O(N x max R).
    """
    func = "map_at_r"
    x = _embeddings(embeddings, "embeddings", func)
    y = _labels(labels, "labels", func)
    _same_length(func, embeddings=x, labels=y)
    r_all = np.bincount(y)[y] - 1  # (N,) other items with the same label
    if r_all.max() == 0:
        return float("nan")
    total, count = 0.0, 0
    for start, idx in _iter_knn(x, x, int(r_all.max()), True, chunk, device):
        idx = idx.cpu().numpy()  # (m, Rmax)
        r = r_all[start:start + len(idx)]  # (m,)
        keep = r > 0
        rel = (y[idx] == y[start:start + len(idx), None])[keep]  # (m', Rmax)
        r = r[keep]
        within_r = np.arange(rel.shape[1]) < r[:, None]  # (m', Rmax)
        precision_at_i = np.cumsum(rel, axis=1) / np.arange(1, rel.shape[1] + 1)
        total += float(np.sum((precision_at_i * (rel & within_r)).sum(axis=1) / r))
        count += len(r)
    return total / count


def embedding_report(train_emb: np.ndarray, train_y: Sequence[int], test_emb: np.ndarray,
                     test_y: Sequence[int], num_classes: int | None = None, seed: int = 0,
                     ks: Sequence[int] = DEFAULT_KS, knn_k: int = 11) -> dict[str, float]:
    """Flat name -> value dict: recall@K, acc@K, knn_acc, nmi, map@r (NaN if no label repeats).

    K larger than N_test - 1 is left out, and so is nmi when there are fewer test rows than
    clusters; kNN uses min(knn_k, N_train) neighbours.
    """
    recall, acc = retrieval_metrics(test_emb, test_y, ks)
    report = {f"recall@{k}": v for k, v in recall.items()}
    report.update({f"acc@{k}": v for k, v in acc.items()})
    k = min(knn_k, len(np.asarray(train_y)))
    report["knn_acc"] = knn_accuracy(train_emb, train_y, test_emb, test_y, k=k)
    n_clusters = len(np.unique(np.asarray(test_y))) if num_classes is None else num_classes
    if n_clusters <= len(np.asarray(test_y)):  # else k-means cannot run: the key is left out
        report["nmi"] = nmi(test_emb, test_y, num_classes, seed=seed)
    report["map@r"] = map_at_r(test_emb, test_y)
    return report


# --------------------------------------------------------------------------------------------
# distribution metrics
# --------------------------------------------------------------------------------------------

def _distributions(p: object, name: str, func: str) -> np.ndarray:
    """Rows of ``p`` as probability vectors (float64, non-negative, normalised to sum 1)."""
    arr = np.asarray(p, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or not np.isfinite(arr).all() or (arr < 0).any() or (arr.sum(axis=1) <= 0).any():
        raise ValueError(f"The '{name}' parameter of {func} must be an (N, C) array of "
                         f"non-negative finite rows with a positive sum. Got shape {arr.shape} "
                         f"with a negative, non-finite or all-zero row instead.")
    return arr / arr.sum(axis=1, keepdims=True)


def kl_divergence(p_ref: np.ndarray, q_pred: np.ndarray, eps: float = 1e-8) -> float:
    """Mean over rows of KL(p_ref || q_pred), natural log; q is floored at ``eps`` and renormalised."""
    p = _distributions(p_ref, "p_ref", "kl_divergence")
    q = _distributions(q_pred, "q_pred", "kl_divergence")
    if p.shape != q.shape:
        raise ValueError(f"The 'p_ref' and 'q_pred' parameters of kl_divergence must have the same "
                         f"shape. Got {p.shape} and {q.shape} instead.")
    q = np.maximum(q, eps)
    q = q / q.sum(axis=1, keepdims=True)
    return float(rel_entr(p, q).sum(axis=1).mean())  # rel_entr: p log(p/q), 0 where p = 0


def js_divergence(p_ref: np.ndarray, q_pred: np.ndarray) -> float:
    """Mean over rows of the Jensen-Shannon divergence (natural log, in [0, ln 2])."""
    p = _distributions(p_ref, "p_ref", "js_divergence")
    q = _distributions(q_pred, "q_pred", "js_divergence")
    if p.shape != q.shape:
        raise ValueError(f"The 'p_ref' and 'q_pred' parameters of js_divergence must have the same "
                         f"shape. Got {p.shape} and {q.shape} instead.")
    m = (p + q) / 2
    return float((0.5 * rel_entr(p, m).sum(axis=1) + 0.5 * rel_entr(q, m).sum(axis=1)).mean())


# --------------------------------------------------------------------------------------------
# cost
# --------------------------------------------------------------------------------------------

def parameter_count(module: torch.nn.Module) -> dict[str, int]:
    """{"total": all parameters, "trainable": those with requires_grad} (shared ones once)."""
    params = list(module.parameters())
    return {"total": sum(p.numel() for p in params),
            "trainable": sum(p.numel() for p in params if p.requires_grad)}


def peak_memory_bytes(device: str | torch.device = "cpu") -> int:
    """Peak memory so far: process RSS peak on CPU, ``max_memory_allocated`` on CUDA."""
    dev = torch.device(device)
    if dev.type == "cpu":
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB
    elif dev.type == "cuda":
        return int(torch.cuda.max_memory_allocated(dev))
    else:
        raise ValueError(f"The 'device' parameter of peak_memory_bytes must be a cpu or cuda "
                         f"device. Got {device!r} instead.")


def inference_ms_per_image(fn: Callable[[torch.Tensor], object], images: torch.Tensor,
                           batch_size: int, repeats: int = 3, warmup: int = 1) -> float:
    """Median over ``repeats`` passes of the time ``fn`` takes per image, in milliseconds.

    One pass calls ``fn`` on consecutive batches of ``images`` (the last may be smaller), under
    ``torch.no_grad``; ``warmup`` untimed calls on the first batch come first. CUDA work is
    synchronised before the clock is read.
    """
    func = "inference_ms_per_image"
    batch_size = _positive_int(batch_size, "batch_size", func)
    repeats = _positive_int(repeats, "repeats", func)
    n = len(images)
    if n == 0:
        raise ValueError(f"The 'images' parameter of {func} must not be empty. Got 0 images instead.")
    sync = images.is_cuda if isinstance(images, torch.Tensor) else False
    times = []
    with torch.no_grad():
        for _ in range(warmup):
            fn(images[:batch_size])
        for _ in range(repeats):
            if sync:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for start in range(0, n, batch_size):
                fn(images[start:start + batch_size])
            if sync:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    return float(np.median(times) / n * 1000.0)
