"""Per-image patch clustering for patch-to-cluster attention (the seed-004 study on PaCa-ViT).

The study ("ViT with patch clustering on AffectNet", built on PaCa-ViT, Grainger et al. CVPR 2023;
notes/methods.md section 3) cuts each 96 x 96 image into 36 patches of 16 x 16, embeds every patch
with a frozen ImageNet ResNet-50 (2048-d, global average pooling) and clusters *each image's* 36
patch embeddings into k groups with scikit-learn. Because the embedding network is frozen, both the
embeddings and the assignments are a fixed function of the image, so this module computes them once
and caches them under ``fer_bench.data.cache_dir() / "patch_clusters"``:

- ``patch_embeddings``: the (N, P, D) embeddings as a float16 memmap, keyed by the data key (a
  dataset fingerprint, or a digest of the image bytes) and the embedding settings;
- ``cached_assignments``: the (N, P) assignments as int8, keyed by the embedding key and the
  clustering settings, with a JSON sidecar of statistics (seconds, degenerate spectral problems,
  HDBSCAN noise and cluster counts).

Backends (``cluster_patches``):

- ``sklearn``: one scikit-learn (or ``hdbscan`` package) call per image, in this process or, with
  ``workers > 0``, over a process pool (``spawn``; one BLAS/OpenMP thread per worker);
- ``torch``: ``gram_kmeans`` (k-means only), scikit-learn's KMeans (k-means++ seeding, Lloyd
  iterations, n_init restarts) run on every image at once from its Gram matrix (CPU or GPU): the only
  D-sized work is one X X^T per image, and the seeds are drawn from scikit-learn's own random stream,
  so the labels are scikit-learn's (ids included) up to float32 rounding at near-ties. Speed and
  agreement are measured by ``benchmarks/perf/patch_clustering.py`` and tested against scikit-learn.

Methods and their documented settings:

- ``kmeans``: ``KMeans(k, n_init=kmeans_n_init, random_state=seed)``. ``n_init`` is pinned (the
  default changed to 'auto' = 1 with k-means++ in scikit-learn 1.4); our default is 1, i.e. what the
  study's scikit-learn (late 2024) did by default.
- ``agglomerative``: ``AgglomerativeClustering(k)`` (Ward, Euclidean), deterministic.
- ``spectral``: ``SpectralClustering(k, random_state=seed)``. With ``spectral_affinity="default"``
  (faithful: scikit-learn's rbf with gamma = 1) the affinities of features at this scale underflow to
  exactly 0 and the graph falls apart; we keep it, and count per run how many images had a
  disconnected affinity graph (``spectral_disconnected``) and how many had every off-diagonal
  affinity equal to 0 (``spectral_all_zero``). ``"median"`` sets gamma = 1 / median squared distance
  per image (scale-aware); ``"nearest_neighbors"`` uses scikit-learn's kNN graph (k = min(10, P-1)).
- ``gmm``: ``GaussianMixture(k, covariance_type=gmm_covariance, random_state=seed)``; full
  covariances of 36 points in 2048 dimensions are singular, so the default is ``"diag"``.
- ``hdbscan``: ``hdbscan.HDBSCAN(min_cluster_size=hdbscan_min_cluster_size)``. It chooses its own
  number m of clusters and marks noise points (-1). Mapping to k cluster tokens
  (``hdbscan_to_tokens``): clusters are ranked by size (ties: lower HDBSCAN label first);
  ``noise="nearest"`` keeps the k largest clusters and sends the points of the other clusters and the
  noise points to the nearest kept centroid (Euclidean); ``noise="own"`` keeps the k-1 largest,
  sends the points of other clusters to the nearest kept centroid, and gives the noise points a token
  of their own. With no cluster at all every point is in token 0. When fewer than k tokens are used
  the rest are empty (masked by the attention). Token ids are in size order.

Assignments may leave clusters empty (e.g. k-means on duplicated background patches); the model masks
them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from fer_bench.fileio import atomic_path, atomic_write_text
from fer_bench.gram_kmeans import (GRAM_CHUNK, one_torch_thread, batched_kmeans, gram_kmeans,  # noqa: F401
                                   patch_grams)

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

CLUSTER_METHODS = ("kmeans", "agglomerative", "spectral", "gmm", "hdbscan")
SPECTRAL_AFFINITIES = ("default", "median", "nearest_neighbors")
HDBSCAN_NOISE = ("nearest", "own")
CACHE_VERSION = "1"
EMBEDDER_INIT_SEED = 0   # random-init embedding networks are drawn with this seed (one cache for all runs)


# --------------------------------------------------------------------------------------------------
# Settings


@dataclasses.dataclass(frozen=True)
class ClusterSettings:
    """How one image's patch embeddings are clustered (see the module docstring)."""

    method: str = "kmeans"
    k: int = 4
    seed: int = 0
    kmeans_n_init: int = 1
    spectral_affinity: str = "default"
    gmm_covariance: str = "diag"
    hdbscan_min_cluster_size: int = 5
    hdbscan_noise: str = "nearest"

    def __post_init__(self) -> None:
        if self.method not in CLUSTER_METHODS:
            raise ValueError(f"The clustering method must be one of {', '.join(CLUSTER_METHODS)}. Got {self.method!r} instead.")
        if not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"The number of clusters k must be an int >= 1. Got {self.k!r} instead.")
        if self.spectral_affinity not in SPECTRAL_AFFINITIES:
            raise ValueError(f"spectral_affinity must be one of {', '.join(SPECTRAL_AFFINITIES)}. "
                             f"Got {self.spectral_affinity!r} instead.")
        if self.hdbscan_noise not in HDBSCAN_NOISE:
            raise ValueError(f"hdbscan_noise must be one of {', '.join(HDBSCAN_NOISE)}. Got {self.hdbscan_noise!r} instead.")
        if self.gmm_covariance not in ("diag", "spherical", "full", "tied"):
            raise ValueError(f"gmm_covariance must be one of diag, spherical, full, tied. Got {self.gmm_covariance!r} instead.")

    def key_fields(self) -> dict[str, Any]:
        """Only the settings that change this method's result (so e.g. kmeans ignores hdbscan's)."""
        out: dict[str, Any] = {"method": self.method, "k": self.k}
        if self.method in ("kmeans", "spectral", "gmm"):
            out["seed"] = self.seed
        if self.method == "kmeans":
            out["n_init"] = self.kmeans_n_init
        if self.method == "spectral":
            out["affinity"] = self.spectral_affinity
        if self.method == "gmm":
            out["covariance"] = self.gmm_covariance
        if self.method == "hdbscan":
            out.update(min_cluster_size=self.hdbscan_min_cluster_size, noise=self.hdbscan_noise)
        return out


