"""ViT with patch-to-cluster attention over externally clustered patches (seed-004 study on PaCa-ViT).

Papers: "Patch clustering for emotion recognition with ViTs" (the seed-004 study, AffectNet-8,
``shared/papers/vit-patch-clustering-affectnet.txt``), built on PaCa-ViT (Grainger et al., "PaCa-ViT:
Learning Patch-to-Cluster Attention in Vision Transformers", CVPR 2023). Notes: methods.md section 3.

What is implemented:

- Tokens: the image (``image_size``, 96 in the study) is cut into a grid of ``patch_size`` patches
  (36 patches of 16 x 16), each flattened and linearly projected ("linear projection of flattened
  patches"), plus a learned position embedding and a class token; depth-6 pre-norm transformer.
- Readout (``readout``): ``"mean"`` (default, as PaCa-ViT, which has no class token and classifies the
  mean of its tokens): the embedding is the mean over the N patch tokens of the final normalised
  tokens (the class token is left out of the mean; it stays a query and a key / value); a linear head
  gives the logits. ``"cls"``: the class token's final normalised state. In ``cluster_tokens="static"``
  mode the class token attends only to itself and the frozen centroids, so ``readout="cls"`` never sees
  the pixels (``patch_embed`` gets no gradient and the logits ignore the image): kept as a named option
  (the study's background section describes a class-token ViT; CLS vs mean pooling is not specified for
  its model, notes 3).
- Patch clustering (``clustering``): each image's patches are embedded by a frozen network
  (``backbone``: ResNet-50, 2048-d from global average pooling; ImageNet weights with
  ``pretrained="imagenet"`` in the paper profile) and clustered per image into ``clusters`` groups by
  kmeans | agglomerative | spectral | gmm | hdbscan (``fer_bench.clustering``); embeddings and
  assignments are computed once per dataset and cached (training images keyed by the dataset
  fingerprint, images given to predict/embed by a digest of their bytes).
- Patch-to-cluster attention (``PatchToClusterAttention``): queries from the tokens, keys and values
  from the class token and the cluster tokens (centroids of the assignment; empty clusters masked).
  ``cluster_tokens="static"`` (the study read literally): centroids of the frozen patch embeddings,
  layer-normalised once and projected to keys / values by each layer; ``"pooled"`` (as PaCa-ViT
  does with its z): the same hard assignment pools each layer's current normalised tokens, followed
  by a LayerNorm (``cluster_norm``).
- ``clustering="learned"``: PaCa-ViT's own clustering, a head on the first block's normalised patch
  tokens giving (B, N, M) logits, softmax over the N patches per cluster (``learned_head``: "conv" =
  PaCa's P2CConv2d, depthwise 3 x 3 on the patch grid (PaCa uses 7 x 7 on larger grids), GELU, 1 x 1,
  GELU, 1 x 1 to M; "linear" = P2CLinear); later blocks reuse z on their own tokens.
- ``clustering="none"``: plain patch-to-patch attention, the reference ViT (registered as ``vit``).

Choices where the study is silent (named, documented): the class token is a key as well as a query
(so that with every patch its own cluster, pooled patch-to-cluster attention equals patch-to-patch
attention exactly); token width, heads, MLP ratio 4, dropout; each patch is fed to the embedding network
at its native size (``embed_size`` resizes it); a random-init embedding network is drawn with seed
``fer_bench.clustering.EMBEDDER_INIT_SEED`` (shared by all runs, as the study used one set of
embeddings); the clustering has its own ``cluster_seed`` (one clustering per dataset as in the study;
the training ``seed`` varies the network only). Augmentation is off in every profile: it would move
pixels away from the cached assignments.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fer_bench import clustering as PC
from fer_bench.data import FERDataset
from fer_bench.evaluation import MetricSpec
from fer_bench.method import AUGMENT_CHOICES, AUGMENT_SPACE, QUICK_AUGMENT, QUICK_BATCH, QUICK_EPOCHS, QUICK_INIT, Param, ParameterError, TorchMethod
from fer_bench.models.pretrained import SYNTHETIC_FACES, load_trunk, record_of
from fer_bench.registry import register_method
from fer_bench_methods.paca.blocks import (ConvStem, LearnedClustering, PaCaViT, PatchToClusterAttention,  # noqa: F401
                                           assignment_pooling, conv_stem_steps)

log = logging.getLogger(__name__)

EXTERNAL = PC.CLUSTER_METHODS                     # clusterings computed outside the network
CLUSTERINGS = (*EXTERNAL, "learned", "none")
CLUSTER_BACKENDS = ("auto", "sklearn", "torch")   # torch: batched k-means; auto: torch for kmeans, sklearn otherwise


@register_method("paca")
class PaCa(TorchMethod):
    """ViT with patch-to-cluster attention on per-image clusterings of frozen patch embeddings."""

    extra_metrics = (
        MetricSpec("train_seconds_per_epoch", "training wall seconds per epoch", percent=False, higher_is_better=None),
        MetricSpec("cluster_seconds_{split}", "seconds of the per-image clustering of a split (first computation)",
                   percent=False, higher_is_better=None),
        MetricSpec("cluster_ms_per_image_{split}", "milliseconds of clustering per image",
                   percent=False, higher_is_better=None),
        MetricSpec("mean_nonempty_clusters_{split}", "clusters with at least one patch, mean over images",
                   percent=False, higher_is_better=None),
        MetricSpec("frac_images_with_empty_clusters_{split}", "images with an empty cluster",
                   percent=True, higher_is_better=None),
        MetricSpec("{statistic}_per_image_{split}", "clustering health per image: spectral_disconnected, "
                   "spectral_all_zero, hdbscan_noise_points, hdbscan_clusters, hdbscan_more_than_k",
                   percent=False, higher_is_better=None),
    )

    params = {
        "backbone": Param("resnet50", str, doc="frozen patch-embedding network (fer_bench.models.BACKBONES)"),
        "image_size": Param(96, int, low=8, high=512),
        "augment": Param("none", choices=AUGMENT_CHOICES,
                         doc="off by default: augmentation moves pixels away from the cached assignments"),
        "patch_size": Param(16, int, low=1, high=512, doc="patch side; image_size / patch_size = grid"),
        "embed_size": Param(None, int, low=8, high=512, none_ok=True,
                            doc="resize each patch to this size for the embedding network (None: native)"),
        "clustering": Param("kmeans", choices=CLUSTERINGS),
        "clusters": Param(4, int, low=1, doc="k: cluster tokens per image"),
        "cluster_tokens": Param("static", choices=("static", "pooled"),
                                doc="static: frozen-embedding centroids; pooled: the assignment pools each layer's tokens"),
        "cluster_backend": Param("auto", choices=CLUSTER_BACKENDS,
                                 doc="torch: batched k-means over every image at once (kmeans only, scikit-learn's "
                                     "partitions); sklearn: one scikit-learn call per image; auto: torch for kmeans"),
        "cluster_workers": Param(0, int, low=0, doc="process pool size for per-image clustering (0: in process)"),
        "cluster_seed": Param(0, int, low=0, doc="seed of the clustering (kmeans, spectral, gmm)"),
        "kmeans_n_init": Param(1, int, low=1),
        "spectral_affinity": Param("default", choices=PC.SPECTRAL_AFFINITIES),
        "gmm_covariance": Param("diag", choices=("diag", "spherical", "full", "tied")),
        "hdbscan_min_cluster_size": Param(5, int, low=2),
        "hdbscan_noise": Param("nearest", choices=PC.HDBSCAN_NOISE),
        "learned_head": Param("conv", choices=("conv", "linear")),
        "cluster_norm": Param(True, bool, doc="LayerNorm on pooled / learned cluster tokens (PaCa-ViT)"),
        "readout": Param("mean", choices=("mean", "cls"),
                         doc="embedding: mean of the final normalised patch tokens, class token excluded (PaCa-ViT's "
                             "mean pooling); cls: the class token, which in static mode never sees the pixels"),
        "patch_embed": Param("linear", choices=("linear", "conv"),
                             doc="linear: the study's linear projection of flattened patches; conv: a stride-2 "
                                 "3x3 convolutional stem, one token per patch (Xiao et al. 2021; PaCa-ViT's stem "
                                 "is convolutional too)"),
        "dim": Param(192, int, low=1),
        "depth": Param(6, int, low=1),
        "heads": Param(3, int, low=1),
        "mlp_ratio": Param(4.0, float, low=0.0, closed="neither"),
        "dropout": Param(0.1, float, low=0.0, high=1.0, closed="left"),
    }
    profiles = {
        "test": {"backbone": "smallcnn_tiny", "image_size": 24, "patch_size": 8, "embed_size": 16, "clusters": 2,
                 "dim": 32, "depth": 2, "heads": 2, "epochs": 1, "batch_size": 32, "eval_batch_size": 64},
        # CPU minutes: the study's geometry (96 px, 36 patches of 16) with a small random-init embedding
        # network (ImageNet weights cannot be downloaded here) and a narrower ViT of the same depth.
        # patch_embed="conv": from random init at this budget the linear patch projection keeps the ViT, PaCa
        # and the learned clustering at the class prior (also in an independent ViT loop); the paper profile
        # keeps the study's linear projection.
        "quick": {"backbone": "smallcnn_tiny", "image_size": 96, "patch_size": 16, "patch_embed": "conv", "dim": 64,
                  "heads": 4,
                  "epochs": QUICK_EPOCHS, "batch_size": QUICK_BATCH, "lr": 1e-3, "dropout": 0.1,
                  "cluster_workers": 2, "pretrained": QUICK_INIT, "augment": QUICK_AUGMENT},
        # The study: Adam 1e-3, cross-entropy, depth 6, 30 epochs, ResNet-50 (ImageNet) patch embeddings,
        # 96 px / 16 px patches. Width 384 and 6 heads (notes 3.4 item 5), batch 128: our choice.
        "paper": {"backbone": "resnet50", "pretrained": "imagenet", "image_size": 96, "patch_size": 16, "dim": 384,
                  "heads": 6, "epochs": 30, "batch_size": 128, "optimizer": "adam", "lr": 1e-3, "cluster_workers": 8},
    }

    # -- settings ---------------------------------------------------------------------------------------
    def _mode(self) -> str:
        if self.clustering == "none":
            return "none"
        if self.clustering == "learned":
            return "learned"
        return self.cluster_tokens

    def _check_settings(self) -> None:
        name = self.display_name()
        if self.image_size % self.patch_size:
            raise ParameterError(f"The 'image_size' of {name} ({self.image_size}) must be a multiple of 'patch_size' "
                                 f"({self.patch_size}); e.g. 96 and 16 give the study's 6 x 6 grid.")
        if self.patch_embed == "conv":
            try:
                conv_stem_steps(self.patch_size)
            except ValueError as exc:
                raise ParameterError(f"{name}: {exc}") from None
        n = (self.image_size // self.patch_size) ** 2
        if self.clusters > n:
            raise ParameterError(f"The 'clusters' parameter of {name} must be <= the {n} patches per image. "
                                 f"Got {self.clusters} instead.")
        if self.cluster_backend == "torch" and self.clustering != "kmeans":
            raise ParameterError(f"cluster_backend='torch' of {name} implements k-means only; got clustering="
                                 f"{self.clustering!r}. Use cluster_backend='sklearn'.")
        if self.dim % self.heads:
            raise ParameterError(f"The 'dim' of {name} ({self.dim}) must be divisible by 'heads' ({self.heads}).")

    def _embed_settings(self) -> PC.EmbedSettings:
        return PC.EmbedSettings(backbone=self.backbone, pretrained=self.pretrained, image_size=self.image_size,
                                patch_size=self.patch_size, embed_size=self.embed_size)

    def _cluster_settings(self) -> PC.ClusterSettings:
        return PC.ClusterSettings(method=self.clustering, k=self.clusters, seed=self.cluster_seed,
                                  kmeans_n_init=self.kmeans_n_init, spectral_affinity=self.spectral_affinity,
                                  gmm_covariance=self.gmm_covariance,
                                  hdbscan_min_cluster_size=self.hdbscan_min_cluster_size,
                                  hdbscan_noise=self.hdbscan_noise)

    def _static_dim(self) -> int | None:
        if self._mode() != "static":
            return None
        if not hasattr(self, "static_dim_"):
            shape_only = dataclasses.replace(self._embed_settings(), pretrained=None)   # no weights needed for D_e
            self.static_dim_ = PC.build_embedder(shape_only, "cpu").out_dim
        return self.static_dim_

    # -- clustering data --------------------------------------------------------------------------------
    def _aux(self, images: np.ndarray, data_key: str | None = None, role: str = "predict") -> tuple:
        """(assign int64 (N, P), centroids float16 (N, M, D_e) or None) of ``images``, through the cache."""
        if self.clustering in ("learned", "none"):
            return (None, None)
        key = PC.data_key(images, data_key)
        last = getattr(self, "_aux_memo", None)
        if last is not None and last[0] == key:
            return last[1]
        device = str(getattr(self, "device_", "cpu"))
        emb, emb_key = PC.patch_embeddings(images, key, self._embed_settings(), device=device)
        backend = self.cluster_backend
        if backend == "auto":
            backend = "torch" if self.clustering == "kmeans" else "sklearn"
        labels, stats = PC.cached_assignments(emb, emb_key, self._cluster_settings(), backend=backend,
                                              workers=self.cluster_workers, device=device)
        self.cluster_stats_ = getattr(self, "cluster_stats_", {})
        self.cluster_stats_[role if role == "train" else key] = stats
        assign = torch.from_numpy(labels.astype(np.int64))              # (N, P)
        centroids = None
        if self._mode() == "static":
            out = []
            for a in range(0, len(emb), 512):
                e = torch.from_numpy(np.asarray(emb[a:a + 512], dtype=np.float32))        # (b, P, D_e)
                z, _ = assignment_pooling(assign[a:a + 512], self.clusters)             # (b, M, P)
                out.append((z @ e).half())                                              # (b, M, D_e)
            centroids = torch.cat(out) if out else torch.empty(0, self.clusters, emb.shape[-1], dtype=torch.float16)
        self._aux_memo = (key, (assign, centroids))
        return assign, centroids

    # -- training hooks ----------------------------------------------------------------------------------
    def _load_training_data(self, train: FERDataset) -> None:
        self._check_settings()              # before the resize and the clustering (build checks again)
        self.cluster_stats_ = {}
        super()._load_training_data(train)
        self.train_assign_, self.train_centroids_ = self._aux(train.images, train.fingerprint, role="train")

    def _release_training_data(self) -> None:
        super()._release_training_data()
        for name in ("train_assign_", "train_centroids_"):
            if hasattr(self, name):
                delattr(self, name)

    def build(self, num_classes: int) -> nn.Module:
        self._check_settings()
        net = PaCaViT(num_classes, self.image_size, self.patch_size, self.dim, self.depth, self.heads, self.mlp_ratio,
                      self.dropout, self._mode(), self.clusters, self._static_dim(), self.cluster_norm,
                      self.learned_head, self.readout, self.patch_embed)
        if self.patch_embed == "conv" and self.pretrained is not None and self.pretrained.lower() == SYNTHETIC_FACES:
            load_trunk(net.patch_embed, SYNTHETIC_FACES, self._stem_key())
        return net

    def _stem_key(self) -> str:
        return f"paca_convstem_p{self.patch_size}_d{self.dim}"

    def weights_used(self) -> list[dict[str, str]]:
        """The ViT's stem (``synthetic-faces`` only) and the frozen patch-embedding network (any ``pretrained``)."""
        used = super().weights_used()
        embedder = record_of(self.pretrained, self.backbone) if self.clustering in EXTERNAL else None
        return used + ([embedder] if embedder and embedder not in used else [])

    def make_batch(self, index: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        batch = super().make_batch(index, generator)
        if self.train_assign_ is not None:
            batch["assign"] = self.train_assign_[index].to(self.device_)                # (B, P)
        if self.train_centroids_ is not None:
            batch["centroids"] = self.train_centroids_[index].to(self.device_)          # (B, M, D_e)
        return batch

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(self.model_(batch["x"], batch.get("assign"), batch.get("centroids")), batch["y"])

    # -- evaluation ----------------------------------------------------------------------------------------
    def _map(self, images: np.ndarray, fn) -> torch.Tensor:
        assign, centroids = self._aux(images)
        pos = [0]

        def step(x: torch.Tensor) -> torch.Tensor:
            a, b = pos[0], pos[0] + len(x)
            pos[0] = b
            return fn(x, None if assign is None else assign[a:b].to(x.device),
                      None if centroids is None else centroids[a:b].to(x.device))

        return self.map_batches(images, step)

    def _predict_proba(self, images: np.ndarray) -> np.ndarray:
        return torch.softmax(self._map(images, self.model_), dim=1).numpy()

    def _embed(self, images: np.ndarray) -> np.ndarray:
        return self._map(images, self.model_.features).numpy()

    def extra_results(self, out_dir: Path, train: FERDataset, test: FERDataset) -> dict[str, float]:
        """Clustering cost and health: seconds (first computation, train and test), spectral graphs that
        fell apart, HDBSCAN cluster / noise counts, images with empty clusters, training seconds per epoch."""
        out: dict[str, float] = {}
        info = getattr(self, "train_info_", {})
        if info.get("train_seconds") and info.get("history"):
            out["train_seconds_per_epoch"] = info["train_seconds"] / len(info["history"])
        recorded = getattr(self, "cluster_stats_", {})
        test_key = PC.data_key(test.images) if self.clustering in EXTERNAL else None
        for role, stats in (("train", recorded.get("train")), ("test", recorded.get(test_key))):
            if stats is None:
                continue
            n = max(stats.get("images", 0), 1)
            out[f"cluster_seconds_{role}"] = float(stats.get("seconds", math.nan))
            out[f"cluster_ms_per_image_{role}"] = 1000.0 * float(stats.get("seconds", math.nan)) / n
            out[f"mean_nonempty_clusters_{role}"] = float(stats.get("mean_nonempty_clusters", math.nan))
            out[f"frac_images_with_empty_clusters_{role}"] = stats.get("images_with_empty_clusters", 0) / n
            for key in ("spectral_disconnected", "spectral_all_zero", "hdbscan_noise_points", "hdbscan_clusters",
                        "hdbscan_more_than_k"):
                if key in stats:
                    out[f"{key}_per_image_{role}"] = stats[key] / n
        return out


# paca_learned and vit cluster nothing: cluster_backend is unused there, and stays at its old default so that
# their committed cells keep their ids; with no cached assignments they may augment, so a search may try it
UNUSED_BACKEND = Param("sklearn", choices=CLUSTER_BACKENDS, doc="unused (no per-image clustering)")
FREE_AUGMENT = Param("none", choices=AUGMENT_CHOICES, search=AUGMENT_SPACE,
                     doc="no per-image clustering to keep in step with the pixels")


@register_method("paca_learned")
class PaCaLearned(PaCa):
    """PaCa-ViT's learned clustering head (softmax over patches per cluster) in the same ViT."""

    params = {"clustering": Param("learned", choices=CLUSTERINGS), "cluster_backend": UNUSED_BACKEND,
              "augment": FREE_AUGMENT}


@register_method("vit")
class ViT(PaCa):
    """The reference ViT: plain patch-to-patch attention, same tokens and depth."""

    params = {"clustering": Param("none", choices=CLUSTERINGS), "cluster_backend": UNUSED_BACKEND,
              "augment": FREE_AUGMENT}
