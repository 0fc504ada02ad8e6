"""SGMLoss, its triplet baseline and Deep Gaussian Mixture sub-spaces.

Marrero Fernandez, Ren, Tsang, Guerrero Pena and Cunha, "Deep Metric Structured Learning for Facial
Expression Recognition" (the SGMLoss paper); what the authors' code does is in
``shared/notes/methods.md`` section 1. Implemented here:

- ``sgm`` (``SGM``): the Structured Gaussian Manifold loss (section 3.1, Eq. 1-4, Algorithm 1). Per
  batch, the class means ``mu_j`` of the embeddings (gradients flow through them), the posterior of
  each class under isotropic Gaussians N(mu_j, sigma^2 I) with equal priors over the classes present
  in the batch, the mean over samples of the squared L2 distance between that posterior and the
  one-hot label, plus ``reg_lambda`` x the mean per-sample embedding norm (Algorithm 1, line 6; the
  paper gives no lambda: 1e-3 is our default, the authors' FERAtt code uses 1e-4 x the Frobenius norm
  of the batch). The posterior is computed as ``softmax(-d^2 / (2 sigma^2))``, which equals the
  paper's ratio of Gaussians exactly but does not underflow in float32 (the literal ``exp`` does once
  d^2 > ~50 at sigma 0.5, which makes the loss 1 with zero gradient). Batches hold exactly
  ``n_per_class`` images of every class (the paper's n x c batch, n = 30). The authors' ``mix`` and
  ``knn`` loss extras are not in the paper and are left out. The paper does not say how the embedding
  layer starts: ``init_spread`` (the quick profile's 16 from the face-pretrained trunk) rescales its initial weights so that initial
  training embeddings lie ``d^2 / (2 sigma^2) = init_spread`` apart on average, which keeps a fixed
  sigma meaningful whatever the trunk's feature scale (None: PyTorch's default init).
- ``triplet`` (``Triplet``): the paper's TripletLoss baseline. ``sampling='random'`` (the ``paper``
  profile) trains it as the authors' TorchMtc code: random triplets (anchors balanced over classes, a
  random positive of the anchor's class other than the anchor, a negative drawn uniformly from the other
  classes, no mining), margin 1.0 on raw Euclidean distances, averaged over triplets, plus
  ``reg_lambda`` x the sum of the Frobenius norms of the anchor, positive and negative batches (1e-3 in
  that code). ``sampling='batch_all'`` (the ``test`` and ``quick`` profiles, a named deviation) draws
  class-balanced batches and uses every valid in-batch triplet (Hermans et al. 2017), averaged over the
  triplets with a non-zero hinge, plus ``reg_lambda`` x the Frobenius norm of the batch: with random
  triplets the quick run never left the untrained network's accuracy.
- All three are ``EmbeddingMethod``s (``fer_bench.method``): they classify with a kNN vote (k = 11,
  Table 2) among the training embeddings, computed once after ``fit`` (ties go to the smaller class
  index, as scikit-learn's classifier the authors used); ``SGM`` can instead return the Gaussian
  posterior around the training class means (``classifier='gaussian'``, Eq. 1 and 5: its arg-max is the
  nearest class mean). ``embed`` is the 64-d embedding (a linear layer on the backbone's pooled vector,
  no normalisation). Batches of SGM and batch-all triplets hold ``n_per_class`` images of every class
  (None: ``batch_size // classes``, so a step has about ``batch_size`` anchors like every other method).
- ``dgms`` (``DGMS``): Deep Gaussian Mixture Sub-space learning (section 3.2, Algorithm 2), as stages of
  one fit: ``epochs`` (the whole budget) is split into ``levels`` equal stages. Level 1 trains SGM on
  the labels; at the start of each level l = 2..L the current embeddings of the training set are split
  class by class into ``min(l, n_c // mc)`` components with EM (scikit-learn ``GaussianMixture``, full
  covariance), the components are relabelled with running offsets and training continues on the
  sub-classes with the same network and optimizer (a warm start, as the authors' ``train_mitosis.py``;
  the printed algorithm never increments l, we do). The sub-class labels travel in the checkpoint.
  ``extra_results`` writes the sub-class assignments, for a chosen class the 16 training images
  nearest each sub-class medoid (Figures 8-9) and a 2-D map coloured by sub-class (Figure 7), and,
  when the test set carries the true ``variant`` factor (the synthetic dataset), the NMI between the
  discovered sub-classes and it.

The paper's "CNN" row is the ``baseline`` method; the architecture rows are backbones
(``fer_bench/models/sgm_backbones.py`` adds fmpnet, cvgg13 and preactresnet18).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import ClassVar, Iterator

import numpy as np
import torch
from torch import nn

import fer_bench.models.sgm_backbones  # noqa: F401  (registers fmpnet, cvgg13, preactresnet18)
from fer_bench import metrics as M
from fer_bench.data import FERDataset
from fer_bench.evaluation import MetricSpec
from fer_bench.method import QUICK_AUGMENT, QUICK_BATCH, QUICK_EPOCHS, QUICK_INIT, EmbeddingMethod, Param, nearest_centroid
from fer_bench.params import log_uniform
from fer_bench.models import build_backbone
from fer_bench.registry import register_method
from fer_bench_methods.sgm.losses import (batch_all_triplet_loss, gmm_split, n_per_class_batches,  # noqa: F401
                                        random_triplets, sgm_loss, sgm_posterior, triplet_loss)

log = logging.getLogger(__name__)

F1_NEIGHBOURS: tuple[int, ...] = (1, 3, 5, 7, 9, 11, 15, 21, 31)   # Figure 5's x axis


# --------------------------------------------------------------------------------------------------
# Methods


class EmbeddingNet(nn.Module):
    """backbone -> pooled vector (B, D) -> linear (B, dim): the embedding, not normalised."""

    def __init__(self, backbone: nn.Module, dim: int):
        super().__init__()
        self.backbone = backbone
        self.embed = nn.Linear(backbone.out_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(self.backbone(x)[1])                          # (B, dim)


@torch.no_grad()
def scale_to_spread(net: EmbeddingNet, x: torch.Tensor, sigma: float, target: float) -> float:
    """Rescale ``net.embed`` (weight and bias) so that mean_{i,j} ||z_i - z_j||^2 / (2 sigma^2) over the
    embeddings of ``x`` is ``target``; returns the factor. Pairwise distances are linear in the layer, so one
    factor does it. Measured in training mode (the loss's view: BatchNorm on batch statistics); the
    network's buffers (BatchNorm running statistics) are restored afterwards."""
    buffers = {name: b.clone() for name, b in net.named_buffers()}
    was_training = net.training
    net.train()
    z = net(x)                                                          # (B, dim)
    net.train(was_training)
    for name, b in net.named_buffers():
        b.copy_(buffers[name])
    spread = torch.cdist(z, z).pow(2).mean() / (2 * sigma ** 2)
    factor = float(torch.sqrt(target / spread.clamp_min(1e-12)))
    net.embed.weight.mul_(factor)
    net.embed.bias.mul_(factor)
    return factor


class MetricEmbedding(EmbeddingMethod):
    """Shared part of SGM and Triplet: the embedding net; the kNN / centroid classifier is the base's."""

    extra_metrics = (
        MetricSpec("knn_f1@{k}", "F1 (of macro P and R) of the k-NN classifier, test split (Figure 5)"),
        MetricSpec("ncm_acc", "accuracy of the nearest training-class mean (Eq. 5)"),
    )
    params: ClassVar[dict[str, Param]] = {
        "embedding_dim": Param(64, int, low=1, doc="embedding dimension (the paper's 64)"),
        "knn_k": Param(11, int, low=1, doc="neighbours of the kNN classifier (Table 2: 11)"),
        "reg_lambda": Param(1e-3, float, low=0.0, doc="weight of the embedding-norm regulariser"),
        "n_per_class": Param(None, int, low=1, none_ok=True,
                             doc="class-balanced batches: images of every class per batch (None: batch_size // classes)"),
    }

    def build(self, num_classes: int) -> nn.Module:
        backbone = build_backbone(self.backbone, pretrained=self.pretrained, in_size=self.image_size)
        return EmbeddingNet(backbone, self.embedding_dim)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model_(x)                                           # (B, dim)

    def balanced_batches(self, generator: torch.Generator, num_batches: int | None = None) -> Iterator[torch.Tensor]:
        """Batches of ``n_per_class`` images of every class of the current training labels (about
        ``batch_size`` anchors each when ``n_per_class`` is None), an epoch holding about one pass."""
        labels = self.train_labels_.cpu().numpy()
        n = self.n_per_class or max(2, self.batch_size // len(np.unique(labels)))
        return n_per_class_batches(labels, n, generator, num_batches)

    # -- extra results: Figure 5 and the nearest-class-mean rule -------------------------------------
    def extra_results(self, out_dir: Path, train: FERDataset, test: FERDataset) -> dict[str, float]:
        """``knn_f1@k`` (the paper's F1 of the kNN classifier for each k of Figure 5, test split)
        and ``ncm_acc`` (nearest training-class mean, Eq. 5)."""
        emb = self._embed(test.images)                                  # (N, dim)
        gallery, labels = self.gallery_emb_.numpy(), self.gallery_labels_.numpy()
        ks = [k for k in F1_NEIGHBOURS if k <= len(labels)]
        shares = M.knn_predict_proba_at(gallery, labels, emb, ks, self.num_classes_, device=self.device_)   # k: (N, C)
        out = {f"knn_f1@{k}": M.sgm_f1(test.labels, shares[k].argmax(1), self.num_classes_) for k in ks}
        ncm = nearest_centroid(torch.from_numpy(emb), self.gallery_emb_, self.gallery_labels_, self.num_classes_)
        out["ncm_acc"] = float((ncm.numpy() == test.labels).mean())
        return out


@register_method("sgm")
class SGM(MetricEmbedding):
    """Structured Gaussian Manifold loss on n-per-class batches; kNN or Gaussian-posterior classifier."""

    params: ClassVar[dict[str, Param]] = {
        "sigma": Param(0.5, float, low=0.0, closed="neither", search=log_uniform(0.1, 2.0), doc="std of the class Gaussians (the paper's 0.5)"),
        "batches_per_epoch": Param(None, int, low=1, none_ok=True,
                                   doc="None: len(train) // (n_per_class * classes)"),
        "classifier": Param("knn", choices=("knn", "gaussian"),
                            doc="predict_proba from the kNN vote or the Gaussian posterior around training class means"),
        "init_spread": Param(None, float, low=0.0, closed="neither", none_ok=True, id_neutral=True,
                             doc="None: PyTorch's default init of the embedding layer; a number T: that layer's initial "
                                 "weights rescaled so the mean d^2 / (2 sigma^2) over pairs of initial training "
                                 "embeddings is T (the paper does not say how the layer starts)"),
    }
    profiles = {
        "test": {"epochs": 1, "image_size": 24, "n_per_class": 8, "eval_batch_size": 64},
        # Quick (named deviations): 18 images of each of the 7 classes per batch (126 anchors, the budget's
        # 128 per step; the paper's n = 30) and a constant learning rate. The old cosine schedule annealed
        # the lr to 0 over 330 steps while SGM was still learning (46.7 % test accuracy against 58.7 % with
        # no schedule, seed 0): its learning curve had not flattened when the lr ran out.
        # From the face-pretrained trunk (inits, #16/#17), init_spread 16: its pooled features are 2.7x the random
        # trunk's (norm 28.3 vs 10.6), so with PyTorch's default init of the embedding layer the initial
        # embeddings sit ~220 (d^2 / 2 sigma^2) apart against ~14 from the random trunk, the regime in which
        # sigma 0.5 and lr 1e-3 were chosen: the posterior saturates and the pretrained run fell below the
        # scratch one (54.7 % against 61.4 %, seeds 0-2). Rescaling the layer to a spread of 16 gave 62.1 %
        # (seed 0, against 57.1 %); an equal-effort search (8 trials on validation) pointed the same way: its
        # best sigma, 1.79, gives the same initial spread. From random init the spread is already ~14.
        "quick": {"augment": QUICK_AUGMENT, "epochs": QUICK_EPOCHS, "image_size": 48, "batch_size": QUICK_BATCH, "lr": 1e-3, "scheduler": "none",
                  "pretrained": QUICK_INIT, "inits": {QUICK_INIT: {"init_spread": 16.0}}},
        # Section 4.1: Adam, lr 1e-4, n = 30 per class, 64-d embedding. The epoch count and input size of
        # the SGM runs are not given: 150 epochs (the authors' triplet script) and ResNet18 at 112 px.
        "paper": {"backbone": "resnet18", "pretrained": "imagenet", "image_size": 112, "epochs": 150,
                  "n_per_class": 30, "optimizer": "adam", "lr": 1e-4, "augment": "standard", "select": "last"},
    }

    def centroid_sigma(self) -> float:
        return self.sigma

    def on_fit_start(self, train: FERDataset) -> None:
        if self.init_spread is not None:
            self.spread_scale_ = scale_to_spread(self.model_, self.fetch(self.spread_probe(), augment=False),
                                                 self.sigma, self.init_spread)

    def spread_probe(self, count: int = 512) -> torch.Tensor:
        """Training rows that measure the initial spread: ``count`` drawn with the run's seed."""
        generator = torch.Generator().manual_seed(self.seed)
        return torch.randperm(len(self.train_labels_), generator=generator)[:count]

    def sampler(self, train: FERDataset, generator: torch.Generator) -> Iterator[torch.Tensor]:
        return self.balanced_batches(generator, self.batches_per_epoch)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return sgm_loss(self.model_(batch["x"]), batch["y"], self.sigma, self.reg_lambda)


@register_method("triplet")
class Triplet(MetricEmbedding):
    """Triplet margin loss (the SGMLoss paper's TripletLoss baseline); kNN classifier.

    ``sampling='random'`` is the paper's regime (offline random triplets, the authors' TorchMtc code);
    ``'batch_all'`` (Hermans et al. 2017) uses class-balanced batches and every valid in-batch triplet,
    averaged over the triplets with a non-zero hinge (pytorch-metric-learning's default reduction).
    """

    params: ClassVar[dict[str, Param]] = {
        "margin": Param(1.0, float, low=0.0, closed="neither", search=log_uniform(0.05, 2.0), doc="triplet margin on raw Euclidean distances"),
        "sampling": Param("random", choices=("random", "batch_all"),
                          doc="random: offline random triplets (paper); batch_all: every triplet of a class-balanced batch"),
        "triplets_per_batch": Param(128, int, low=1, doc="sampling='random': triplets per step (the paper's 128)"),
        "triplets_per_epoch": Param(None, int, low=1, none_ok=True,
                                    doc="sampling='random': None = len(train), one triplet per training image as anchor"),
    }
    profiles = {
        # Quick and test (named deviation): class-balanced batches with all in-batch triplets. The paper's
        # 128 offline random triplets per step left the quick run at the untrained network's accuracy
        # (31.8 % test against 32.6 % before training; anchor-positive = anchor-negative distances), while
        # the same trunk and loss on balanced batches learned (45.7 % at 6 epochs).
        "test": {"epochs": 1, "image_size": 24, "sampling": "batch_all", "n_per_class": 8, "eval_batch_size": 64},
        "quick": {"augment": QUICK_AUGMENT, "epochs": QUICK_EPOCHS, "image_size": 48, "batch_size": QUICK_BATCH, "sampling": "batch_all", "lr": 1e-3,
                  "scheduler": "none", "pretrained": QUICK_INIT},
        # Section 4.1 and the authors' TorchMtc scripts: Adam lr 1e-4, 128 triplets per batch, 150 epochs
        # of 160,000 random triplets, 64-d embedding.
        "paper": {"backbone": "resnet18", "pretrained": "imagenet", "image_size": 112, "epochs": 150,
                  "sampling": "random", "triplets_per_epoch": 160_000, "optimizer": "adam", "lr": 1e-4,
                  "augment": "standard", "select": "last"},
    }

    def sampler(self, train: FERDataset, generator: torch.Generator) -> Iterator[torch.Tensor]:
        """batch_all: class-balanced index batches; random: flat ``[anchors, positives, negatives]`` of
        ``triplets_per_batch`` triplets."""
        if self.sampling == "batch_all":
            yield from self.balanced_batches(generator)
            return
        labels = self.train_labels_.cpu().numpy()
        count = self.triplets_per_epoch or len(labels)
        triplets = random_triplets(labels, count, generator)           # (count, 3)
        for start in range(0, len(triplets), self.triplets_per_batch):
            yield triplets[start:start + self.triplets_per_batch].T.reshape(-1)   # (3T,)

    def batch_anchors(self, batch: dict[str, torch.Tensor]) -> int:
        return len(batch["y"]) if self.sampling == "batch_all" else len(batch["y"]) // 3

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        z = self.model_(batch["x"])                                     # (B, dim) or (3T, dim)
        if self.sampling == "batch_all":
            return batch_all_triplet_loss(z, batch["y"], self.margin, self.reg_lambda)
        a, p, n = z.view(3, -1, z.shape[1]).unbind(0)                   # 3 x (T, dim)
        return triplet_loss(a, p, n, self.margin, self.reg_lambda)
