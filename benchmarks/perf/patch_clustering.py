"""Cost of per-image patch clustering (seed-004 study): scikit-learn per image vs a process pool vs the
batched torch k-means, side by side, with the speed-up ratios and the torch/scikit-learn agreement.

The study timed "5,000 embeddings" (5,000 images x 36 patches of 2048-d ResNet-50 features):
KMeans 21 s, Agglomerative 14 s, Spectral 119 s (Colab). Here the same per-image problems (36 x D) are
clustered by ``fer_bench.clustering.cluster_patches`` with each backend:

* sklearn: one scikit-learn / hdbscan call per image in this process, with torch's OpenMP at 1 thread
  (at 2, which reaches scikit-learn's OpenMP in this process, KMeans ran up to 10x slower on a busy machine);
* pool: the same calls over ``--workers`` spawned processes (one thread each);
* torch (kmeans only): ``gram_kmeans`` on all images at once on ``--device``: one X X^T per image (float16
  memmap read and converted ``--chunk`` images at a time, centred, NumPy/OpenBLAS products over ``--threads``
  threads), then scikit-learn's k-means++ (its own random draws) and Lloyd steps on the 36 x 36 Gram matrices.

Every backend is timed warm (a first call on 4 images, untimed, pays imports and allocations); for k-means
the in-process sklearn and torch runs alternate ``--repeats`` times and the best of each is reported, so
that both see the same load. The summary under the table prints the torch / sklearn speed ratio (target:
>= 20x), the split of the torch time (Gram products vs the rest) and, for the other methods, their
per-image cost against the batched k-means.

Data: non-negative, ReLU-like features shaped like averaged ResNet-50 outputs: per image, 36 patches
drawn around 4 random prototypes (|N(mu, 1)| with mu ~ |N(0, 2)|), float16 memmap as in the cache.
On a busy machine ``--images`` can be below 5,000: the table then gives the measured seconds and the
time scaled linearly to 5,000 images (the problems are independent, so the cost is linear in N).
Agreement, torch against scikit-learn k-means with the same ``n_init`` and seed, per image: identical
labels (ids too), identical partitions (adjusted Rand index 1), mean ARI, and the k-means objective of
both partitions (sum of squared distances to the cluster means, float64): mean ratio and largest deviation.

    python benchmarks/perf/patch_clustering.py [--images 200 --dim 2048 --k 4 --workers 2]
    python benchmarks/perf/patch_clustering.py --images 5000 --methods kmeans    # the study's size
    python benchmarks/perf/patch_clustering.py --methods kmeans --threads 2      # torch on both cores
    python benchmarks/perf/patch_clustering.py --plot      # accuracy vs cost from results/paca/run

Measured 2026-12-04 16:48-16:51 UTC on the 2-core development VM (nothing else running; load average 0.9-2.5,
most of it these runs), best of 3, every run 100 % identical labels and objective ratio 1.000000:

| images | torch threads | sklearn ms/image | batched ms/image (Gram products) | batched / sklearn speed |
|---|---|---|---|---|
| 200 | 2 | 1.132 | 0.099 (0.082) | 11.5x |
| 5,000 | 1 | 1.098 | 0.083 (0.071) | 13.3x |
| 5,000 | 2 | 1.122 | 0.067 (0.052) | 16.7x |

Before (issue #23, the old batched torch k-means on the raw 2048-d points, and a cold first scikit-learn call):
4.3 ms against 2.0 ms per image, 0.46x. The Gram products (5.3 MFLOP per image) are ~80 % of the batched time
and run near this CPU's measured matrix-product rate; the other methods per image against the batched k-means
(200 images): agglomerative 9x, GMM 19x, HDBSCAN 33x, spectral 95x its cost.

Measured 2026-12-05 08:51-09:00 UTC on a 2-core AMD EPYC VM (nothing else running; load average 1.1-1.6, the
benchmark's own two threads), ``--threads 2``, best of 3 per run, the code before (commit c583f72) and after
"k-means steps split over the Gram threads" run alternately; every run 100 % identical labels:

| images | code | sklearn ms/image | batched ms/image (Gram products) | batched / sklearn speed |
|---|---|---|---|---|
| 5,000 | before | 2.431 / 2.357 / 2.575 | 0.092 (0.078) / 0.093 (0.077) / 0.106 (0.089) | 26.3x / 25.4x / 24.2x |
| 5,000 | after | 2.425 / 2.363 | 0.081 (0.073) / 0.090 (0.082) | 30.0x / 26.1x |
| 200 | before | 2.245 / 2.418 / 2.451 | 0.114 (0.089) / 0.166 (0.139) / 0.124 (0.097) | 19.7x / 14.6x / 19.7x |
| 200 | after (same path) | 2.364 / 2.475 | 0.128 (0.102) / 0.139 (0.111) | 18.5x / 17.8x |

This VM ran scikit-learn's per-image KMeans at 2.2-2.6 ms/image against 1.1 on 12-04's, and the products 1.1-1.3x
slower, so the ratio of the unchanged code rose from 16.7x to 24-26x: the ratio is a property of the machine as
much as of the code. What the change itself bought: the k-means steps (seeding and Lloyd, B x 36 x 36) fell from
~0.015 to ~0.008 ms/image at 5,000 images on two threads; below 2 x 1,024 images they stay on one thread (at 200
images, split in two, they took 0.057 against 0.025 ms/image on one: 4 ms of small operations in all, where two
threads contend for the GIL; 1,024 is a round number between the sizes measured, not tuned). At 200 images the ratio is 15-20x: the products
alone are 0.09-0.14 ms/image there (one 26 ms call, two threads not reliably faster on this VM), so 20x needs
sklearn at >= 2.8 ms/image. Tried and dropped: converting float16 -> float32 and centring in one
``torch.sub(float16, float32 mean, out=)`` (same numbers, Gram step 1.5x slower: mixed-dtype arithmetic is not
vectorised), and OpenBLAS ``ssyrk`` (half the FLOPs, one call per image: 1.7x slower at 2 threads).

Measured 2026-12-05 13:21-13:22 UTC on the same VM with every other job paused (SIGSTOP), ``--methods kmeans
--repeats 5``, 200 images, the code before (commit 6237733) and after "shift each image by its first patch, then
double-centre its P x P Gram" (one pass over the (c, P, D) chunk less than the mean-centring) run alternately;
every run 100 % identical labels to scikit-learn:

| torch threads | code | sklearn ms/image | batched ms/image (Gram products) | batched / sklearn speed |
|---|---|---|---|---|
| 1 | before | 2.267 / 2.302 | 0.136 (0.112) / 0.144 (0.119) | 16.7x / 16.0x |
| 1 | after | 2.343 / 2.378 | 0.125 (0.101) / 0.130 (0.105) | 18.8x / 18.3x |
| 2 | before | 2.227 / 2.365 | 0.111 (0.086) / 0.126 (0.100) | 20.0x / 18.8x |
| 2 | after | 2.591 / 2.319 | 0.107 (0.081) / 0.111 (0.085) | 24.2x / 20.8x |

Where one thread's time goes at 200 images (a chunk of 32 images, each stage alone, warm): the copy out of the
float16 memmap 0.006 ms/image, the float16 -> float32 conversion 0.009, the mean 0.011 (the pass this change
removed), the subtraction 0.007 and the products 0.063, at 84 GFLOP/s against 96 for one 2048^3 SGEMM on this
core. The products are at the machine's rate and every other stage is one memory pass, so on one thread the
batched k-means stays near 0.12 ms/image; 20x on one thread needs scikit-learn at >= 2.5 ms/image, which this VM
is on some runs and not others (1.1 on 12-04's VM). numpy's own float16 conversion (``np.copyto`` into float32)
was 2.2x slower than torch's.

Measured 2026-12-05 23:45-23:52 UTC on the same VM with nothing else running (load average 0.3-1.4, the
benchmark's own threads), ``--methods kmeans``, the code before (commit c4b336e) and after "read the float16
memmap through DLPack" (the copy into a staging buffer removed, 0.006 ms/image above) run alternately; every
run 100 % identical labels to scikit-learn, objective ratio 1.000000:

| images | torch threads | code | sklearn ms/image | batched ms/image (Gram products) | batched / sklearn speed |
|---|---|---|---|---|---|
| 200 (best of 5) | 1 | before | 2.254 / 2.218 | 0.119 (0.096) / 0.121 (0.098) | 18.9x / 18.3x |
| 200 (best of 5) | 1 | after | 2.308 / 2.236 | 0.113 (0.089) / 0.114 (0.091) | 20.4x / 19.6x |
| 200 (best of 5) | 2 | before | 2.256 / 2.287 | 0.107 (0.081) / 0.110 (0.085) | 21.1x / 20.8x |
| 200 (best of 5) | 2 | after | 2.315 / 2.302 | 0.090 (0.066) / 0.099 (0.074) | 25.8x / 23.2x |
| 5,000 (best of 3) | 1 | before | 2.283 | 0.113 (0.099) | 20.1x |
| 5,000 (best of 3) | 1 | after | 2.383 | 0.104 (0.092) | 22.9x |
| 5,000 (best of 3) | 2 | before | 2.421 | 0.073 (0.065) | 33.3x |
| 5,000 (best of 3) | 2 | after | 2.344 | 0.069 (0.059) | 34.1x |

Measured again 2026-12-06 02:50-02:53 UTC on the same VM with nothing else running (load average 1.4-1.9, the
benchmark's own threads, straight after the renderer and kNN benchmarks), the code of commit 476e27b,
``--methods kmeans``; every run 100 % identical labels to scikit-learn, objective ratio 1.000000:

| images | torch threads | sklearn ms/image | batched ms/image (Gram products) | batched / sklearn speed |
|---|---|---|---|---|
| 200 (best of 5) | 1 | 2.350 | 0.117 (0.093) | 20.1x |
| 200 (best of 5) | 2 | 2.226 | 0.102 (0.078) | 21.8x |
| 5,000 (best of 3) | 1 | 2.473 | 0.107 (0.092) | 23.1x |
| 5,000 (best of 3) | 2 | 2.344 | 0.059 (0.052) | 39.5x |

So the default problem (200 images) is at >= 20x on two threads (the PaCa cells' setting) and at 19.6-20.4x on
one (three runs over two days), where the products alone (0.09 ms/image, at this core's SGEMM rate) leave
0.02 ms/image for everything else; at the study's 5,000 images it is 23x on one thread and 34-40x on two.

That holds on that AVX2 VM. Measured 2026-12-06 04:59-05:12 UTC on a 2-core AMD EPYC VM of another kind (Zen 5,
AVX-512, 1 MiB L2 per core; nothing else running, load average 0.3-1.5, the benchmark's own threads), the same
code (commit bf34e9d), ``--methods kmeans``, runs at different times; every run 100 % identical labels to
scikit-learn, objective ratio 1.000000:

| images | torch threads | sklearn ms/image | batched ms/image (Gram products) | batched / sklearn speed |
|---|---|---|---|---|
| 200 (best of 3, 5 or 7; six runs) | 1 | 0.968-1.023 | 0.067-0.076 (0.056-0.062) | 12.9-14.7x |
| 200 (best of 3 or 5; four runs) | 2 | 0.971-1.029 | 0.052-0.063 (0.039-0.049) | 15.8-18.8x |
| 5,000 (best of 3; two runs) | 1 | 0.953-1.000 | 0.063-0.070 (0.054-0.060) | 14.2-15.2x |
| 5,000 (best of 3; two runs) | 2 | 0.971-1.004 | 0.035-0.041 (0.030-0.036) | 24.8-28.1x |

There scikit-learn's per-image KMeans runs 2.3x faster than on the AVX2 VM, and our products do not: numpy's
OpenBLAS (0.3.31) and scipy's (0.3.30) both identify this CPU as Haswell and run their AVX2 kernels. One image's
X X^T, warm, on one core: 35 us through numpy (OpenBLAS ``ssyrk``, which numpy's matmul calls when both operands
are one array), 42 us per image inside the batched matmul of 32 images, 55 us as a GEMM of two buffers; oneDNN's
AVX-512 linear 45 us (40 with the weight laid out beforehand, which costs 118 us), ``torch.bmm`` 64 us. No
float32 engine here beats numpy's call for this shape (oneDNN is 2.2x faster only on large products: 283 GFLOP/s
at 1,152 x 2,048 x 1,152); bfloat16 products take 18 us but round the inputs. So the products alone cap one
thread at ~23x, and the rest (float16 conversion 3 us, the shift 4, the double centring, the k-means steps 8.5:
seeding 1.2, five Lloyd steps 5.4) puts it at 13-15x; chunks of 2-16 images instead of 32 did not help
(12.6-14.4x). At 5,000 images on two threads (the study's size) the target holds; at 200 it does not. Also tried
there and dropped: each of two threads clustering its half of the images as soon as that half's Grams were done,
beside the other thread's products (so that the GIL-bound k-means steps overlap products instead of following
them): 1.01-1.04x the time at 200 images (two k-means passes of 100 problems cost nearly twice one of 200: the
steps are per-operation overheads), 0.97x at 5,000; the same labels.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import os
import platform
import tempfile
from pathlib import Path

import numpy as np

from fer_bench import clustering as PC

PUBLISHED = {"kmeans": 21.0, "agglomerative": 14.0, "spectral": 119.0}   # seconds per 5,000 images (study text)
RESULTS = Path(__file__).resolve().parents[2] / "results" / "paca"


def make_embeddings(n: int, p: int, d: int, seed: int, folder: Path) -> np.memmap:
    rng = np.random.default_rng(seed)
    out = np.memmap(folder / "emb.f16", dtype=np.float16, mode="w+", shape=(n, p, d))
    for a in range(0, n, 256):
        b = min(n, a + 256)
        mu = np.abs(rng.normal(0, 2, size=(b - a, 4, d)))
        lab = rng.integers(0, 4, size=(b - a, p))
        x = np.abs(mu[np.arange(b - a)[:, None], lab] + rng.normal(size=(b - a, p, d)))
        out[a:b] = x.astype(np.float16)
    out.flush()
    return np.memmap(folder / "emb.f16", dtype=np.float16, mode="r", shape=(n, p, d))


def objective(emb: np.ndarray, labels: np.ndarray, k: int, chunk: int = 128) -> np.ndarray:
    """The k-means objective of each image's partition, in float64: (N, P, D), (N, P) -> (N,).

    Sum of squared distances of the patches to the mean of their cluster, the same formula for both backends'
    labels (scikit-learn's inertia_ is not returned by cluster_patches).
    """
    n = len(labels)
    out = np.empty(n)
    for a in range(0, n, chunk):
        x = np.asarray(emb[a:a + chunk], dtype=np.float64)                          # (c, P, D)
        lab = labels[a:a + chunk].astype(np.int64)                                  # (c, P)
        onehot = (lab[:, :, None] == np.arange(k)).astype(np.float64)               # (c, P, k)
        means = np.einsum("cpk,cpd->ckd", onehot, x) / np.maximum(onehot.sum(1), 1)[..., None]   # (c, k, D)
        out[a:a + len(x)] = ((x - np.take_along_axis(means, lab[..., None], 1)) ** 2).sum((1, 2))
    return out


def agreement(emb: np.ndarray, ref: np.ndarray, other: np.ndarray, k: int) -> dict[str, float]:
    """How far ``other`` labels are from the scikit-learn ``ref`` labels, per image, summarised."""
    from sklearn.metrics import adjusted_rand_score
    ari = np.array([adjusted_rand_score(a, b) for a, b in zip(ref, other)])
    ratio = objective(emb, other, k) / objective(emb, ref, k)
    return {"identical_labels": float(np.mean(np.all(ref == other, axis=1))),
            "identical_partitions": float(np.mean(ari > 1 - 1e-9)), "mean_ari": float(ari.mean()),
            "objective_ratio_mean": float(ratio.mean()), "objective_ratio_max_dev": float(np.abs(ratio - 1).max())}


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op threads set to n inside the block, restored after."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run(args: argparse.Namespace) -> None:
    import torch

    # scikit-learn runs with torch's OpenMP at 1 thread (its setting reaches scikit-learn's OpenMP in this process:
    # at 2 threads the per-image KMeans ran up to 10x slower on a busy 2-core machine); only the torch backend
    # gets --threads (torch.get_num_threads() is the thread count of its Gram products)
    torch.set_num_threads(1)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device)
    fast = functools.partial(PC.cluster_patches, backend="torch", device=device, chunk=args.chunk)
    rows = []
    load = os.getloadavg()
    summary = []
    with tempfile.TemporaryDirectory() as tmp:
        emb = make_embeddings(args.images, 36, args.dim, 0, Path(tmp))
        warm = np.asarray(emb[:4])
        scale = 5000.0 / args.images
        torch_ms = None
        for method in args.methods:
            settings = PC.ClusterSettings(method, args.k, seed=0, kmeans_n_init=args.n_init)
            timings = {}
            # warm-up on 4 images, not timed: the first call imports the estimator (scikit-learn) or finds the
            # BLAS libraries and warms the allocator (torch); both backends are then timed warm
            PC.cluster_patches(warm, settings, backend="sklearn")
            labels_sk, stats = PC.cluster_patches(emb, settings, backend="sklearn", workers=0)
            timings["sklearn"] = stats["seconds"]
            if method == "kmeans":
                with torch_threads(args.threads):
                    fast(warm, settings)
                    torch_labels, tstats = fast(emb, settings)
                for _ in range(args.repeats - 1):       # interleaved, so that both see the same load; best of each
                    timings["sklearn"] = min(timings["sklearn"], PC.cluster_patches(emb, settings)[1]["seconds"])
                    with torch_threads(args.threads):
                        tstats = min(tstats, fast(emb, settings)[1], key=lambda st: st["seconds"])
            _, pstats = PC.cluster_patches(emb, settings, backend="sklearn", workers=args.workers, min_per_worker=1)
            timings["pool"] = pstats["seconds"]
            extra = ""
            if method == "spectral":
                extra = f"disconnected affinity graph: {stats.get('spectral_disconnected', 0)}/{args.images} images"
            if method == "hdbscan":
                extra = (f"mean HDBSCAN clusters {stats.get('hdbscan_clusters', 0) / args.images:.2f}, noise points "
                         f"{stats.get('hdbscan_noise_points', 0) / args.images:.2f} per image")
            if method == "kmeans":
                timings["torch"] = tstats["seconds"]
                torch_ms = 1000 * tstats["seconds"] / args.images
                agree = agreement(emb, labels_sk, torch_labels, args.k)
                extra = (f"torch vs sklearn: identical labels {agree['identical_labels']:.1%}, mean ARI "
                         f"{agree['mean_ari']:.4f}, objective ratio {agree['objective_ratio_mean']:.6f}")
                ratio = timings["sklearn"] / timings["torch"]
                summary += [
                    (f"k-means, batched torch vs one scikit-learn KMeans per image, same {args.images} images in one "
                     f"run (best of {args.repeats}, interleaved):"),
                    (f"- sklearn {1000 * timings['sklearn'] / args.images:.3f} ms/image, torch {torch_ms:.3f} ms/image "
                     f"(of which Gram products {1000 * tstats['gram_seconds'] / args.images:.3f}): "
                     f"**torch / sklearn speed ratio {ratio:.1f}x** (target >= 20x)"),
                    (f"- agreement: identical labels {agree['identical_labels']:.2%}, identical partitions "
                     f"{agree['identical_partitions']:.2%}, mean ARI {agree['mean_ari']:.4f}; objective (sum of "
                     f"squared distances to the cluster means) torch / sklearn: mean "
                     f"{agree['objective_ratio_mean']:.6f}, largest |ratio - 1| "
                     f"{agree['objective_ratio_max_dev']:.2e}")]
            elif torch_ms:
                per_image = 1000 * timings["sklearn"] / args.images
                summary.append(f"- {method} (scikit-learn, per image): {per_image:.2f} ms/image, "
                               f"{per_image / torch_ms:.0f}x the cost of the batched k-means")
            for backend, sec in timings.items():
                rows.append({"method": method, "backend": backend if backend != "pool" else f"pool x{args.workers}",
                             "images": args.images, "seconds": sec, "seconds_per_5000": sec * scale,
                             "ms_per_image": 1000 * sec / args.images,
                             "published_seconds_per_5000": PUBLISHED.get(method) if backend == "sklearn" else None,
                             "speedup_vs_sklearn": timings["sklearn"] / sec if sec > 0 else float("nan"),
                             "note": extra if backend == "sklearn" or backend == "torch" else ""})
    load_end = os.getloadavg()
    import pandas as pd
    from tabulate import tabulate
    frame = pd.DataFrame(rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    frame.to_csv(RESULTS / "clustering_cost.csv", index=False, float_format="%.4f")
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, device {device}, "
               f"load average {load[0]:.2f} at start and {load_end[0]:.2f} at the end (1 min), torch "
               f"{torch.__version__}; torch backend: Gram products over {args.threads} thread(s) of 1 BLAS thread "
               f"each, k-means steps on 1 thread; scikit-learn with torch's OpenMP at 1 thread")
    text = (f"## Clustering cost: {args.k} clusters per image, 36 patches x {args.dim}-d, measured on {args.images} "
            f"images and scaled to 5,000\n\nMachine: {machine}. KMeans n_init={args.n_init}.\n"
            f"Published: the study's 5,000-image times (KMeans 21 s, Agglomerative 14 s, Spectral 119 s; Colab).\n\n"
            + tabulate(frame, headers="keys", tablefmt="github", showindex=False, floatfmt=".3f", missingval="—")
            + "\n" + ("\n" + "\n".join(summary) + "\n" if summary else ""))
    (RESULTS / "clustering_cost.md").write_text(text)
    print(text)


def plot() -> None:
    """Accuracy against training seconds per epoch and clustering seconds, one point per variant."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from fer_bench.store import Store

    path = RESULTS / "run" / "results.sqlite"
    if not path.is_file():
        raise SystemExit(f"{path} does not exist; run the benchmark first (see benchmarks/paca.yaml).")
    with Store(path) as store:
        long = store.metrics_frame()
    wide = long.pivot_table(index=["method", "overrides", "seed"], columns="metric", values="value").reset_index()
    wide["label"] = [f"{m} {o}".strip() for m, o in zip(wide["method"], wide["overrides"])]
    agg = wide.groupby("label").mean(numeric_only=True).reset_index()
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, col, xlabel in ((axes[0], "train_seconds_per_epoch", "training seconds per epoch"),
                            (axes[1], "cluster_seconds_train", "clustering seconds (train images, first run)")):
        part = agg.dropna(subset=[col]) if col in agg else agg.iloc[:0]
        ax.scatter(part[col], 100 * part["accuracy"])
        for _, r in part.iterrows():
            ax.annotate(r["label"].replace("clustering=", "").replace("clusters=", "k="), (r[col], 100 * r["accuracy"]),
                        fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    fig.suptitle("Patch clustering variants: accuracy vs cost (synthetic, quick profile; shared 2-core CPU)")
    fig.tight_layout()
    fig.savefig(RESULTS / "accuracy_vs_cost.png", dpi=120)
    agg.to_csv(RESULTS / "accuracy_vs_cost.csv", index=False, float_format="%.4f")
    print(f"wrote {RESULTS / 'accuracy_vs_cost.png'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--n-init", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=None,
                        help=f"torch: images per float16 -> float32 conversion and Gram product "
                             f"(default {PC.GRAM_CHUNK})")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads of the torch backend's Gram products; scikit-learn runs at 1")
    parser.add_argument("--repeats", type=int, default=3, help="k-means: best of this many sklearn / torch runs")
    parser.add_argument("--methods", nargs="+", default=list(PC.CLUSTER_METHODS), choices=PC.CLUSTER_METHODS)
    parser.add_argument("--plot", action="store_true", help="draw results/paca/accuracy_vs_cost.png and stop")
    args = parser.parse_args()
    if args.plot:
        plot()
    else:
        run(args)


if __name__ == "__main__":
    main()