# --------------------------------------------------------------------------------------------------
# One image


def cluster_image(x: np.ndarray, s: ClusterSettings) -> tuple[np.ndarray, dict[str, int]]:
    """Cluster the (P, D) patch embeddings of one image -> (labels int (P,) in 0..k-1, flags)."""
    from sklearn.cluster import AgglomerativeClustering, KMeans, SpectralClustering
    from sklearn.mixture import GaussianMixture

    x = np.asarray(x, dtype=np.float32)                                   # (P, D)
    p = len(x)
    if s.k > p:
        raise ValueError(f"Cannot cluster {p} patches into k={s.k} clusters; choose k <= {p}.")
    flags: dict[str, int] = {}
    if s.k == 1:
        return np.zeros(p, dtype=np.int64), flags
    if s.method == "kmeans":
        labels = KMeans(s.k, n_init=s.kmeans_n_init, random_state=s.seed).fit_predict(x)
    elif s.method == "agglomerative":
        labels = AgglomerativeClustering(s.k).fit_predict(x)
    elif s.method == "spectral":
        x64 = x.astype(np.float64)
        d2 = np.maximum(((x64[:, None, :] - x64[None, :, :]) ** 2).sum(-1), 0.0)  # (P, P)
        off = d2[~np.eye(p, dtype=bool)]
        if s.spectral_affinity == "default":
            model = SpectralClustering(s.k, random_state=s.seed)          # rbf, gamma = 1.0
            gamma = 1.0
        elif s.spectral_affinity == "median":
            med = float(np.median(off)) if off.size else 0.0
            gamma = 1.0 / med if med > 0 else 1.0
            model = SpectralClustering(s.k, gamma=gamma, random_state=s.seed)
        elif s.spectral_affinity == "nearest_neighbors":
            model = SpectralClustering(s.k, affinity="nearest_neighbors", n_neighbors=min(10, p - 1),
                                       random_state=s.seed)
            gamma = None
        else:
            raise ValueError(f"spectral_affinity {s.spectral_affinity!r} is not one of {SPECTRAL_AFFINITIES}.")
        if gamma is not None:
            from scipy.sparse.csgraph import connected_components
            affinity = np.exp(-gamma * d2)                                # (P, P) as scikit-learn computes it
            flags["spectral_all_zero"] = int(not np.any(affinity[~np.eye(p, dtype=bool)] > 0))
            flags["spectral_disconnected"] = int(connected_components(affinity > 0, directed=False)[0] > 1)
        labels = model.fit_predict(x)
    elif s.method == "gmm":
        labels = GaussianMixture(s.k, covariance_type=s.gmm_covariance, random_state=s.seed).fit_predict(x)
    elif s.method == "hdbscan":
        import hdbscan
        raw = hdbscan.HDBSCAN(min_cluster_size=min(s.hdbscan_min_cluster_size, p), core_dist_n_jobs=1).fit_predict(
            x.astype(np.float64))
        flags["hdbscan_clusters"] = int(raw.max() + 1) if raw.size else 0
        flags["hdbscan_noise_points"] = int((raw < 0).sum())
        flags["hdbscan_more_than_k"] = int(flags["hdbscan_clusters"] > s.k)
        labels = hdbscan_to_tokens(raw, x, s.k, s.hdbscan_noise)
    else:
        raise ValueError(f"Unknown clustering method {s.method!r}; use one of {', '.join(CLUSTER_METHODS)}.")
    return np.asarray(labels, dtype=np.int64), flags


