"""Embedding metrics at scale: fer_bench.metrics vs scikit-learn brute force vs faiss IndexFlatL2.

The same neighbour searches, side by side in one run, on random clustered embeddings (7 classes):

* retrieval: the test set against itself, K = 32 neighbours without the query (Recall@K, Acc@K);
* kNN classification: the test set against the training set, k = 11 (kNN accuracy);
* NMI (k-means, ours only: the peers have no equivalent in the same call; first size only).

Sizes: N = 50,000 test and 50,000 training rows at D = 128 (``--n``, ``--d``), then the sizes of a
real evaluation, RAF-DB's 3,068 test images against its 12,271 training images, at D = 128, 256
and 512 (``--no-real-sizes`` skips them; being short, they are timed best of 5 x ``--repeats``).

sklearn and faiss searches feed the same few lines of numpy that turn neighbour indices into
Recall@K and kNN accuracy, so the times compare the searches. "product" is the floor under
ours: the float32 matrix products of both searches with ours' engine (torch's oneDNN linear
where fer_bench.metrics uses it, else numpy's BLAS; passes of 256 queries over torch's thread
count, 1,024 gallery rows per product: ``product_floor``), without the selection; its "ours/x" column is ours over
that floor. The neighbour lists are checked: rows whose first neighbour differs must be distance
ties. Targets (issue #23): ours <= faiss and ours < sklearn, at every size.

faiss is a benchmark-only dependency (``pip install 'fer-bench[bench]'`` or ``pip install faiss-cpu``; not an
install requirement of fer-bench): without it the faiss rows are skipped with a message.

    python benchmarks/perf/knn_metrics.py [--n 50000 --d 128 --repeats 1 --also-200k --no-real-sizes]

Measured 2026-11-22 on the 2-core development machine (torch 2.14.1, scikit-learn 1.9.1, faiss-cpu
1.15.1), wall seconds, self-search + kNN, machine otherwise idle, before issue #23 (one float32
``torch.mm`` and ``torch.topk`` per chunk; the product alone was ~65% of its time):
N = 50,000 (best of 2): ours 13.5 + 13.0, sklearn 19.0 + 18.0, faiss 12.5 + 9.7 (ours/faiss 1.20);
N = 200,000 (one run):  ours 170 + 131,   sklearn 233 + 237,   faiss 123 + 146  (ours/faiss 1.12).
Wall times swing by 2-5x when other jobs share the two cores; the CPU-second columns vary less.

After issue #23 (fer_bench/neighbours.py: oneDNN float32 products when they are exact, a tree of maxima per
gallery block instead of topk, query passes on torch's threads), measured 2026-12-04 17:09-17:11 UTC on the same
machine with nothing else running (load average 0.6 before, 1.8 after, from this run), ``--repeats 2`` (best of 2
at N = 50,000, of 10 at the real sizes), torch 2 threads, faiss-cpu 1.15.1, wall seconds; neighbour lists equal
to scikit-learn's and faiss's (0 first-neighbour differences), and bit-identical to the code before:

| problem | ours / faiss | ours / sklearn |
|---|---|---|
| N = 50,000, D = 128 (self-search K = 32 + kNN of 50,000 against 50,000) | 0.73 | 0.38 |
| 3,068 test x 12,271 train, D = 128 | 0.95 | 0.48 |
| 3,068 test x 12,271 train, D = 256 | 0.84 | 0.42 |
| 3,068 test x 12,271 train, D = 512 | 0.75 | 0.38 |

Before (issue #23): ours / faiss 1.32 at N = 50,000 (11.9 s against 9.0 s).

Measured again 2026-12-06 on a 2-core AMD EPYC VM with AVX2 only (Zen 3, 512 KiB L2 per core; nothing else
running, load average 0.8-2.0, the benchmark's own threads), torch 2 threads, faiss-cpu 1.15.1; neighbour lists
equal to both peers' in every run. Before: the code of 12-04 (oneDNN products), 02:47 UTC, ``--repeats 2``;
numpy: numpy's products unless torch has AVX-512 kernels (``neighbours._onednn_screen``), 03:02 UTC,
``--repeats 3``; fan-out 8: also 8 children per node of the tree of maxima instead of 4, 03:56 UTC,
``--repeats 3``:

| problem | ours / faiss before | numpy | fan-out 8 | ours / sklearn, fan-out 8 |
|---|---|---|---|---|
| N = 50,000, D = 128 | 0.84 | 0.86 | 0.86 | 0.47 |
| 3,068 x 12,271, D = 128 | 1.21 | 1.20 | 1.11 | 0.56 |
| 3,068 x 12,271, D = 256 | 1.07 | 1.13 | 1.13 | 0.55 |
| 3,068 x 12,271, D = 512 | 1.23 | 1.11 | 1.10 | 0.53 |

On this VM every float32 product (oneDNN, numpy's OpenBLAS, ``torch.mm``, faiss's OpenBLAS) runs at 77-96
GFLOP/s per core, and ours is 1.10-1.13x faiss at RAF-DB's sizes (0.75-0.95 on 12-04's AVX-512 VM, where oneDNN
ran 1.4-2x the others). faiss's wall time moved by up to 25 % between repeats of one run, more than the
engine change (5-9 % in an interleaved A/B, best of 10 x 2); at these sizes our products alone (the
"product" row) take 75-85 % of faiss's whole search, and the rest of ours (the tree of maxima, the selections,
the exact re-rank of near-ties, the float64 prologue) is a few numpy passes of 5-30 ms each.

Measured again 2026-12-06 04:55-05:10 UTC on a 2-core AMD EPYC VM with AVX-512 (Zen 5, 1 MiB L2 per core;
nothing else running, load average 0.6-1.8, the benchmark's own threads), the same code (commit bf34e9d:
oneDNN's products, as ``_onednn_screen`` picks on AVX-512), torch 2 threads, faiss-cpu 1.15.1; neighbour lists
equal to both peers' in every run:

| problem | ours / faiss, ``--repeats 2`` | ``--repeats 3`` | ours / sklearn, ``--repeats 3`` |
|---|---|---|---|
| N = 50,000, D = 128 | 0.70 | 0.61 | 0.34 |
| 3,068 x 12,271, D = 128 | 0.86 | 0.78 | 0.49 |
| 3,068 x 12,271, D = 256 | 0.76 | 0.77 | 0.43 |
| 3,068 x 12,271, D = 512 | 0.69 | 0.70 | 0.37 |

The same VM with the screen forced onto numpy's products (``_onednn_screen`` patched to False: numpy's OpenBLAS
runs its Haswell AVX2 kernels on this CPU, as faiss's bundled OpenBLAS 0.3.15 does) reproduces the AVX2 VM's
result: ours / faiss 1.10-1.11 at RAF-DB's sizes (D = 128-512, 2 threads, best of 10), so the gap there is the
engine, not the VM. One thread, best of 7 (05:31 UTC, load ~1): at D = 128 faiss 0.139 s, ours 0.151, the
products alone 0.107 (130 GFLOP/s, flat over pass and block shapes of 256-4,096 rows); at D = 512 faiss 0.416,
ours 0.438, products 0.381. Beyond the products faiss spends 32-35 ms (its heap selection inside each block),
ours 44-57 ms: the tree of maxima's passes (its first level reads the scores at 69 GB/s, faster than two or
three pairwise ``np.maximum`` calls), the selections and gathers down the tree, the exact float64 re-rank of
near-ties (10 ms at D = 512) and the float64 prologue (9 ms at D = 512). The 12-22 ms between the two are what a
fused selection (a compiled kernel) or a self-search that computes each pair's product once would remove.
"""
from __future__ import annotations

