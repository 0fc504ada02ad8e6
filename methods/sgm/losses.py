"""The losses and samplers of SGMLoss and its triplet baseline, and DGMS's EM split into sub-classes, as pure
functions (tests recompute them by hand and against pytorch-metric-learning; see :mod:`fer_bench_methods.sgm`)."""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F


def sgm_posterior(z: torch.Tensor, y: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(posterior (B, C'), one-hot target (B, C')) over the C' classes present in the batch.

    ``mu_j`` is the mean of the batch embeddings of class j (not detached); the posterior is
    ``softmax_j(-||z_i - mu_j||^2 / (2 sigma^2))``, Eq. 1 with Eq. 3 and equal priors.
    """
    _, inverse = torch.unique(y, return_inverse=True)                   # (B,) in 0..C'-1
    onehot = F.one_hot(inverse).to(z.dtype)                             # (B, C')
    mu = (onehot.T @ z) / onehot.sum(0)[:, None]                        # (C', d)
    d2 = (z[:, None, :] - mu[None, :, :]).pow(2).sum(-1)                # (B, C')
    return torch.softmax(-d2 / (2.0 * sigma ** 2), dim=1), onehot


def sgm_loss(z: torch.Tensor, y: torch.Tensor, sigma: float = 0.5, reg_lambda: float = 1e-3) -> torch.Tensor:
    """Structured Gaussian Manifold loss of embeddings ``z`` (B, d) with labels ``y`` (B,).

    ``mean_i sum_j (P(w_j | z_i) - 1[y_i = j])^2 + reg_lambda * mean_i ||z_i||_2`` (Eq. 4, Alg. 1).
    """
    z = z.float() if z.dtype in (torch.float16, torch.bfloat16) else z   # AMP: the loss in float32 (or float64)
    post, onehot = sgm_posterior(z, y, sigma)
    rep = (post - onehot).pow(2).sum(1).mean()
    return rep + reg_lambda * z.norm(dim=1).mean()


def triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float = 1.0,
                 reg_lambda: float = 1e-3) -> torch.Tensor:
    """``mean_t max(0, ||a-p|| - ||a-n|| + margin) + reg_lambda (||A||_F + ||P||_F + ||N||_F)``.

    Distances are PyTorch's ``pairwise_distance`` (Euclidean, with its 1e-6 stabiliser), as the
    authors' ``F.triplet_margin_loss`` call; inputs are (T, d).
    """
    a, p, n = (t.float() if t.dtype in (torch.float16, torch.bfloat16) else t for t in (anchor, positive, negative))
    hinge = F.triplet_margin_loss(a, p, n, margin=margin, p=2)
    return hinge + reg_lambda * (a.norm() + p.norm() + n.norm())


def batch_all_triplet_loss(z: torch.Tensor, y: torch.Tensor, margin: float = 1.0,
                           reg_lambda: float = 1e-3) -> torch.Tensor:
    """Batch-all triplet loss (Hermans, Beyer and Leibe 2017) on embeddings ``z`` (B, d), labels ``y`` (B,).

    Every (a, p, n) with ``y[a] == y[p]``, ``a != p`` and ``y[n] != y[a]`` contributes
    ``max(0, ||z_a - z_p|| - ||z_a - z_n|| + margin)``; the mean is over the triplets whose hinge is
    non-zero (0 when none is), plus ``reg_lambda`` x the Frobenius norm of the batch ``z``.
    """
    z = z.float()
    sq = (z[:, None, :] - z[None, :, :]).pow(2).sum(-1)                   # (B, B)
    d = sq.clamp_min(1e-12).sqrt()                                      # no NaN gradient at d = 0
    same = y[:, None] == y[None, :]                                     # (B, B)
    eye = torch.eye(len(y), dtype=torch.bool, device=y.device)
    valid = (same & ~eye)[:, :, None] & ~same[:, None, :]               # (B, B, B): a, p, n
    hinge = F.relu(d[:, :, None] - d[:, None, :] + margin) * valid      # (B, B, B)
    active = (hinge > 0).sum()
    mean = hinge.sum() / active.clamp_min(1)
    return mean + reg_lambda * z.norm()


def n_per_class_batches(labels: np.ndarray, n: int, generator: torch.Generator,
                        num_batches: int | None = None) -> Iterator[torch.Tensor]:
    """Index batches holding exactly ``n`` items of every class present in ``labels``.

    Each class is walked through in a fresh random order, permutation after permutation, so within
    an epoch every item of a class is used about equally often (a class smaller than ``n`` repeats
    items inside a batch). ``num_batches`` defaults to ``len(labels) // (n * classes)`` (at least 1):
    an epoch sees about as many images as the training set holds. Batches are class blocks in
    ascending class order.
    """
    labels = np.asarray(labels)
    classes = np.unique(labels)
    members = [torch.from_numpy(np.flatnonzero(labels == c)) for c in classes]
    if num_batches is None:
        num_batches = max(1, len(labels) // (n * len(classes)))
    need = num_batches * n
    streams = []
    for idx in members:
        reps = -(-need // len(idx))                                     # ceil
        order = torch.cat([idx[torch.randperm(len(idx), generator=generator)] for _ in range(reps)])
        streams.append(order[:need].view(num_batches, n))               # (num_batches, n)
    per_batch = torch.stack(streams, dim=1)                             # (num_batches, C, n)
    for b in range(num_batches):
        yield per_batch[b].reshape(-1)                                  # (C * n,)


def random_triplets(labels: np.ndarray, count: int, generator: torch.Generator) -> torch.Tensor:
    """(count, 3) indices (anchor, positive, negative) drawn as the authors' ``make_triplet_list``.

    ``count // C`` anchors per class (the remainder to the first classes), drawn with replacement;
    the positive is another item of the anchor's class (the anchor itself only if the class has one
    item); the negative is uniform over the items of all other classes. Rows are shuffled.
    """
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if len(classes) < 2:
        raise ValueError(f"random_triplets needs at least 2 classes in the labels to draw negatives. Got {len(classes)}.")
    base, extra = divmod(count, len(classes))
    rows = []
    for j, c in enumerate(classes):
        m = base + (j < extra)
        if m == 0:
            continue
        same = torch.from_numpy(np.flatnonzero(labels == c))
        other = torch.from_numpy(np.flatnonzero(labels != c))
        a = torch.randint(len(same), (m,), generator=generator)
        if len(same) > 1:                                               # a shift in 1..n-1: never the anchor
            p = (a + torch.randint(1, len(same), (m,), generator=generator)) % len(same)
        else:
            p = a
        neg = other[torch.randint(len(other), (m,), generator=generator)]
        rows.append(torch.stack([same[a], same[p], neg], dim=1))       # (m, 3)
    out = torch.cat(rows)
    return out[torch.randperm(len(out), generator=generator)]


def gmm_split(z: np.ndarray, labels: np.ndarray, level: int, mc: int, covariance: str = "full",
              reg_covar: float = 1e-3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(sub-class labels (N,), parent class of each sub-class (K,)) of one level of Algorithm 2.

    Class c (in ascending order) is split by EM into ``max(1, min(level, n_c // mc))`` Gaussian
    components; component ids are offset by the number of sub-classes before it. Components that EM
    leaves empty are dropped (ids stay contiguous).
    """
    from sklearn.mixture import GaussianMixture

    z = np.asarray(z, dtype=np.float64)
    labels = np.asarray(labels)
    out = np.empty(len(labels), dtype=np.int64)
    parent: list[int] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        m = max(1, min(level, len(idx) // mc))
        if m == 1:
            g = np.zeros(len(idx), dtype=np.int64)
        else:
            gmm = GaussianMixture(m, covariance_type=covariance, reg_covar=reg_covar, random_state=seed)
            g = np.unique(gmm.fit_predict(z[idx]), return_inverse=True)[1].reshape(-1)
        out[idx] = g + len(parent)
        parent += [int(c)] * int(g.max() + 1)
    return out, np.array(parent, dtype=np.int64)