def hdbscan_to_tokens(raw: np.ndarray, x: np.ndarray, k: int, noise: str = "nearest") -> np.ndarray:
    """Map HDBSCAN labels (-1 = noise, 0..m-1 clusters) of one image to k cluster tokens.

    See the module docstring: clusters ranked by size; ``noise="nearest"`` keeps k of them and sends
    everything else to the nearest kept centroid, ``noise="own"`` keeps k-1 and gives noise its own token.
    """
    raw = np.asarray(raw)
    x = np.asarray(x, dtype=np.float64)                                   # (P, D)
    if noise not in HDBSCAN_NOISE:
        raise ValueError(f"noise must be one of {', '.join(HDBSCAN_NOISE)}. Got {noise!r} instead.")
    ids = np.unique(raw[raw >= 0])
    if ids.size == 0:
        return np.zeros(len(raw), dtype=np.int64)
    sizes = np.array([(raw == c).sum() for c in ids])
    order = ids[np.lexsort((ids, -sizes))]                                # largest first, ties by label
    n_keep = min(len(order), k if noise == "nearest" else max(k - 1, 1))
    kept = order[:n_keep]
    out = np.full(len(raw), -1, dtype=np.int64)
    for token, c in enumerate(kept):
        out[raw == c] = token
    centroids = np.stack([x[raw == c].mean(0) for c in kept])             # (n_keep, D)
    is_noise = raw < 0
    dropped = (out < 0) & ~is_noise                                       # points of clusters beyond the kept ones
    move = dropped | (is_noise if noise == "nearest" or n_keep >= k else np.zeros_like(is_noise))
    if noise == "own" and n_keep < k:
        out[is_noise] = n_keep                                            # noise gets the next free token
    if move.any():
        d2 = ((x[move][:, None, :] - centroids[None]) ** 2).sum(-1)      # (n_move, n_keep)
        out[move] = d2.argmin(1)
    return out


# --------------------------------------------------------------------------------------------------
# Many images: scikit-learn per image (optionally over a process pool) or batched torch k-means


