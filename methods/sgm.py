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
  ``knn`` loss extras are not in the paper and are left out.
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
from typing import Any, ClassVar, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import fer_bench.models.sgm_backbones  # noqa: F401  (registers fmpnet, cvgg13, preactresnet18)
from fer_bench import labels as L
from fer_bench import metrics as M
from fer_bench.data import FERDataset
from fer_bench.evaluation import MetricSpec
from fer_bench.method import (QUICK_BATCH, QUICK_EPOCHS, QUICK_INIT, EmbeddingMethod, Param, ParameterError, class_means,
                              gaussian_logits)
from fer_bench.params import log_uniform
from fer_bench.models import build_backbone
from fer_bench.registry import register_method

log = logging.getLogger(__name__)

F1_NEIGHBOURS: tuple[int, ...] = (1, 3, 5, 7, 9, 11, 15, 21, 31)   # Figure 5's x axis


# --------------------------------------------------------------------------------------------------
# Losses


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


# --------------------------------------------------------------------------------------------------
# Samplers


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


# --------------------------------------------------------------------------------------------------
# Deep Gaussian Mixture split (Algorithm 2, lines 9-15)


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
        idx = M.knn_indices(emb, gallery, ks[-1], device=self.device_)  # (N, kmax)
        nl = labels[idx]                                                # (N, kmax)
        out = {}
        for k in ks:
            votes = np.zeros((len(emb), self.num_classes_), dtype=np.int64)
            np.add.at(votes, (np.repeat(np.arange(len(emb)), k), nl[:, :k].ravel()), 1)
            out[f"knn_f1@{k}"] = M.sgm_f1(test.labels, votes.argmax(1), self.num_classes_)
        means = class_means(self.gallery_emb_, self.gallery_labels_, self.num_classes_)
        out["ncm_acc"] = float((_nearest_mean(torch.from_numpy(emb), means).numpy() == test.labels).mean())
        return out


