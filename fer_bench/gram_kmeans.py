"""Batched k-means of many small problems on their Gram matrices (the ``torch`` backend of
:func:`fer_bench.clustering.cluster_patches`).

k-means only ever needs inner products: a centre is a mean of data points, c_j = sum_l W_jl x_l with W (k, P)
(a one-hot row after k-means++, 1/|C_j| on the cluster's points after a Lloyd step), so with G = X X^T
    ||x_i - c_j||^2 = G_ii - 2 (W G)_ji + (W G W^T)_jj
(kernel k-means with the linear kernel is exactly k-means). For P = 36 patches in D = 2048 and k = 4, the only
D-sized work is one X X^T per image (a batched matrix product); seeding and every Lloyd step cost O(k P^2).
The algorithm is scikit-learn's KMeans (algorithm="lloyd") step for step, read from its documentation and source
and written anew on Gram matrices: data centred first; greedy k-means++ with 2 + int(log k) candidates per
centre, drawn from RandomState(seed) in scikit-learn's order; Lloyd steps until the labels repeat ("strict
convergence") or the squared centre shift is <= tol x the mean per-feature variance, then one more assignment;
an empty cluster is moved to the point farthest from its own centre; n_init restarts keep a strictly lower
inertia only when its partition differs. scikit-learn itself is not called: it seeds and iterates one image
at a time in NumPy, and the per-image loop is what this backend replaces.
"""
from __future__ import annotations

import contextlib
import functools
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from fer_bench.threads import threadpools

if TYPE_CHECKING:
    import torch


MIN_PROBLEMS_PER_THREAD = 1024   # gram_kmeans(threads=...) gives a thread no fewer problems than this
GRAM_CHUNK = 32     # images per float16 -> float32 conversion and X X^T (a (32, 36, 2048) buffer, 9 MB, stays in cache)


def patch_grams(emb: "np.ndarray | torch.Tensor", chunk: int = GRAM_CHUNK, device: "str | torch.device" = "cpu",
                threads: int | None = None) -> "torch.Tensor":
    """Gram matrices of the per-image centred embeddings: (N, P, D) -> (N, P, P) float32 on ``device``.

    ``emb`` may be a float16 memmap: it is read ``chunk`` images at a time and converted into a reused float32
    buffer (a fresh N x P x D float32 copy costs more in page faults than the conversion itself). The result is
    the Gram matrix of the mean-centred patches, as scikit-learn's KMeans centres its input, computed in two
    steps: each image is shifted by its own first patch before the product (the distances are unchanged, and the
    float32 inner products do not carry the large common component of ReLU features), then its P x P Gram matrix
    is centred exactly (double centring). The shift saves the pass over the (c, P, D) chunk that the mean took
    (11 % of the Gram step at 200 images, one thread); centring the Gram of the raw, unshifted patches instead lost
    identical partitions when the common component was large.

    On the CPU the products run through NumPy's matmul (OpenBLAS), one BLAS thread per product: torch's CPU bmm
    took 1.4-1.8x as long for these (36 x 2048) x (2048 x 36) products on the shared 2-core AMD machine this was
    developed on (measured under load), and BLAS threads inside so small a product made it up to 5x slower when
    the other core was busy. With
    ``threads`` > 1 (default ``torch.get_num_threads()``) the chunks are shared out to that many Python threads
    as they free up (NumPy and torch release the GIL), each converting, centring and multiplying whole chunks, with
    torch held at one intra-op thread (``one_torch_thread``). The result does not depend on ``chunk`` or
    ``threads``.
    """
    import torch
    n, p = emb.shape[:2]
    out = torch.empty(n, p, p, dtype=torch.float32, device=device)
    chunk = max(1, min(int(chunk), n))
    spans = [(a, min(n, a + chunk)) for a in range(0, n, chunk)]
    if out.device.type != "cpu":
        scratch = threading.local()
        for span in spans:
            _gram_span(emb, out, span, chunk, scratch)
        return out
    threads = max(1, min(threads or torch.get_num_threads(), len(spans)))
    scratch = threading.local()                                   # one buffer per thread, reused across its chunks
    with one_torch_thread(), threadpools().limit(limits=1, user_api="blas"):
        if threads == 1:
            for span in spans:
                _gram_span(emb, out, span, chunk, scratch)
        else:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(functools.partial(_gram_span, emb, out, chunk=chunk, scratch=scratch), spans))
    return out