def _cluster_rows(task: tuple) -> tuple[int, np.ndarray, dict[str, int]]:
    """Worker: cluster rows [start, stop) of an embedding array (in memory or a float16 memmap file)."""
    source, start, stop, settings, limit_threads = task
    if isinstance(source, tuple):                                        # (path, shape, dtype)
        path, shape, dtype = source
        emb = np.memmap(path, dtype=dtype, mode="r", shape=tuple(shape))[start:stop]
    else:
        emb = source
    ctx = _single_thread() if limit_threads else contextlib.nullcontext()
    labels = np.empty(emb.shape[:2], dtype=np.int8)
    totals: dict[str, int] = {}
    # scikit-learn warns once per image (e.g. "Graph is not fully connected", duplicate points in
    # k-means); the warnings are recorded and counted per message, and the caller logs the counts once.
    with ctx, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(len(emb)):
            lab, flags = cluster_image(np.asarray(emb[i], dtype=np.float32), settings)
            labels[i] = lab
            for key, value in flags.items():
                totals[key] = totals.get(key, 0) + value
    for w in caught:
        name = "warning: " + (str(w.message).splitlines() or [""])[0][:80]
        totals[name] = totals.get(name, 0) + 1
    return start, labels, totals


def _single_thread():
    from threadpoolctl import threadpool_limits
    return threadpool_limits(1)


def cluster_patches(emb: np.ndarray, settings: ClusterSettings, backend: str = "sklearn", workers: int = 0,
                    device: str = "cpu", chunk: int | None = None,
                    min_per_worker: int = 64) -> tuple[np.ndarray, dict[str, Any]]:
    """Cluster every image's patches: (N, P, D) -> (labels int8 (N, P), statistics).

    backend "sklearn" calls ``cluster_image`` per image (``workers`` > 0: over a spawn process pool
    when there are at least ``min_per_worker`` images per worker, since starting the workers costs
    seconds; a float16 memmap is read by the workers from its file, not pickled; ``chunk``: images per
    task); backend "torch" runs ``gram_kmeans`` on every image at once (method must be kmeans) on
    ``device``, ``chunk`` images per Gram product (default ``GRAM_CHUNK``), with the labels of
    ``KMeans(k, n_init, random_state=seed)`` up to float rounding at near-ties.
    """
    n, p = emb.shape[:2]
    if settings.k > p:
        raise ValueError(f"Cannot cluster {p} patches into k={settings.k} clusters; choose k <= {p}.")
    t0 = time.perf_counter()
    totals: dict[str, int] = {}
    if backend == "torch":
        if settings.method != "kmeans":
            raise ValueError(f"The torch backend implements k-means only; got method {settings.method!r}. "
                             f"Use backend='sklearn' for {settings.method}.")
        labels, totals = _torch_kmeans_all(emb, settings, device, chunk)
    elif backend == "sklearn":
        labels = np.empty((n, p), dtype=np.int8)
        import multiprocessing
        # a daemonic process (a cell of the local executor's pool) may not start workers: its cores are taken
        if workers <= 0 or n < max(2, min_per_worker * workers) or multiprocessing.current_process().daemon:
            workers = 0
            _, labels, totals = _cluster_rows((np.asarray(emb), 0, n, settings, False))
        else:
            source: Any = None
            if isinstance(emb, np.memmap) and emb.filename is not None and emb.offset == 0 and emb.flags.c_contiguous:
                source = (str(emb.filename), tuple(emb.shape), emb.dtype.str)
            size = chunk or max(1, math.ceil(n / (workers * 4)))
            tasks = [(source if source is not None else np.asarray(emb[a:min(a + size, n)]), a, min(a + size, n),
                      settings, True) for a in range(0, n, size)]
            with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                for start, lab, flags in pool.map(_cluster_rows, tasks):
                    labels[start:start + len(lab)] = lab
                    for key, value in flags.items():
                        totals[key] = totals.get(key, 0) + value
    else:
        raise ValueError(f"backend must be 'sklearn' or 'torch'. Got {backend!r} instead.")
    seconds = time.perf_counter() - t0
    present = np.zeros((n, max(settings.k, int(labels.max(initial=0)) + 1)), dtype=bool)   # (N, k) cluster used
    present[np.arange(n)[:, None], labels] = True
    counts = present.sum(1)                                              # non-empty clusters per image
    stats: dict[str, Any] = {"seconds": seconds, "images": int(n), "backend": backend, "workers": int(workers),
                             "mean_nonempty_clusters": float(counts.mean()) if n else 0.0,
                             "images_with_empty_clusters": int((counts < settings.k).sum()), **totals}
    for key, value in totals.items():
        if key.startswith("warning: "):
            log.warning("%s clustering of %d images: %d x %s", settings.method, n, value, key[len("warning: "):])
    if settings.method == "spectral" and settings.spectral_affinity == "default" and totals.get("spectral_disconnected"):
        log.warning("spectral clustering with scikit-learn's default affinity (rbf, gamma=1): %d of %d images had "
                    "a disconnected affinity graph (%d with every affinity 0); set spectral_affinity='median' for a "
                    "scale-aware affinity.", totals["spectral_disconnected"], n, totals.get("spectral_all_zero", 0))
    return labels, stats