import argparse
import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
import torch
from sklearn.neighbors import NearestNeighbors
from threadpoolctl import threadpool_limits

from fer_bench import metrics, neighbours

try:
    import faiss
except ImportError:  # faiss-cpu is a benchmark-only peer, not a dependency of fer-bench
    faiss = None
FAISS_MISSING = "faiss not installed: its rows are skipped (pip install faiss-cpu; benchmark only)"

KS = (1, 2, 4, 8, 16, 32)
KNN_K = 11
CLASSES = 7
REAL_TEST, REAL_TRAIN = 3_068, 12_271  # RAF-DB's basic split
REAL_DIMS = (128, 256, 512)


def make_data(n: int, d: int, seed: int, n_train: int | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train (``n_train``, default n) and test (n) sets: 7 Gaussian clusters that overlap
    (Recall@1 ~ 0.8 at D = 128)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CLASSES, d)).astype(np.float32) * 0.35

    def draw(count: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, CLASSES, count)
        return centres[y] + rng.standard_normal((count, d), dtype=np.float32), y

    (train_x, train_y), (test_x, test_y) = draw(n if n_train is None else n_train), draw(n)
    return train_x, train_y, test_x, test_y


def timed(fn: Callable[[], object]) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process, result)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def load() -> str:
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[0]
    except OSError:
        return "?"