def _gram_span(emb, out: "torch.Tensor", span: tuple[int, int], chunk: int, scratch: threading.local) -> None:
    """out[a:b] = Gram matrices of the centred emb[a:b], through this thread's buffers in ``scratch``."""
    import torch
    a, b = span
    p, d = emb.shape[1:]
    if not hasattr(scratch, "buf"):
        scratch.buf = torch.empty(chunk, p, d, dtype=torch.float32, device=out.device)   # (c, P, D)
    x = scratch.buf[:b - a]
    x.copy_(_tensor_view(emb[a:b], scratch))            # torch's vectorised float16 -> float32 conversion
    # shifted in place by the first patch (a copy: the subtraction must not see row 0 already zeroed); a fused
    # torch.sub(float16, float32 row, out=x) would be 1.5x slower here (mixed-dtype arithmetic is not vectorised)
    x -= x[:, :1].clone()                                                           # (c, P, D)
    g = out[a:b]
    if x.device.type == "cpu":
        xn = x.numpy()
        np.matmul(xn, xn.transpose(0, 2, 1), out=g.numpy())                        # (c, P, P)
    else:
        torch.bmm(x, x.transpose(1, 2), out=g)
    g -= g.mean(1, keepdim=True)                                   # double centring: the Gram of x - mean patch
    g -= g.mean(2, keepdim=True)


def _tensor_view(part: "np.ndarray | torch.Tensor", scratch: threading.local) -> "torch.Tensor":
    """``part`` as a tensor on its own memory (read straight out of the cache's read-only float16 memmap).

    DLPack passes read-only memory without a copy (``torch.from_numpy`` would warn that the array is not writable);
    NumPy before 2.1, or a torch that does not ask for DLPack 1.0, refuses to export read-only memory, and then the
    part is first copied (same dtype) into this thread's staging buffer. Reading the memmap directly saves that
    copy: 0.0985 -> 0.085 ms/image for the Gram step at 200 images on one thread.
    """
    import torch
    if isinstance(part, torch.Tensor):
        return part
    part = np.asarray(part)
    try:
        return torch.from_dlpack(part)
    except (BufferError, TypeError, RuntimeError):
        staging = getattr(scratch, "staging", None)
        if staging is None or staging.dtype != part.dtype or len(staging) < len(part):
            scratch.staging = np.empty((len(part), *part.shape[1:]), dtype=part.dtype)
        staged = scratch.staging[:len(part)]
        np.copyto(staged, part)
        return torch.from_numpy(staged)