def _torch_kmeans_all(emb: np.ndarray, s: ClusterSettings, device: str, chunk: int | None,
                      block: int = 16384) -> tuple[np.ndarray, dict[str, Any]]:
    """k-means of every image on its Gram matrix: (N, P, D) -> (labels int8 (N, P), statistics).

    Grams are built ``block`` images at a time (float32, N x P x P: 85 MB per 16,384 images of 36 patches), so the
    memory stays bounded at any N; every image draws the same seeds (``kmeans_draws``), so the labels do not depend
    on ``chunk`` or ``block``. On the CPU, ``torch.get_num_threads()`` Python threads share the Gram products, then
    the k-means steps (each thread a part of the images, torch at one intra-op thread: ``one_torch_thread``).
    """
    import torch
    n, p, d = emb.shape
    out = np.zeros((n, p), dtype=np.int8)
    t_gram = 0.0
    threads = torch.get_num_threads()                             # for the Gram products (patch_grams)
    on_cpu = torch.device(device).type == "cpu"
    with one_torch_thread() if on_cpu else contextlib.nullcontext():
        for a in range(0, n, block) if s.k > 1 else ():
            t0 = time.perf_counter()
            gram = patch_grams(emb[a:a + block], chunk=chunk or GRAM_CHUNK, device=device, threads=threads)
            t_gram += time.perf_counter() - t0                                     # (b, P, P) above
            labels, _, _ = gram_kmeans(gram, s.k, n_features=d, n_init=s.kmeans_n_init, seed=s.seed,
                                       threads=threads if on_cpu else 1)
            out[a:a + len(gram)] = labels.cpu().numpy()
    return out, {"gram_seconds": t_gram}


# --------------------------------------------------------------------------------------------------
# Patch embeddings


@dataclasses.dataclass(frozen=True)
class EmbedSettings:
    """The frozen patch-embedding network and how patches are cut and fed to it."""

    backbone: str = "resnet50"
    pretrained: str | None = None
    image_size: int = 96
    patch_size: int = 16
    embed_size: int | None = None          # None: each patch at its native size
    batch_images: int = 64

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    def key_fields(self) -> dict[str, Any]:
        pre = self.pretrained
        if pre is not None and pre.lower() == "synthetic-faces":       # the shipped file's hash: new weights, new key
            from fer_bench.models.pretrained import record_of
            pre = f"{pre}:{record_of(pre, self.backbone)['sha256']}"
        elif pre is not None and pre.lower() != "imagenet" and Path(pre).is_file():
            st = Path(pre).stat()
            pre = f"{pre}:{st.st_size}:{int(st.st_mtime)}"
        return {"backbone": self.backbone, "pretrained": pre if pre is not None else f"random-init:{EMBEDDER_INIT_SEED}",
                "image_size": self.image_size, "patch_size": self.patch_size, "embed_size": self.embed_size}


