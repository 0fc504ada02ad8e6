"""Exact nearest-neighbour search, the engine behind :func:`fer_bench.metrics.knn_indices`.

Neighbours are ordered by the float64 squared distance ``sum_j (q_j - g_j)^2``, ties broken by the smaller
gallery index, which is the order of a stable argsort of the full float64 distance matrix. They are found by a
screen (blocked matrix products, in float32, or float64 for large k, and a selection of the best scores; no
N x N matrix is ever held) whose rounding error is bounded, then exact float64 distances where the screen's
scores are too close to tell; rows the bound cannot settle are redone exactly. Results do not depend on the
chunk size, device, thread count or the order the selection returns ties in.

Not scikit-learn's NearestNeighbors(algorithm="brute"), deliberately: it finds the same neighbours on data
without ties, but ranks by the dot-product form of the distance in float64 (inexact for data far from the
origin), documents no order among ties and is slower here (``benchmarks/perf/knn_metrics.py``, which also
compares faiss's IndexFlatL2).
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, NamedTuple

import numpy as np
import torch

from fer_bench.threads import threadpools


_FLOAT32_MAX = float(np.finfo(np.float32).max)
_BLOCK_ELEMENTS = 1 << 18  # float64 elements per block of exact distances (2 MiB: in cache)
_EXACT_COLUMNS = 4096  # gallery columns per step of the per-row exact path
_WIDE_SCREEN = 32  # float64 screen when k (+ margin) exceeds 1/32 of the gallery
_FANOUT = 8  # children per node of the CPU screen's tree of maxima (a power of two; 8 ran 3-8 % faster than 4
#               at RAF-DB's sizes and the same at N = 50,000 on a 2-core AVX2 VM, 2026-12-06: fewer levels)
_TOP = 64  # nodes at the top of that tree, about (the height is ceil(log_8(N_gallery / 64)))
_PASS_ROWS = 512  # query rows per pass of the CPU screen (fewer calls; 128-768 measured)
_SCORE_BLOCK_BYTES = 1 << 20  # scores of a pass against one gallery block (1 MiB: in L2)


def _sq_distances(queries: np.ndarray, gallery: np.ndarray, rows: np.ndarray,
                  cols: np.ndarray) -> np.ndarray:
    """(P,) float64 sum_j (q_j - g_j)^2 of the pairs (query ``rows[p]``, gallery ``cols[p]``).

    The same arithmetic, in the same order, as ``((q[:, None, :] - g[None, :, :]) ** 2).sum(2)`` on
    float64 arrays: these are the distances that define the neighbour order.
    """
    out = np.empty(len(rows), dtype=np.float64)
    step = max(1, _BLOCK_ELEMENTS // queries.shape[1])
    for s in range(0, len(rows), step):
        diff = queries[rows[s:s + step]].astype(np.float64)  # (b, D)
        diff -= gallery[cols[s:s + step]]
        out[s:s + step] = np.square(diff, out=diff).sum(axis=1)
    return out


def _unit_roundoff() -> float:
    """Unit roundoff of a float32 matrix product under torch's current precision settings."""
    settings = {torch.get_float32_matmul_precision()}
    for backend in (torch.backends, getattr(torch.backends.mkldnn, "matmul", None),
                    getattr(torch.backends.cuda, "matmul", None)):
        settings.add(getattr(backend, "fp32_precision", "none"))
    if settings & {"medium", "bf16"}:
        return 2.0 ** -8  # bfloat16 products
    if settings & {"high", "tf32"}:
        return 2.0 ** -11  # TensorFloat-32 products
    return 2.0 ** -24