@contextlib.contextmanager
def one_torch_thread():
    """torch at one intra-op thread inside the block, restored after (the torch backend on the CPU).

    Its operations here are small (a few MB) and many; with 2 OpenMP threads each one waits for the second thread,
    and on a busy 2-core machine that made the Lloyd steps 10x and the Gram products up to 10x slower. The
    parallelism of the backend is the Gram products' Python threads instead, which do not wait for each other.
    """
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def kmeans_draws(seed: int, n_points: int, k: int, n_init: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The random numbers ``KMeans(k, n_init=n_init, random_state=seed).fit`` draws for ``n_points`` points.

    scikit-learn's k-means++ draws, per restart, the first centre with ``RandomState.choice`` (uniform weights), then
    for each further centre ``2 + int(log k)`` uniforms, which it scales by the current potential and looks up in
    the cumulative sum of the squared distances. Only the look-up depends on the data, so every image clustered with
    the same seed uses the same draws (as the sklearn backend does, one ``random_state=seed`` per image), and the
    seeds of ``gram_kmeans`` are scikit-learn's up to float rounding at a cumulative-sum boundary.
    Returns ``first`` (n_init,) int64 and ``uniforms`` (n_init, k - 1, 2 + int(log k)) float64.
    """
    rs = np.random.RandomState(seed)
    trials = 2 + int(np.log(k))
    weights = np.ones(n_points, dtype=np.float32)                  # scikit-learn's unit sample weights, float32
    first = np.empty(n_init, dtype=np.int64)
    uniforms = np.empty((n_init, max(k - 1, 0), trials), dtype=np.float64)
    for r in range(n_init):
        first[r] = rs.choice(n_points, p=weights / weights.sum())
        for c in range(k - 1):
            uniforms[r, c] = rs.uniform(size=trials)
    return first, uniforms


def gram_kmeans_plusplus(gram: "torch.Tensor", k: int, first: int, uniforms: "torch.Tensor") -> "torch.Tensor":
    """Greedy k-means++ of B problems from their Gram matrices: (B, P, P) -> indices of the k seeds (B, k).

    ``first`` and ``uniforms`` (k - 1, T) come from ``kmeans_draws``: seed 0 is point ``first``; each further seed
    is the best (lowest potential) of T candidates drawn with probability proportional to the squared distance to
    the nearest seed so far.
    """
    import torch
    b, p, _ = gram.shape
    diag = gram.diagonal(dim1=1, dim2=2).contiguous()                              # (B, P) squared norms
    idx = torch.empty(b, k, dtype=torch.long, device=gram.device)
    idx[:, 0] = first
    flat = gram.reshape(b * p, p)                              # rows of all problems (index_select beats gather)
    base = torch.arange(b, device=gram.device).unsqueeze(1) * p                    # (B, 1)
    closest = (diag + diag[:, first:first + 1] - 2 * gram[:, first]).clamp_min_(0)   # (B, P)
    pot = closest.sum(1)                                                           # (B,)
    for c in range(1, k):
        target = uniforms[c - 1].unsqueeze(0) * pot.double().unsqueeze(1)          # (B, T) float64
        cand = torch.searchsorted(closest.cumsum(1).double(), target).clamp_max_(p - 1)   # (B, T)
        rows = flat.index_select(0, (base + cand).view(-1)).view(b, -1, p)        # (B, T, P): <x_cand, x_i>
        d = (diag.unsqueeze(1) + diag.gather(1, cand).unsqueeze(-1) - 2 * rows).clamp_min_(0)
        d = torch.minimum(d, closest.unsqueeze(1))                                 # (B, T, P) new nearest distances
        pots = d.sum(-1)                                                           # (B, T)
        best = pots.argmin(1, keepdim=True)                                        # (B, 1) first lowest
        closest = d.gather(1, best.unsqueeze(-1).expand(-1, 1, p)).squeeze(1)      # (B, P)
        pot = pots.gather(1, best).squeeze(1)
        idx[:, c] = cand.gather(1, best).squeeze(1)
    return idx


def _scores(gram: "torch.Tensor", w: "torch.Tensor") -> "torch.Tensor":
    """||c_j||^2 - 2 <x_i, c_j> for centres c_j = W_j X: (B, P, P), (B, k, P) -> (B, P, k).

    The squared distance less ||x_i||^2, which does not change the nearest centre (scikit-learn's assignment step
    leaves it out too). Laid out (B, P, k): torch's CPU min over a middle axis is 10-15x slower than over the last.
    """
    wg = w @ gram                                                                  # (B, k, P): <c_j, x_i>
    cc = (wg * w).sum(-1)                                                          # (B, k): ||c_j||^2
    return cc.unsqueeze(1) - 2 * wg.transpose(1, 2)                                # (B, P, k)


def _relocate_empty(members: "torch.Tensor", counts: "torch.Tensor", labels: "torch.Tensor",
                    own: "torch.Tensor") -> None:
    """Move empty clusters to far points, in place, as scikit-learn's Lloyd step does.

    members (B, k, P) 0/1, counts (B, k), labels (B, P), own (B, P) squared distance of each point to its (old)
    centre. The empty clusters of a problem, in id order, take its points farthest from their centres, largest
    first (scikit-learn takes them in ``np.argpartition`` order, the same for one empty cluster); the points leave
    their clusters. Nothing moves in a problem whose points all sit on their centres (duplicated points).
    """
    import torch
    rows = ((counts == 0).any(1) & (own.amax(1) > 0)).nonzero().squeeze(1)        # (R,) problems to fix
    if len(rows) == 0:
        return
    empty = counts[rows] == 0                                                      # (R, k)
    order = torch.sort(own[rows], dim=1, descending=True, stable=True).indices     # (R, P)
    far = order.gather(1, (empty.long().cumsum(1) - 1).clamp_min(0))               # (R, k): the r-th empty's point
    r, j = empty.nonzero(as_tuple=True)
    bi, f = rows[r], far[r, j]
    old = labels[bi, f]
    members[bi, old, f] = 0
    members[bi, j, f] = 1
    counts.index_put_((bi, old), torch.full_like(f, -1, dtype=counts.dtype), accumulate=True)
    counts[bi, j] = 1


def _lloyd_step(gram: "torch.Tensor", diag: "torch.Tensor", w: "torch.Tensor", k: int
                ) -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]:
    """One assignment and update step from weights w (B, k, P) -> (labels (B, P), new weights, centre shift (B,))."""
    import torch
    scores = _scores(gram, w)                                                      # (B, P, k)
    labels = scores.min(-1).indices                                                # (B, P), first lowest on ties
    members = (labels.unsqueeze(1) == torch.arange(k, device=w.device).view(1, k, 1)).to(w.dtype)   # (B, k, P)
    counts = members.sum(-1)                                                       # (B, k)
    if bool((counts == 0).any()):
        own = scores.gather(2, labels.unsqueeze(-1)).squeeze(-1) + diag            # (B, P)
        _relocate_empty(members, counts, labels, own)
    new = members / counts.clamp_min(1).unsqueeze(-1)                              # (B, k, P)
    still = counts == 0                                     # (all points coincide) put at the largest cluster
    if bool(still.any()):
        largest = new.gather(1, counts.argmax(1).view(-1, 1, 1).expand(-1, 1, new.shape[-1]))   # (B, 1, P)
        new = torch.where(still.unsqueeze(-1), largest, new)
    delta = new - w                                                                # (B, k, P)
    shift = ((delta @ gram) * delta).sum((1, 2))                                   # (B,) sum_j ||c'_j - c_j||^2
    return labels, new, shift


def _lloyd(gram: "torch.Tensor", diag: "torch.Tensor", w: "torch.Tensor", k: int, max_iter: int, tol: "torch.Tensor"
           ) -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]:
    """Lloyd's iterations from weights w (B, k, P) -> (labels (B, P), weights (B, k, P), inertia (B,)).

    A problem stops when its labels repeat (strict convergence: its labels are final) or its centre shift is
    <= tol (then one more assignment gives the labels), as scikit-learn. The working set is compacted to the
    problems still iterating once half of it has stopped; stopped problems riding along are not written back.
    """
    import torch
    b, p, _ = gram.shape
    dev = gram.device
    strict = torch.zeros(b, dtype=torch.bool, device=dev)
    strict_labels = torch.zeros(b, p, dtype=torch.long, device=dev)
    w_out = w.clone()
    ids = torch.arange(b, device=dev)                         # working set
    live = torch.ones(b, dtype=torch.bool, device=dev)        # ... and which of it still iterates
    g, dg, tl = gram, diag, tol
    old = torch.full((b, p), -1, dtype=torch.long, device=dev)
    for _ in range(max_iter):
        labels, w, shift = _lloyd_step(g, dg, w, k)
        same = ((labels == old).sum(1) == p) & live                                # labels repeated
        done = same | ((shift <= tl) & live)
        old = labels
        w_out[ids[live]] = w[live]
        strict[ids[same]] = True
        strict_labels[ids[same]] = labels[same]
        live = live & ~done
        n_live = int(live.sum())
        if n_live == 0:
            break
        if 2 * n_live <= len(ids):
            ids, g, dg, tl, w, old, live = ids[live], g[live], dg[live], tl[live], w[live], old[live], live[live]
    scores = _scores(gram, w_out)                                                  # (B, P, k) final assignment
    labels = torch.where(strict.unsqueeze(1), strict_labels, scores.min(-1).indices)
    inertia = (scores.gather(2, labels.unsqueeze(-1)).squeeze(-1) + diag).clamp_min(0).sum(1)   # (B,)
    return labels, w_out, inertia


def _same_partition(a: "torch.Tensor", b: "torch.Tensor", k: int) -> "torch.Tensor":
    """(B, P), (B, P) -> (B,): each cluster of a lies inside one cluster of b (scikit-learn's same-clustering test)."""
    import torch
    one = torch.nn.functional.one_hot
    table = one(a, k).transpose(1, 2).float() @ one(b, k).float()                  # (B, k, k) contingency
    return ((table > 0).sum(-1) <= 1).all(1)


def gram_kmeans(gram: "torch.Tensor", k: int, n_features: int, n_init: int = 1, max_iter: int = 300,
                tol: float = 1e-4, seed: int = 0, threads: int = 1
                ) -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]:
    """scikit-learn's KMeans (lloyd, k-means++) on B problems given by their centred Gram matrices, all at once.

    gram (B, P, P) of data centred per problem (``patch_grams``), ``n_features`` = D (the tolerance is relative to
    the mean per-feature variance, trace(G) / (P D)) -> labels (B, P) int64, weights (B, k, P) with centre
    c_j = weights_j @ X, inertia (B,). Same seeds for every problem (``kmeans_draws(seed, ...)``).
    ``threads`` > 1 (CPU): the problems are split into that many contiguous parts, each clustered by a Python
    thread (torch releases the GIL; call it inside ``one_torch_thread``); the problems are independent, so the
    result does not depend on ``threads``.
    """
    import torch
    parts = max(1, min(int(threads), len(gram) // MIN_PROBLEMS_PER_THREAD))
    if parts > 1 and gram.device.type == "cpu":
        bounds = np.linspace(0, len(gram), parts + 1).astype(int)
        one = functools.partial(gram_kmeans, k=k, n_features=n_features, n_init=n_init, max_iter=max_iter,
                                tol=tol, seed=seed)
        with ThreadPoolExecutor(parts) as pool:
            results = list(pool.map(one, [gram[a:b] for a, b in zip(bounds[:-1], bounds[1:])]))
        return tuple(torch.cat(r) for r in zip(*results))
    gram = gram.float()
    p = gram.shape[1]
    if k > p:
        raise ValueError(f"Cannot cluster {p} points into k={k} clusters; choose k <= {p}.")
    if n_init < 1 or max_iter < 1:
        raise ValueError(f"n_init and max_iter must be >= 1. Got n_init={n_init}, max_iter={max_iter} instead.")
    dev = gram.device
    diag = gram.diagonal(dim1=1, dim2=2).contiguous()                              # (B, P) squared norms
    tol_b = tol * diag.sum(1) / (p * n_features)                                   # (B,)
    first, uniforms = kmeans_draws(seed, p, k, n_init)
    uniforms_t = torch.from_numpy(uniforms).to(dev)
    best = None
    for r in range(n_init):
        seeds = gram_kmeans_plusplus(gram, k, int(first[r]), uniforms_t[r])        # (B, k)
        w0 = torch.nn.functional.one_hot(seeds, p).float()                         # (B, k, P)
        labels, w, inertia = _lloyd(gram, diag, w0, k, max_iter, tol_b)
        if best is None:
            best = [labels, w, inertia]
            continue
        better = (inertia < best[2]) & ~_same_partition(labels, best[0], k)        # (B,)
        best = [torch.where(better.view(-1, *[1] * (t.dim() - 1)), t, bt) for t, bt in zip((labels, w, inertia), best)]
    return best[0], best[1], best[2]


def batched_kmeans(x: "torch.Tensor", k: int, n_init: int = 1, max_iter: int = 300, tol: float = 1e-4,
                   seed: int = 0) -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]:
    """scikit-learn's ``KMeans(k, n_init=n_init, random_state=seed)`` on B independent problems at once.

    x (B, P, D) (any float dtype; computed in float32 on x's device) -> labels (B, P) int64, centres (B, k, D),
    inertia (B,). Runs ``gram_kmeans`` on ``patch_grams(x)``; the labels are scikit-learn's (same ids, not only
    the same partition) unless float rounding separates them at a near-tie. Known difference: with two or more
    empty clusters in one Lloyd step scikit-learn hands out the farthest points in ``np.argpartition`` order, this
    in decreasing distance.
    """
    labels, w, inertia = gram_kmeans(patch_grams(x, device=x.device), k, n_features=x.shape[2], n_init=n_init,
                                     max_iter=max_iter, tol=tol, seed=seed)
    centres = w @ x.float()                                                        # (B, k, D): rows of w sum to 1
    return labels, centres, inertia