def build_embedder(s: EmbedSettings, device: "torch.device | str" = "cpu") -> "torch.nn.Module":
    """The frozen embedding network in eval mode; random init is drawn with ``EMBEDDER_INIT_SEED``."""
    import torch
    from fer_bench.models import build_backbone
    size = s.embed_size or s.patch_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(EMBEDDER_INIT_SEED)
        net = build_backbone(s.backbone, pretrained=s.pretrained, in_size=size)
    net.eval().requires_grad_(False)
    return net.to(device)


def resize_images(images: np.ndarray, size: int) -> "torch.Tensor":
    """uint8 (N, H, W, 3) -> float (N, 3, size, size) in [0, 1], antialiased bilinear (as TorchMethod)."""
    from fer_bench.models.backbones import resize_images as resize_uint8
    return resize_uint8(images, size).float().div_(255.0)


def cut_patches(x: "torch.Tensor", patch: int) -> "torch.Tensor":
    """(B, 3, S, S) -> (B, P, 3, patch, patch), patches in row-major grid order (P = (S/patch)^2)."""
    b, c, h, w = x.shape
    g_h, g_w = h // patch, w // patch
    x = x.reshape(b, c, g_h, patch, g_w, patch).permute(0, 2, 4, 1, 3, 5)  # (B, gh, gw, 3, p, p)
    return x.reshape(b, g_h * g_w, c, patch, patch)


def _compute_embeddings(images: np.ndarray, s: EmbedSettings, device: str, out: np.ndarray) -> None:
    import torch
    import torch.nn.functional as F
    from fer_bench.models import IMAGENET_MEAN, IMAGENET_STD
    net = build_embedder(s, device)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    with torch.no_grad():
        for a in range(0, len(images), s.batch_images):
            x = resize_images(images[a:a + s.batch_images], s.image_size).to(device)   # (B, 3, S, S)
            patches = cut_patches(x, s.patch_size)                        # (B, P, 3, p, p)
            b, p = patches.shape[:2]
            flat = patches.reshape(b * p, 3, s.patch_size, s.patch_size)
            if s.embed_size and s.embed_size != s.patch_size:
                flat = F.interpolate(flat, size=(s.embed_size, s.embed_size), mode="bilinear", align_corners=False)
            vec = net((flat - mean) / std)[1]                            # (B*P, D) global average pooling
            out[a:a + b] = vec.reshape(b, p, -1).cpu().numpy().astype(np.float16)


def _folder() -> Path:
    from fer_bench.data import cache_dir
    folder = cache_dir() / "patch_clusters"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(f"cannot create the patch-cluster cache folder {str(folder)!r} ({exc.strerror}); "
                      f"set FER_BENCH_CACHE to a writable folder.") from None
    return folder


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


def images_digest(images: np.ndarray) -> str:
    """A content key for images that have no dataset fingerprint (e.g. arrays given to predict)."""
    h = hashlib.sha256(str((images.shape, images.dtype.str)).encode())
    step = 2048
    for a in range(0, len(images), step):
        h.update(np.ascontiguousarray(images[a:a + step]).tobytes())
    return "sha256-" + h.hexdigest()


def data_key(images: np.ndarray, fingerprint: str | None = None) -> str:
    """The key naming ``images`` in the cache: the dataset ``fingerprint`` when given, else the digest of
    the bytes. Given a fingerprint, an alias digest -> fingerprint is written, so that the same images
    passed later as a bare array (``embed(train)`` in the runner) find the fingerprint's entries."""
    digest = images_digest(images)
    alias = _folder() / f"alias-{digest[len('sha256-'):][:40]}.json"
    if fingerprint is not None:
        if not alias.is_file():
            _write_meta(alias, {"key": digest, "fingerprint": fingerprint, "version": CACHE_VERSION})
        return fingerprint
    meta = _read_meta(alias, digest)
    return meta["fingerprint"] if meta is not None else digest


def embedding_key(data_key: str, s: EmbedSettings) -> str:
    return _digest({"v": CACHE_VERSION, "data": data_key, "embed": s.key_fields()})