# ---- the numpy shared by the peers: neighbour indices -> metrics -----------------------------

def retrieval_from_indices(idx: np.ndarray, y: np.ndarray) -> dict[int, float]:
    same = y[idx] == y[:, None]  # (N, Kmax)
    return {k: float(same[:, :k].any(axis=1).mean()) for k in KS}


def knn_acc_from_indices(idx: np.ndarray, train_y: np.ndarray, test_y: np.ndarray) -> float:
    """Majority vote, ties to the lowest label (fer_bench.metrics.knn_accuracy's default)."""
    nl = train_y[idx]  # (N, k)
    votes = np.zeros((len(nl), CLASSES), dtype=np.int64)
    np.add.at(votes, (np.arange(len(nl))[:, None], nl), 1)
    return float(np.mean(votes.argmax(axis=1) == test_y))


def drop_self(idx: np.ndarray, k: int) -> np.ndarray:
    """(N, k+1) self-search -> (N, k): remove the query's own index, or the last column if absent."""
    n = len(idx)
    is_self = idx == np.arange(n)[:, None]
    is_self[~is_self.any(axis=1), -1] = True
    return idx[~is_self].reshape(n, k)


# ---- the three implementations ---------------------------------------------------------------

def ours_search(train_x, train_y, test_x, test_y, chunk):
    recall, _ = metrics.retrieval_metrics(test_x, test_y, KS, chunk=chunk)
    return recall


def ours_knn(train_x, train_y, test_x, test_y, chunk):
    return metrics.knn_accuracy(train_x, train_y, test_x, test_y, k=KNN_K, chunk=chunk)


def sklearn_search(train_x, train_y, test_x, test_y, chunk):
    nn = NearestNeighbors(n_neighbors=max(KS), algorithm="brute").fit(test_x)
    idx = nn.kneighbors(return_distance=False)  # X=None: each row without itself
    return retrieval_from_indices(idx, test_y), idx


def sklearn_knn(train_x, train_y, test_x, test_y, chunk):
    nn = NearestNeighbors(n_neighbors=KNN_K, algorithm="brute").fit(train_x)
    return knn_acc_from_indices(nn.kneighbors(test_x, return_distance=False), train_y, test_y)


def faiss_search(train_x, train_y, test_x, test_y, chunk):
    index = faiss.IndexFlatL2(test_x.shape[1])
    index.add(test_x)
    _, idx = index.search(test_x, max(KS) + 1)
    idx = drop_self(idx, max(KS))
    return retrieval_from_indices(idx, test_y), idx


def faiss_knn(train_x, train_y, test_x, test_y, chunk):
    index = faiss.IndexFlatL2(train_x.shape[1])
    index.add(train_x)
    _, idx = index.search(test_x, KNN_K)
    return knn_acc_from_indices(idx, train_y, test_y)


def product_floor(train_x, train_y, test_x, test_y, chunk):
    """The float32 matrix products of both searches and nothing else, with ours' product engine on the
    CPU: oneDNN's linear when fer_bench.metrics uses it (``_onednn_screen``; else numpy's BLAS), passes
    of 256 queries over torch.get_num_threads() threads, one core each, 1,024 gallery rows per product
    written into a reused buffer (ours: passes of up to ``_PASS_ROWS`` queries, blocks of about
    ``_SCORE_BLOCK_BYTES`` of scores, and one more dimension for the norms)."""
    threads, rows, width = torch.get_num_threads(), 256, 1024
    onednn = neighbours._onednn_screen()
    buffers = [np.empty((width, rows), dtype=np.float32) for _ in range(threads)]

    def work(w: int, gallery: np.ndarray) -> None:
        torch.get_num_threads()  # torch sizes this thread's OpenMP team on first use; then one
        with threadpool_limits(1, user_api="openmp"):
            for start in range(w * rows, len(test_x), threads * rows):
                queries = test_x[start:start + rows]
                if onednn:
                    weight = torch.ops.mkldnn._reorder_linear_weight(torch.from_numpy(queries), width)
                for lo in range(0, len(gallery), width):
                    block, out = gallery[lo:lo + width], buffers[w][:, :len(queries)]
                    if onednn:
                        product = torch.ops.mkldnn._linear_pointwise(
                            torch.from_numpy(block), weight, None, "none", [], "")
                        np.copyto(out[:len(block)], product.numpy())
                    else:
                        np.matmul(block, queries.T, out=out[:len(block)])

    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(threads) as pool:
        for gallery in (test_x, train_x):
            list(pool.map(work, range(threads), [gallery] * threads))