def _nearest_mean(emb: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    return gaussian_logits(emb, means, 1.0).argmax(1)                   # (N,)


@register_method("sgm")
class SGM(MetricEmbedding):
    """Structured Gaussian Manifold loss on n-per-class batches; kNN or Gaussian-posterior classifier."""

    params: ClassVar[dict[str, Param]] = {
        "sigma": Param(0.5, float, low=0.0, closed="neither", search=log_uniform(0.1, 2.0), doc="std of the class Gaussians (the paper's 0.5)"),
        "batches_per_epoch": Param(None, int, low=1, none_ok=True,
                                   doc="None: len(train) // (n_per_class * classes)"),
        "classifier": Param("knn", choices=("knn", "gaussian"),
                            doc="predict_proba from the kNN vote or the Gaussian posterior around training class means"),
    }
    profiles = {
        "test": {"epochs": 1, "image_size": 24, "n_per_class": 8, "eval_batch_size": 64},
        # Quick (named deviations): 18 images of each of the 7 classes per batch (126 anchors, the budget's
        # 128 per step; the paper's n = 30) and a constant learning rate. The old cosine schedule annealed
        # the lr to 0 over 330 steps while SGM was still learning (46.7 % test accuracy against 58.7 % with
        # no schedule, seed 0): its learning curve had not flattened when the lr ran out.
        "quick": {"epochs": QUICK_EPOCHS, "image_size": 48, "batch_size": QUICK_BATCH, "lr": 1e-3, "scheduler": "none",
                  "pretrained": QUICK_INIT},
        # Section 4.1: Adam, lr 1e-4, n = 30 per class, 64-d embedding. The epoch count and input size of
        # the SGM runs are not given: 150 epochs (the authors' triplet script) and ResNet18 at 112 px.
        "paper": {"backbone": "resnet18", "pretrained": "imagenet", "image_size": 112, "epochs": 150,
                  "n_per_class": 30, "optimizer": "adam", "lr": 1e-4, "augment": "standard", "select": "last"},
    }

    def centroid_sigma(self) -> float:
        return self.sigma

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
        "quick": {"epochs": QUICK_EPOCHS, "image_size": 48, "batch_size": QUICK_BATCH, "sampling": "batch_all", "lr": 1e-3,
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


@register_method("dgms")
class DGMS(SGM):
    """Deep Gaussian Mixture Sub-space learning: SGM retrained on EM-split sub-classes, level after level.

    One fit of ``epochs`` epochs (the whole budget) in ``levels`` equal stages: at the start of stage l
    (l >= 2) the current embeddings of the training set are split by EM and training continues on the
    sub-classes (same network and optimizer: a warm start, as ``train_mitosis.py``).
    """

    extra_metrics = (
        MetricSpec("dgms_subclasses", "sub-classes after the last level", percent=False, higher_is_better=None,
                   digits=0),
        MetricSpec("dgms_variant_nmi_{split}", "within-class NMI of the sub-classes with the generator's variants"),
    )

    params: ClassVar[dict[str, Param]] = {
        "levels": Param(5, int, low=1, doc="L: the last level splits each class into up to L sub-classes"),
        "mc": Param(10, int, low=1, doc="a class of n images gets at most n // mc sub-classes"),
        "gmm_covariance": Param("full", choices=("full", "diag"), doc="covariance of the EM components"),
        "gmm_reg_covar": Param(1e-3, float, low=0.0, closed="neither",
                               doc="added to the covariance diagonals (64-d full covariances of small classes)"),
        "figure_class": Param(None, str, none_ok=True,
                              doc="emotion shown in the top-16 figure (None: the class with most sub-classes)"),
        "top_k": Param(16, int, low=1, doc="images per sub-class in the medoid figure (Figures 8-9: 16)"),
    }
    profiles = {
        "test": {"epochs": 2, "image_size": 24, "n_per_class": 8, "eval_batch_size": 64, "levels": 2, "mc": 4,
                 "gmm_covariance": "diag"},
        # Quick: the budget's 10 epochs over 3 levels (3, 4 and 3 epochs), constant lr as SGM's quick.
        "quick": {"epochs": QUICK_EPOCHS, "image_size": 48, "batch_size": QUICK_BATCH, "lr": 1e-3, "scheduler": "none", "levels": 3,
                  "pretrained": QUICK_INIT},
        # Section 4.2.3: ResNet18, Adam lr 1e-4, batch 640, 500 epochs, L = 5; Mc = 10 from train_mitosis.py.
        # ``epochs`` is the whole fit: 500 = 100 per level x 5 levels.
        "paper": {"backbone": "resnet18", "pretrained": "imagenet", "image_size": 112, "epochs": 500, "levels": 5,
                  "n_per_class": 30, "optimizer": "adam", "lr": 1e-4, "augment": "standard", "select": "last"},
    }

    def level_start(self, level: int) -> int:
        """0-based epoch at which ``level`` (1-based) begins."""
        return int(round((level - 1) * self.epochs / self.levels))

    def on_fit_start(self, train: FERDataset) -> None:
        if self.epochs < self.levels:
            raise ParameterError(f"dgms: epochs ({self.epochs}) is the whole fit and must be >= levels ({self.levels}), "
                                 f"so that every level trains; raise epochs or lower levels.")
        self.class_labels_ = self.train_labels_.clone()
        self.parent_ = torch.arange(self.num_classes_)
        self.level_ = 1
        self.levels_ = [{"level": 1, "subclasses": self.num_classes_, "epoch": 0}]

    def on_epoch_start(self, epoch: int) -> None:
        level = max(lv for lv in range(1, self.levels + 1) if self.level_start(lv) <= epoch)
        if level <= self.level_:
            return
        sub, parent = gmm_split(self.train_embeddings(), self.class_labels_.cpu().numpy(), level, self.mc,
                                self.gmm_covariance, self.gmm_reg_covar, self.seed)
        self.train_labels_ = torch.from_numpy(sub).to(self.class_labels_.device)
        self.parent_ = torch.from_numpy(parent)
        self.level_ = level
        self.levels_.append({"level": level, "subclasses": len(parent), "epoch": epoch})

    def training_state(self) -> dict[str, Any]:
        return {"level": self.level_, "labels": self.train_labels_.cpu(), "parent": self.parent_,
                "levels": self.levels_}

    def load_training_state(self, state: dict[str, Any]) -> None:
        self.level_, self.parent_, self.levels_ = state["level"], state["parent"], state["levels"]
        self.train_labels_ = state["labels"].to(self.class_labels_.device)

    def after_fit(self, train: FERDataset) -> None:
        self.subclass_labels_ = self.train_labels_.cpu()
        super().after_fit(train)
        del self.level_, self.class_labels_

    def gallery_classes(self, train_labels: np.ndarray) -> np.ndarray:
        return self.parent_.numpy()[np.asarray(train_labels)]

    def _get_state(self) -> dict[str, Any]:
        return {**super()._get_state(), "parent": self.parent_, "subclass_labels": self.subclass_labels_}

    def _set_state(self, state: dict[str, Any]) -> None:
        self.parent_ = state.pop("parent")
        self.subclass_labels_ = state.pop("subclass_labels")
        super()._set_state(state)

    # -- sub-classes ---------------------------------------------------------------------------------
    def subclass_means(self) -> torch.Tensor:
        """(K, d) means of the training embeddings of each sub-class (final model)."""
        return class_means(self.gallery_emb_, self.subclass_labels_, len(self.parent_))

    def assign_subclasses(self, emb: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """(N,) nearest sub-class mean among the sub-classes of each row's class (Eq. 5 within a class)."""
        logits = gaussian_logits(torch.from_numpy(np.asarray(emb, np.float32)), self.subclass_means(), 1.0)  # (N, K)
        allowed = self.parent_[None, :] == torch.from_numpy(np.asarray(classes))[:, None]                       # (N, K)
        return logits.masked_fill(~allowed, float("-inf")).argmax(1).numpy()

    def extra_results(self, out_dir: Path, train: FERDataset, test: FERDataset) -> dict[str, float]:
        out = super().extra_results(out_dir, train, test)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        parent = self.parent_.numpy()
        train_sub = self.subclass_labels_.numpy()
        test_emb = self._embed(test.images)
        test_sub = self.assign_subclasses(test_emb, test.labels)
        np.save(out_dir / "subclass_parent.npy", parent)
        np.save(out_dir / "train_subclass.npy", train_sub)
        np.save(out_dir / "test_subclass.npy", test_sub)
        out["dgms_subclasses"] = float(len(parent))
        for split, data, sub in (("train", train, train_sub), ("test", test, test_sub)):
            if data.factors is not None and "variant" in getattr(data.factors, "columns", ()):
                variant = np.asarray(data.factors["variant"])
                out[f"dgms_variant_nmi_{split}"] = within_class_nmi(sub, variant, data.labels)
        names = [f"{L.names([train.classes[c]])[0]}.{j}" for c, j in zip(parent, _rank_within(parent))]
        from fer_bench import plots as P
        P.plot_embedding_2d(self.gallery_emb_.numpy(), train_sub, names, out_dir / "dgms_embedding_subclasses.png",
                            seed=self.seed, title="DGMS sub-classes (training embeddings, PCA)")
        self._medoid_figure(out_dir / "dgms_top16.png", train)
        return out

    def _medoid_figure(self, path: Path, train: FERDataset) -> Path:
        """For the chosen class, the ``top_k`` training images nearest each sub-class medoid, one row each
        (the medoid is the member nearest the sub-class mean; Figures 8-9)."""
        from fer_bench import plots as P

        parent = self.parent_.numpy()
        if self.figure_class is None:
            chosen = int(np.bincount(parent).argmax())
        else:
            cid = L.canonical_id(self.figure_class)
            if cid not in train.classes:
                raise ParameterError(f"The 'figure_class' parameter of {self.display_name()} must be a class of the "
                                     f"training data ({', '.join(train.class_names)}). Got {self.figure_class!r} instead.")
            chosen = train.classes.index(cid)
        emb, sub = self.gallery_emb_, self.subclass_labels_.numpy()
        rows = [k for k in range(len(parent)) if parent[k] == chosen]
        fig = P._new_figure(self.top_k * 0.8 + 1.5, len(rows) * 0.9 + 0.5)
        for r, k in enumerate(rows):
            members = np.flatnonzero(sub == k)
            z = emb[members]                                                    # (n_k, d)
            medoid = members[int((z - z.mean(0)).norm(dim=1).argmin())]
            order = (z - emb[medoid]).norm(dim=1).argsort()[: self.top_k].numpy()
            variant = ""
            if train.factors is not None and "variant_name" in getattr(train.factors, "columns", ()):
                names = train.factors["variant_name"].to_numpy()[members]
                top, count = np.unique(names, return_counts=True)
                variant = f"\n{top[count.argmax()]} {count.max() / len(members):.0%}"
            for c, i in enumerate(members[order]):
                ax = fig.add_subplot(len(rows), self.top_k, r * self.top_k + c + 1)
                ax.imshow(np.asarray(train.images[i]))
                ax.set_xticks([])
                ax.set_yticks([])
                if c == 0:
                    ax.set_ylabel(f"sub {r} (n={len(members)}){variant}", fontsize=6, rotation=0, ha="right", va="center")
        fig.suptitle(f"DGMS: the {self.top_k} images nearest each sub-class medoid, class {train.class_names[chosen]}",
                     fontsize=9)
        return P._save(fig, path)


def _rank_within(parent: np.ndarray) -> list[int]:
    """Index of each sub-class among the sub-classes of its parent class."""
    seen: dict[int, int] = {}
    out = []
    for c in parent:
        out.append(seen.get(int(c), 0))
        seen[int(c)] = out[-1] + 1
    return out


def within_class_nmi(subclasses: np.ndarray, factor: np.ndarray, classes: np.ndarray) -> float:
    """NMI between sub-class ids and a factor inside each class, averaged with class-size weights.

    Sub-classes nest in classes, so an NMI over all images would mostly measure the classes; this
    one scores how well the split of each class matches the factor (1: the same partition).
    """
    from sklearn.metrics import normalized_mutual_info_score

    total, weight = 0.0, 0
    for c in np.unique(classes):
        idx = classes == c
        if len(np.unique(factor[idx])) < 2 and len(np.unique(subclasses[idx])) < 2:
            continue                                                     # nothing to split, nothing to find
        total += idx.sum() * normalized_mutual_info_score(factor[idx], subclasses[idx])
        weight += int(idx.sum())
    return total / weight if weight else float("nan")