def _exact_row(queries: np.ndarray, gallery: np.ndarray, row: int, cols: np.ndarray,
               sims: np.ndarray, k: int, threshold: Callable[[float], float]) -> np.ndarray:
    """(k,) exact (distance, index) order of query ``row`` among gallery ``cols`` (ascending).

    Columns go in ascending order, a block at a time; a column is skipped once its screen score
    ``sims[col]`` is below ``threshold(d_k)`` of the current k-th distance, and the walk stops
    when the k-th distance is 0 (no later, larger index can enter).
    """
    best_d = np.empty(0, dtype=np.float64)
    best_i = np.empty(0, dtype=np.int64)
    for start in range(0, len(cols), max(k, _EXACT_COLUMNS)):
        block = cols[start:start + max(k, _EXACT_COLUMNS)]
        if len(best_i) == k:
            if best_d[-1] == 0:
                break
            block = block[sims[block] >= threshold(best_d[-1])]
        d = _sq_distances(queries, gallery, np.full(len(block), row), block)
        best_d, best_i = np.concatenate([best_d, d]), np.concatenate([best_i, block])
        order = np.lexsort((best_i, best_d))[:k]  # by distance, then index
        best_d, best_i = best_d[order], best_i[order]
    return best_i


@functools.lru_cache(maxsize=1)
def _onednn_linear() -> bool:
    """Whether the CPU screen multiplies with torch's oneDNN linear (float32) instead of numpy.

    On the 2-core AMD development machine oneDNN's AVX-512 kernels ran these products at 160-235
    GFLOPS per core against 115-120 for numpy's OpenBLAS (AVX2 kernels there) and 70-95 for
    ``torch.mm`` (MKL). The ops are those torch's own compiler calls (``torch.ops.mkldnn``, not a
    documented API), so they are used only if present, if no environment variable asks oneDNN for
    reduced-precision float32 maths, and if they multiply 16-bit significands exactly (inputs
    rounded to bfloat16 or TF32 would not); the screen's error bound also needs torch's float32
    matmul precision at its default (``_unit_roundoff``), checked at every search. Otherwise
    numpy's product is used; the neighbours are the same either way.
    """
    if not torch.backends.mkldnn.is_available() or any(
            os.environ.get(name, "").lower() not in ("", "strict")
            for name in ("ONEDNN_DEFAULT_FPMATH_MODE", "DNNL_DEFAULT_FPMATH_MODE")):
        return False
    try:
        x = torch.full((1024, 129), 1 + 2.0 ** -15)  # a block of 1,024 gallery items
        weight = torch.ops.mkldnn._reorder_linear_weight(torch.ones(256, 129), 1024)  # 256 queries
        y = torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")
    except (AttributeError, RuntimeError):
        return False
    return y.shape == (1024, 256) and bool((y == 129 * (1 + 2.0 ** -15)).all())  # exact in float32


def _onednn_screen() -> bool:
    """Whether the CPU screen uses oneDNN's products: usable and exact (``_onednn_linear``), and faster.

    Faster where torch runs AVX-512 kernels: there oneDNN's products ran 1.4-2x numpy's (see
    ``_onednn_linear``). With AVX2 only (a 2-core AMD EPYC VM, 2026-12-06) oneDNN, numpy's OpenBLAS and
    ``torch.mm`` all ran these products at 91-96 GFLOPS per core, and oneDNN's result must then be
    copied into the score block: the searches of ``benchmarks/perf/knn_metrics.py`` at RAF-DB's sizes
    (3,068 x 12,271, D = 128-512, 2 threads) took 5-9 % longer with it, interleaved with numpy's, best
    of 10. On a Zen 5 VM with AVX-512 (2026-12-06) the rule held again: those searches took 0.69-0.86x
    faiss's time with oneDNN and 1.10-1.11x with numpy's products (``knn_metrics.py``'s docstring). The
    neighbours are the same either way.
    """
    return torch.backends.cpu.get_cpu_capability() == "AVX512" and _onednn_linear()