def first_neighbour_check(x: np.ndarray, ours: np.ndarray, other: np.ndarray) -> tuple[int, int]:
    """(rows whose 1st neighbour differs, of those the ones that are not distance ties)."""
    rows = np.flatnonzero(ours[:, 0] != other[:, 0])
    xd = x.astype(np.float64)
    d_ours = ((xd[rows] - xd[ours[rows, 0]]) ** 2).sum(axis=1)
    d_other = ((xd[rows] - xd[other[rows, 0]]) ** 2).sum(axis=1)
    not_tie = ~np.isclose(d_ours, d_other, rtol=1e-5, atol=0)
    return len(rows), int(not_tie.sum())


def run(n: int, d: int, repeats: int, chunk: int, seed: int, n_train: int | None = None,
        with_nmi: bool = True) -> tuple[bool, dict[str, float]]:
    """One size: prints the table; returns (neighbours agree, {peer: ours / peer wall})."""
    n_train = n if n_train is None else n_train
    train_x, train_y, test_x, test_y = make_data(n, d, seed, n_train)
    data = (train_x, train_y, test_x, test_y, chunk)
    print(f"\nN = {n:,} test + {n_train:,} train, D = {d}, {CLASSES} classes; torch threads "
          f"{torch.get_num_threads()}, faiss {faiss.__version__ if faiss else 'not installed'}; "
          f"best of {repeats}, implementations interleaved; load average {load()}", flush=True)
    impls = {"ours": (ours_search, ours_knn), "sklearn": (sklearn_search, sklearn_knn)}
    if faiss is not None:
        impls["faiss"] = (faiss_search, faiss_knn)
    best = {name: {"search": (math.inf, math.inf), "knn": (math.inf, math.inf)} for name in impls}
    floor = (math.inf, math.inf)
    results: dict[str, dict[str, object]] = {}
    for rep in range(repeats):
        for name, (search, knn) in impls.items():
            for task, fn in (("search", search), ("knn", knn)):
                wall, cpu, out = timed(lambda: fn(*data))
                best[name][task] = (min(best[name][task][0], wall), min(best[name][task][1], cpu))
                results.setdefault(name, {})[task] = out
            if repeats <= 2 or rep == repeats - 1:
                print(f"  [{rep + 1}/{repeats}] {name:8s} self-search {best[name]['search'][0]:7.2f} s, "
                      f"kNN {best[name]['knn'][0]:7.2f} s (best wall so far; load {load()})", flush=True)
        wall, cpu, _ = timed(lambda: product_floor(*data))
        floor = (min(floor[0], wall), min(floor[1], cpu))
    if with_nmi:
        nmi_wall, nmi_cpu, value_nmi = timed(lambda: metrics.nmi(test_x, test_y, seed=0))

    # Agreement: our neighbour lists against each peer's.
    ours_idx = metrics.knn_indices(test_x, test_x, max(KS), exclude_self=True, chunk=chunk)
    ok = True
    ours_recall = results["ours"]["search"]
    print("\n  agreement (ours vs peer)   rows 1st-NN differ   of them not ties   "
          "max |dRecall@K|   |d knn_acc|")
    for name in impls:
        if name == "ours":
            continue
        recall, idx = results[name]["search"]
        differ, not_tie = first_neighbour_check(test_x, ours_idx, idx)
        d_recall = max(abs(recall[k] - ours_recall[k]) for k in KS)
        d_knn = abs(results[name]["knn"] - results["ours"]["knn"])
        ok &= not_tie == 0 and abs(recall[1] - ours_recall[1]) <= differ / n
        print(f"  {name:26s} {differ:18d} {not_tie:18d} {d_recall:17.2e} {d_knn:13.2e}")

    totals = {name: tuple(best[name]["search"][i] + best[name]["knn"][i] for i in (0, 1))
              for name in impls}
    print(f"\n  {'':10s} {'wall seconds':^35s}   {'CPU seconds (all threads)':^35s}")
    print(f"  {'':10s} {'search':>8s} {'kNN':>8s} {'total':>8s} {'ours/x':>8s}   "
          f"{'search':>8s} {'kNN':>8s} {'total':>8s} {'ours/x':>8s}")
    for name in impls:
        cells = []
        for i in (0, 1):
            ratio = "" if name == "ours" else f"{totals['ours'][i] / totals[name][i]:8.2f}"
            cells.append(f"{best[name]['search'][i]:8.2f} {best[name]['knn'][i]:8.2f} "
                         f"{totals[name][i]:8.2f} {ratio:>8s}")
        print(f"  {name:10s} " + "   ".join(cells))
    print(f"  {'product':10s} {'':17s} {floor[0]:8.2f} {totals['ours'][0] / floor[0]:8.2f}   "
          f"{'':17s} {floor[1]:8.2f} {totals['ours'][1] / floor[1]:8.2f}   "
          f"(the float32 products alone)")
    if with_nmi:
        print(f"  {'ours NMI':10s} {nmi_wall:8.2f} s wall, {nmi_cpu:.2f} s CPU (k-means, 10 restarts; "
              f"NMI = {value_nmi:.4f})")
    print(f"\n  ours: Recall@1 {ours_recall[1]:.4f}, Recall@32 {ours_recall[32]:.4f}, "
          f"kNN acc {results['ours']['knn']:.4f}; load average now {load()}")
    verdicts = [f"neighbours agree: {ok}",
                f"ours < sklearn (wall): {totals['ours'][0] < totals['sklearn'][0]}"]
    if "faiss" in impls:
        verdicts.append(f"ours <= faiss (wall): {totals['ours'][0] <= totals['faiss'][0]}")
    else:
        verdicts.append(FAISS_MISSING)
    print("  " + "; ".join(verdicts), flush=True)
    return ok, {name: totals["ours"][0] / totals[name][0] for name in impls if name != "ours"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000, help="test rows (and train rows)")
    parser.add_argument("--d", type=int, default=128, help="embedding dimension")
    parser.add_argument("--repeats", type=int, default=1, help="best of this many runs per timing")
    parser.add_argument("--chunk", type=int, default=4096, help="query rows per matrix product (ours)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--also-200k", action="store_true", help="then repeat with N = 200,000")
    parser.add_argument("--no-real-sizes", action="store_true",
                        help=f"skip the {REAL_TEST:,} x {REAL_TRAIN:,} runs at D = {REAL_DIMS}")
    args = parser.parse_args()
    if faiss is None:
        print(FAISS_MISSING)
    cases = [(f"N = {args.n:,}, D = {args.d}", dict(n=args.n, d=args.d, repeats=args.repeats))]
    if args.also_200k and args.n != 200_000:
        cases.append((f"N = 200,000, D = {args.d}", dict(n=200_000, d=args.d, repeats=args.repeats)))
    if not args.no_real_sizes:
        cases += [(f"{REAL_TEST:,} x {REAL_TRAIN:,}, D = {d}",
                   dict(n=REAL_TEST, n_train=REAL_TRAIN, d=d, repeats=5 * args.repeats,
                        with_nmi=False)) for d in REAL_DIMS]
    summary = []
    for label, case in cases:
        ok, ratios = run(chunk=args.chunk, seed=args.seed, **case)
        summary.append((label, ok, ratios))
    print(f"\nsummary (wall, ours / peer; load average now {load()}):")
    for label, ok, ratios in summary:
        cells = ", ".join(f"ours/{name} {ratio:.2f}" for name, ratio in ratios.items())
        print(f"  {label:28s} {cells}; neighbours agree: {ok}")
    if faiss is None:
        print(f"  {FAISS_MISSING}")
    raise SystemExit(0 if all(ok for _, ok, _ in summary) else 1)


if __name__ == "__main__":
    main()