def patch_embeddings(images: np.ndarray, data_key: str, s: EmbedSettings, device: str = "cpu") -> tuple[np.ndarray, str]:
    """(N, P, D) float16 patch embeddings of ``images``, computed once and memory-mapped afterwards.

    ``data_key`` names the images (a dataset fingerprint or ``images_digest``). Returns the read-only
    memmap and the entry's key (the parent key of assignment entries).
    """
    if s.image_size % s.patch_size:
        raise ValueError(f"image_size {s.image_size} is not a multiple of patch_size {s.patch_size}; "
                         f"choose sizes with image_size = grid * patch_size.")
    key = embedding_key(data_key, s)
    folder = _folder()
    data_path, meta_path = folder / f"emb-{key}.f16", folder / f"emb-{key}.json"
    meta = _read_meta(meta_path, key)
    if meta is not None and data_path.is_file() and data_path.stat().st_size == int(np.prod(meta["shape"])) * 2 \
            and meta["shape"][0] == len(images):
        return np.memmap(data_path, dtype=np.float16, mode="r", shape=tuple(meta["shape"])), key
    t0 = time.perf_counter()
    probe = build_embedder(dataclasses.replace(s, pretrained=None), "cpu")   # the output width only
    dim = probe.out_dim
    del probe
    shape = (len(images), s.grid * s.grid, dim)
    with atomic_path(data_path) as tmp:
        arr = np.memmap(tmp, dtype=np.float16, mode="w+", shape=shape)
        _compute_embeddings(images, s, device, arr)
        arr.flush()
        del arr
    seconds = time.perf_counter() - t0
    _write_meta(meta_path, {"key": key, "shape": list(shape), "dtype": "float16", "settings": s.key_fields(),
                            "data": data_key, "seconds": seconds, "version": CACHE_VERSION})
    log.info("patch embeddings %s of %d images in %.1f s", shape, len(images), seconds)
    return np.memmap(data_path, dtype=np.float16, mode="r", shape=shape), key


def cached_assignments(emb: np.ndarray, emb_key: str, settings: ClusterSettings, backend: str = "sklearn",
                       workers: int = 0, device: str = "cpu") -> tuple[np.ndarray, dict[str, Any]]:
    """(N, P) int8 assignments of the embeddings ``emb_key``, clustered once per settings and backend.

    Returns (labels, stats); ``stats["cached"]`` says whether they came from the cache.
    """
    # pool and in-process agree exactly; "torch-gram": the Gram-matrix k-means with scikit-learn's seeds, whose labels
    # differ from those of the earlier torch backend (its own torch.Generator seeds), so its entries are not reused
    key = _digest({"v": CACHE_VERSION, "emb": emb_key, "cluster": settings.key_fields(),
                   "backend": "torch-gram" if backend == "torch" else "sklearn"})
    folder = _folder()
    data_path, meta_path = folder / f"asg-{key}.npy", folder / f"asg-{key}.json"
    meta = _read_meta(meta_path, key)
    if meta is not None and data_path.is_file():
        labels = np.load(data_path)
        if labels.shape == tuple(emb.shape[:2]) and labels.dtype == np.int8:
            return labels, {**meta["stats"], "cached": True}
        log.warning("assignment cache entry %s has shape %s, expected %s; recomputing", data_path,
                    labels.shape, tuple(emb.shape[:2]))
    labels, stats = cluster_patches(emb, settings, backend=backend, workers=workers, device=device)
    with atomic_path(data_path) as tmp:                                  # tmp ends in .npy: np.save adds nothing
        np.save(tmp, labels)
    _write_meta(meta_path, {"key": key, "settings": settings.key_fields(), "embedding": emb_key, "stats": stats,
                            "version": CACHE_VERSION})
    return labels, {**stats, "cached": False}


def _read_meta(path: Path, key: str) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable cache manifest %s (%s)", path, exc)
        return None
    return meta if meta.get("key") == key and meta.get("version") == CACHE_VERSION else None


def _write_meta(path: Path, meta: Mapping[str, Any]) -> None:
    atomic_write_text(path, json.dumps(meta, indent=1, sort_keys=True, default=str))