class _Scratch(NamedTuple):
    """One thread's buffers for ``_cpu_candidates`` (``_scratch``): the scores of a pass of ``rows``
    queries and a tree of their maxima, block by block.

    Each gallery block of ``width`` items has ``nodes[l]`` nodes at level l of the tree (level 0:
    the items); ``levels[l][b nodes[l] + j, r]`` is the value of node j of block b for query r
    (``levels[0]`` is the scores). Node j of level l + 1 has the children j + t nodes[l + 1]
    (t < _FANOUT) of level l, _FANOUT contiguous slabs apart, so a block's maxima are one
    vectorised reduction per level. ``children[l][p]`` views the _FANOUT children of the level
    l + 1 node whose first child is at flat position p of ``levels[l]``.
    """
    nodes: list[int]
    width: int
    n_blocks: int
    levels: list[np.ndarray]
    children: list[np.ndarray]


def _scratch(rows: int, n_gallery: int, dtype: np.dtype, k1: int) -> _Scratch:
    """Buffers for passes of ``rows`` queries: blocks of about ``_SCORE_BLOCK_BYTES`` of scores, a
    tree with about ``_TOP`` nodes per row at the top, every node count a power of two; no tree
    (a selection among all the scores of a row) where the tree's selections, about _TOP +
    height _FANOUT k1 values per row, would read more than half a row (large k1)."""
    item = np.dtype(dtype).itemsize
    height = max(1, math.ceil(math.log(max(n_gallery / _TOP, 1.0), _FANOUT)))
    if _TOP + height * _FANOUT * k1 > n_gallery // 2:
        height = 0
    top = max(1, min(_SCORE_BLOCK_BYTES // (item * rows), n_gallery) // _FANOUT ** height)
    top = 1 << (top.bit_length() - 1)  # top nodes per block
    nodes = [top * _FANOUT ** (height - level) for level in range(height + 1)]
    n_blocks = -(-n_gallery // nodes[0])
    levels = [np.empty((n_blocks * size, rows), dtype=dtype) for size in nodes]
    levels[0][n_gallery:] = -np.inf  # past the gallery: never written
    children = [np.lib.stride_tricks.as_strided(
        x, shape=(x.size - (_FANOUT - 1) * stride * rows, _FANOUT),
        strides=(item, stride * rows * item), writeable=False)
        for x, stride in zip(levels, nodes[1:])]
    return _Scratch(nodes, nodes[0], n_blocks, levels, children)


def _largest(values: np.ndarray, k: int) -> np.ndarray:
    """(m, min(k, n)) column indices of the k largest values of each row of (m, n) ``values``, in no
    order, ties either way.

    ``np.partition`` (values only: about half the time of ``np.argpartition``) gives each row's
    k-th largest value; the columns at or above it are the k, unless the row has ties there.
    """
    m, n = values.shape
    if n <= k:
        return np.broadcast_to(np.arange(n), (m, n))
    kth = np.partition(values, n - k, axis=1)[:, n - k]  # (m,)
    above = values >= kth[:, None]  # (m, n) at least k per row
    plain = np.count_nonzero(above, axis=1) == k
    if plain.all():
        return (np.flatnonzero(above) % n).reshape(m, k)
    out = np.empty((m, k), dtype=np.int64)
    out[plain] = (np.flatnonzero(above[plain]) % n).reshape(-1, k)
    out[~plain] = np.argpartition(values[~plain], n - k, axis=1)[:, n - k:]
    return out


def _cpu_candidates(q_aug: np.ndarray, g_aug: np.ndarray, start: int, stop: int, k1: int,
                    exclude_self: bool, s: _Scratch, onednn: bool = False
                    ) -> tuple[np.ndarray, np.ndarray]:
    """((m, k1) gallery indices, (m, k1) scores) of the k1 best scores of queries start:stop,
    best first, ties either way. The products: oneDNN's if ``onednn`` (``_onednn_screen``), else
    numpy's.

    Every score is read once, while its block is in cache, by a maximum over its node of
    ``_FANOUT`` gallery items, and so on up a tree of maxima to about ``_TOP`` nodes per row.
    Then down the tree: the k1 nodes with the largest maxima hold k1 children (those attaining
    the maxima) at least as high as any child of any other node, so k1 best children are among
    their k1 _FANOUT children, and so on down to the items. Per row that is a selection of k1
    among about _TOP values, then among k1 _FANOUT per level, where ``torch.topk`` over the row
    cost about 1 ns per score plus a few microseconds per row on the CPU (half the product's time
    at D = 128). For a large k1 (``_scratch``) there is no tree: one selection among all of a
    row's scores.
    """
    m, n_gallery, rows = stop - start, len(g_aug), s.levels[0].shape[1]
    width = s.width
    if onednn:  # the queries as oneDNN's weight, laid out once per pass
        weight = torch.ops.mkldnn._reorder_linear_weight(torch.from_numpy(q_aug[start:stop]), width)
    for b in range(s.n_blocks):
        lo, hi = b * width, min((b + 1) * width, n_gallery)
        block = s.levels[0][lo:lo + width, :m]  # (width, m)
        if onednn:
            product = torch.ops.mkldnn._linear_pointwise(torch.from_numpy(g_aug[lo:hi]), weight,
                                                         None, "none", [], "")  # (hi-lo, m)
            np.copyto(block[:hi - lo], product.numpy())
        else:
            np.matmul(g_aug[lo:hi], q_aug[start:stop].T, out=block[:hi - lo])
        if exclude_self:
            own = np.arange(max(lo, start), min(hi, stop))
            block[own - lo, own - start] = -np.inf
        if len(s.nodes) > 1:
            size = s.nodes[1]
            np.maximum.reduce(block.reshape(_FANOUT, size, m), axis=0,
                              out=s.levels[1][b * size:(b + 1) * size, :m])
    for below, above, size in zip(s.levels[1:], s.levels[2:], s.nodes[2:]):  # all blocks at once
        np.maximum.reduce(below[:, :m].reshape(s.n_blocks, _FANOUT, size, m), axis=1,
                          out=above[:, :m].reshape(s.n_blocks, size, m))
    r = np.arange(m)[:, None]  # (m, 1)
    top = np.ascontiguousarray(s.levels[-1][:, :m].T)  # (m, G) the top nodes (or the items)
    node = _largest(top, k1)  # (m, k)
    score = np.take_along_axis(top, node, axis=1)
    spread = np.arange(_FANOUT)
    for level in range(len(s.nodes) - 2, -1, -1):  # pick k1 of the children of k1 nodes
        shift = s.nodes[level + 1].bit_length() - 1  # log2 of the nodes per block
        first = node + ((node >> shift) << shift) * (_FANOUT - 1)  # (m, k) first child, at ``level``
        value = s.children[level][first * rows + r].reshape(m, -1)  # (m, k FANOUT)
        pick = _largest(value, k1)
        node = np.take_along_axis((first[:, :, None] + (spread << shift)).reshape(m, -1), pick,
                                  axis=1)
        score = np.take_along_axis(value, pick, axis=1)  # (m, k1)
    order = np.argsort(score, axis=1)[:, ::-1]  # best first
    return np.take_along_axis(node, order, axis=1), np.take_along_axis(score, order, axis=1)


def _cpu_passes(q_aug: np.ndarray, g_aug: np.ndarray, k1: int, exclude_self: bool, chunk: int,
                rank: Callable[[int, np.ndarray, np.ndarray], np.ndarray],
                pool: ThreadPoolExecutor | None, threads: int) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (start, (m, k) ``rank`` of the candidates) per chunk of queries, on the CPU.

    A chunk is cut into passes of at most ``_PASS_ROWS`` queries, spread over the ``threads``
    threads of ``pool`` (None: this thread), each pass on one core: one BLAS thread (numpy) or one
    OpenMP thread (oneDNN; a per-thread setting). numpy and torch release the GIL in the products
    and selections. Measured on the 2-core development machine: passes in parallel kept both cores
    busy through the selections, which threads inside each product do not.
    """
    n_queries = len(q_aug)
    rows = max(1, min(_PASS_ROWS, chunk // threads, -(-n_queries // threads)))  # O(chunk N) memory
    onednn = q_aug.dtype == np.float32 and _unit_roundoff() == 2.0 ** -24 and _onednn_screen()
    scratch: list[_Scratch | None] = [None] * threads

    def work(w: int, passes: list[tuple[int, int]]) -> list[np.ndarray]:
        torch.get_num_threads()  # torch sizes this thread's OpenMP team on first use; then one
        with threadpools().limit(limits=1, user_api="openmp"):
            if scratch[w] is None:
                scratch[w] = _scratch(rows, len(g_aug), q_aug.dtype, k1)
            return [rank(a, *_cpu_candidates(q_aug, g_aug, a, b, k1, exclude_self, scratch[w],
                                             onednn)) for a, b in passes]

    for start in range(0, n_queries, chunk):
        stop = min(start + chunk, n_queries)
        passes = [(a, min(a + rows, stop)) for a in range(start, stop, rows)]
        shares = [passes[w::threads] for w in range(threads)]  # w's passes
        with threadpools().limit(limits=1, user_api="blas"):
            done = list(pool.map(work, range(threads), shares)) if pool else [work(0, passes)]
        parts: list[np.ndarray] = [np.empty(0)] * len(passes)
        for w, results in enumerate(done):
            parts[w::threads] = results
        yield start, np.concatenate(parts)


def _torch_candidates(q_aug: np.ndarray, g_aug: np.ndarray, k1: int, exclude_self: bool,
                      chunk: int, device: torch.device
                      ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield (start, (m, k1) gallery indices, (m, k1) scores) of the k1 best scores, best first,
    per chunk of queries: one ``torch.mm`` and ``torch.topk`` per chunk on ``device``."""
    q_dev = torch.from_numpy(q_aug).to(device)  # (Nq, D+1)
    g_dev = torch.from_numpy(g_aug).to(device)  # (Ng, D+1)
    buffer = torch.empty((min(chunk, len(q_aug)), len(g_aug)), dtype=q_dev.dtype, device=device)
    for start in range(0, len(q_aug), chunk):
        stop = min(start + chunk, len(q_aug))
        sim = buffer[:stop - start]  # (m, Ng)
        torch.mm(q_dev[start:stop], g_dev.t(), out=sim)
        if exclude_self:
            sim.diagonal(offset=start).fill_(-math.inf)
        cand_sim, cand_idx = torch.topk(sim, k1, dim=1, sorted=True)  # (m, k1), best score first
        yield start, cand_idx.cpu().numpy(), cand_sim.cpu().numpy()


@torch.no_grad()
def iter_knn(queries: np.ndarray, gallery: np.ndarray, k: int, exclude_self: bool, chunk: int,
              device: str | torch.device) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (start, (m, k) int64 gallery indices) for consecutive blocks of query rows.

    The order is exact: by the float64 distance ``sum_j (q_j - g_j)^2`` (``_sq_distances``), then
    by index. How it gets there:

    1. Screen. Both sets are centred on the gallery mean and scaled by a power of two in float64
       (neither changes any distance's rank), then cast to the screen's precision: float32, or
       float64 when k is large (more than 1/32 of the gallery: exact distances for many
       candidates would then cost more than the float64 product). The score of gallery item g for
       query q is s = q.g - ||g||^2 / 2 = (||q||^2 - d) / 2, from one matrix product of [q, -1/2]
       with [g, ||g||^2]. Its computed value is within E(q) = gamma_{D+3} (||q|| G + G^2 / 2) +
       (tiny rounding and underflow terms) of the exact one, G the largest gallery norm, gamma_m
       = m u / (1 - m u) and u the unit roundoff of the product: in any summation order, with
       or without fused multiply-adds, each of the D + 1 terms of the dot product picks up at
       most D + 1 roundings, and a term q_j g_j two more from rounding q_j and g_j to the
       screen's precision (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed.,
       section 3.1); sum_j |q_j g_j| <= ||q|| G. (Before issue #23 the bound was
       2 (D + 3) u (||q|| G + G^2), 2 to 2.7 times as wide.) The k + margin best scores of each
       row are its candidates (``_cpu_candidates``, ``_torch_candidates`` on other devices).
    2. Order. Candidates whose scores differ by more than 2 E are in the exact order already;
       runs of closer scores are groups, sorted by exact float64 distance, then index.
    3. Check. Every gallery item outside the candidates scores at most the last candidate. If the
       k-th candidate's group ends before the last candidate, every outside item is strictly
       farther than the k-th (no tie either): the row is exact. Otherwise (a tie at the k-th
       place, or distances closer together than E there) the row is redone over every item
       whose score (recomputed, within E as well) could reach the k-th distance
       (``_exact_row``); that costs O(N_gallery D) for the row.
    """
    n_gallery, dim = gallery.shape
    available = n_gallery - int(exclude_self)
    dev = torch.device(device)
    k1 = min(available, k + max(8, k // 4))  # candidates per row
    wide = k1 * _WIDE_SCREEN > n_gallery  # float64 screen
    screen = np.float64 if wide else np.float32
    chunk = max(1, chunk // 2) if wide else chunk  # the same memory per chunk
    threads = max(1, min(torch.get_num_threads(), len(queries))) if dev.type == "cpu" else 1
    # The CPU path's threads: the prologue's passes over the rows, then the screen's passes.
    with ThreadPoolExecutor(threads) if threads > 1 else contextlib.nullcontext() as pool:

        def in_parts(n: int, fn: Callable[[int, int], object]) -> list:
            """fn(lo, hi) over ``threads`` consecutive ranges of range(n), in parallel."""
            bounds = [n * i // threads for i in range(threads + 1)]
            ranges = [(lo, hi) for lo, hi in zip(bounds, bounds[1:]) if hi > lo]
            return list(pool.map(fn, *zip(*ranges))) if pool else [fn(lo, hi) for lo, hi in ranges]

        # Any centre keeps the ranks; a mean keeps the values small: that of <= 4,096 gallery rows.
        centre = gallery[::max(1, len(gallery) // 4096)].mean(axis=0, dtype=np.float64)  # (D,)
        # The largest |x - centre| of either set is at a column's maximum or minimum.
        peak = max(max(float(np.max(top - centre)), float(np.max(centre - bottom)))
                   for x in ((gallery,) if queries is gallery else (gallery, queries))
                   for top, bottom in in_parts(len(x), lambda lo, hi, x=x: (x[lo:hi].max(axis=0),
                                                                             x[lo:hi].min(axis=0))))
        exponent = max(int(np.frexp(peak)[1]), -1000) if peak > 0 else 0
        scale = 2.0 ** -exponent  # a power of two (|exponent| <= 1000): x scale = ldexp(x, -exponent)

        def augment(x: np.ndarray, last: float | None) -> tuple[np.ndarray, np.ndarray]:
            """([(x - centre) 2^-exponent, ||.||^2 or ``last``] in the screen dtype, float64 ||.||^2),
            a block of rows at a time (float64 temporaries stay in cache)."""
            aug = np.empty((len(x), dim + 1), dtype=screen)
            sq = np.empty(len(x), dtype=np.float64)

            def fill(lo: int, hi: int) -> None:
                for s in range(lo, hi, max(1, _BLOCK_ELEMENTS // dim)):
                    e = min(hi, s + max(1, _BLOCK_ELEMENTS // dim))
                    c = x[s:e].astype(np.float64)  # (b, D)
                    c -= centre
                    c *= scale  # |values| <= 1 now: no overflow in float32
                    sq[s:e] = np.einsum("ij,ij->i", c, c)
                    aug[s:e, :dim] = c

            in_parts(len(x), fill)
            aug[:, dim] = sq if last is None else last
            return aug, sq

        g_aug, g_sq = augment(gallery, None)  # (Ng, D+1) [g, ||g||^2]
        if queries is gallery:
            q_aug, q_sq = g_aug.copy(), g_sq  # (Nq, D+1) [q, -1/2]
            q_aug[:, dim] = -0.5
        else:
            q_aug, q_sq = augment(queries, -0.5)
        g_max = float(np.sqrt(g_sq.max()))
        q_norm = np.sqrt(q_sq)  # (Nq,)
        # numpy's float32 products round at 2^-24, and so do oneDNN's when used (``_cpu_passes``);
        # torch's on other devices may use TF32 or bfloat16 when told to.
        unit = 2.0 ** -53 if wide else 2.0 ** -24 if dev.type == "cpu" else _unit_roundoff()
        gamma = (dim + 3) * unit / (1 - (dim + 3) * unit) if (dim + 3) * unit < 1 else math.inf
        err = (gamma * (q_norm * g_max + g_max ** 2 / 2)  # (Nq,) the product
               + (dim + 4) * (2.0 ** -1060 if wide else 2.0 ** -140)  # its underflow
               + 8 * (dim + 2) * 2.0 ** -53 * (q_sq + 2 * q_norm * g_max + g_max ** 2)  # float64 rounding
               + float(np.ldexp(dim + 1.0, -1074 - 2 * exponent)))  # float64 underflow

        def threshold(row: int, d_k: float) -> np.ndarray:
            """Lowest screen score (screen dtype) an item with exact distance <= d_k can have."""
            value = (q_sq[row] - np.ldexp(d_k, -2 * exponent)) / 2 - err[row]
            bounded = screen(np.clip(value, -_FLOAT32_MAX / 2, _FLOAT32_MAX / 2))  # |scores| <= 2 D
            return bounded if bounded <= value else np.nextafter(bounded, screen(-np.inf))

        def rank(start: int, cand: np.ndarray, score: np.ndarray) -> np.ndarray:
            """Steps 2 and 3: (m, k1) candidates, best score first -> (m, k) exact neighbours."""
            rows = np.arange(start, start + len(cand))
            score = score.astype(np.float64, copy=False)  # (m, k1)
            apart = score[:, :-1] - score[:, 1:] > 2 * err[rows, None]  # (m, k1-1) order certain
            group = np.zeros(score.shape, dtype=np.int64)  # (m, k1), nondecreasing along a row
            np.cumsum(apart, axis=1, out=group[:, 1:])
            kth_group = group[:, k - 1]  # (m,)
            grouped = np.zeros(score.shape, dtype=bool)  # (m, k1) in a group of two or more
            grouped[:, 1:] = ~apart
            grouped[:, :-1] |= ~apart
            grouped &= group <= kth_group[:, None]  # only the groups up to the k-th matter
            # A group is a run of columns, so sorting its members by (row, group, distance, index)
            # and writing them back in row-major order sorts each run in place.
            r, c = np.nonzero(grouped)  # row-major
            members = cand[r, c]
            dist = _sq_distances(queries, gallery, rows[r], members)
            order = np.lexsort((members, dist, group[r, c], r))
            cand = cand.copy()
            cand[r, c] = members[order]
            exact = np.zeros(score.shape)  # (m, k1) exact distances where they were needed
            exact[r, c] = dist[order]
            idx = cand[:, :k]
            if k1 < available:
                # Settled unless the k-th candidate's group reaches the last candidate.
                for i in np.flatnonzero(group[:, -1] == kth_group):
                    row = int(rows[i])
                    sims = g_aug @ q_aug[row]  # (Ng,) this row's scores again
                    cols = np.flatnonzero(sims >= threshold(row, exact[i, k - 1]))
                    if exclude_self:
                        cols = cols[cols != row]
                    idx[i] = _exact_row(queries, gallery, row, cols, sims, k,
                                        lambda d, r=row: threshold(r, d))
            return idx

        if dev.type == "cpu":
            yield from _cpu_passes(q_aug, g_aug, k1, exclude_self, chunk, rank, pool, threads)
        else:
            for start, cand, score in _torch_candidates(q_aug, g_aug, k1, exclude_self, chunk, dev):
                yield start, rank(start, cand, score)
