"""QCS and DCS (Wang et al., "QCS: Feature Refining from Quadruplet Cross Similarity for Facial Expression
Recognition", AAAI 2025; official code github birdwcp/QCS, commit 293f28f).

Training sees image pairs (DCS: anchor, positive of the same class) or quadruplets (QCS: anchor, positive,
negative of another class, and a second image of the negative's class). Every image goes through the same
base network (backbone -> three-scale tokens -> ViT, depth 2 -> SE -> head: ``Cls_base``). Cross Similarity
Attention (CSA, one module per scale) reweights each image's tokens by its similarity to its partners:
same-class pairs give S, different-class pairs give D, fused as S + (1 + tanh(theta)) D (Eq. 9); the result,
added back to the base tokens, goes through a second ViT (depth 1) and head (``Cls_cross``: the "contrastive
residual distillation" by a ViT connection). The loss is the mean cross-entropy over all heads (8 for QCS,
4 for DCS), as the official code averages Eq. 10 with lambda1 = 1. SAM around Adam, the learning rate
decayed x0.98 per epoch. Inference uses the base branch only: after training the cross modules are dropped,
so ``predict`` / ``embed`` cost exactly the base network, and ``embed`` returns the base feature before its
head (the SE-gated class token).

Paper / code differences and every ablation of the paper's tables are named options (see ``params``);
the maths lives in :mod:`fer_bench_methods.qcs.blocks`, tested against the official code's tensors.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from fer_bench_methods.qcs import blocks as QB
from fer_bench.data import FERDataset
from fer_bench.evaluation import MetricSpec
from fer_bench.method import (QUICK_AUGMENT, QUICK_BATCH, QUICK_EPOCHS, QUICK_INIT, SCHEDULE_SPACE, SCHEDULERS, Param, ParameterError,
                              TorchMethod)
from fer_bench.models import build_backbone
from fer_bench.registry import register_method
from fer_bench.train import CHECKPOINT

_CROSS_PARTS = ("csa", "vit_cross", "cross_head")


class QuadrupletSampler:
    """Seeded index draws for pairs and quadruplets (the official ``dataset_q0`` / ``dataset_q1``).

    positive: a uniform image of the anchor's class other than the anchor (the anchor itself when it is
    alone in its class). negative, ``negative='image'`` (RAF-DB / FERPlus scripts): a uniform image among all
    images of other classes (classes in proportion to their frequency); ``'class'`` (AffectNet scripts): a
    uniform other class, then a uniform image of it. negative2: another image of the negative's class.
    """

    def __init__(self, labels: torch.Tensor):
        labels = labels.cpu().long()
        self.labels = labels
        self.order = torch.argsort(labels, stable=True)                  # indices grouped by class
        num = int(labels.max()) + 1 if len(labels) else 0
        self.counts = torch.bincount(labels, minlength=num)              # (C,)
        self.offsets = torch.cumsum(self.counts, 0) - self.counts        # (C,)
        self.rank = torch.empty_like(labels)
        self.rank[self.order] = torch.arange(len(labels)) - self.offsets[labels[self.order]]
        self.present = torch.nonzero(self.counts > 0).flatten()          # classes with images
        self.position = torch.full((num,), -1, dtype=torch.long)
        self.position[self.present] = torch.arange(len(self.present))

    def _uniform(self, n: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A uniform int in [0, n) per entry of ``n`` (n >= 1)."""
        return (torch.rand(n.shape, generator=generator, dtype=torch.float64) * n).long().clamp_max(n - 1)

    def same_class(self, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        y = self.labels[index]
        n = self.counts[y]
        r = self._uniform((n - 1).clamp_min(1), generator)
        r = torch.where(n > 1, r + (r >= self.rank[index]).long(), self.rank[index])
        return self.order[self.offsets[y] + r]

    def negative(self, index: torch.Tensor, generator: torch.Generator, mode: str) -> torch.Tensor:
        if len(self.present) < 2:
            raise ValueError("QCS needs at least two classes in the training data to draw negatives; "
                             "give it a dataset with several classes.")
        y = self.labels[index]
        if mode == "image":
            r = self._uniform(len(self.labels) - self.counts[y], generator)
            return self.order[r + self.counts[y] * (r >= self.offsets[y]).long()]
        if mode == "class":
            r = self._uniform(torch.full_like(y, len(self.present) - 1), generator)
            c = self.present[r + (r >= self.position[y]).long()]
            return self.order[self.offsets[c] + self._uniform(self.counts[c], generator)]
        raise ValueError(f"negative mode {mode!r} is not allowed; use 'image' or 'class'.")


class _CrossSimilarity(TorchMethod):
    """Shared by QCS (4 branches) and DCS (2 branches); see the module docstring."""

    branches: ClassVar[int] = 4
    extra_metrics = (
        MetricSpec("train_params", "parameters of the training-time network (with the cross modules)", percent=False,
                   higher_is_better=None, digits=0),
        MetricSpec("tanh_theta_scale{s}", "tanh(theta) of the S / D fusion at scale s (Eq. 9)", percent=False,
                   higher_is_better=None),
        MetricSpec("accuracy_last_epoch", "test accuracy of the last epoch's weights (select='best_val' runs)"),
    )

    params = {
        "embed_dim": Param(768, int, low=8, doc="token width C (paper 768); a multiple of heads"),
        "heads": Param(8, int, low=1, doc="ViT heads (hard-coded 8 in the official code)"),
        "depth_base": Param(2, int, low=1, doc="depth of the base ViT"),
        "depth_cross": Param(1, int, low=1, doc="depth of the cross ViT (connection='vit')"),
        "drop_base": Param(0.0, float, low=0.0, high=1.0, closed="left", doc="dropout in the base ViT"),
        "drop_cross": Param(0.0, float, low=0.0, high=1.0, closed="left", doc="dropout in the cross ViT"),
        "trunk_input": Param(None, int, low=8, none_ok=True,
                             doc="resize (nearest) to this size before the backbone; the official IR-50 does 224 -> 112"),
        "attention": Param("csa", choices=QB.ATTENTIONS, doc="csa, or sdpa: ViT cross attention (Table 1 row 3)"),
        "reduce": Param("batch", choices=QB.REDUCE,
                        doc="min / max of the distance matrices over the whole batch tensor (official) or per sample"),
        "gate": Param("spatial", choices=QB.GATES,
                      doc="spatial: the map gates V per position (official); pool: the paper's m^T V (Eq. 4, 6)"),
        "residual": Param("normed", choices=QB.RESIDUALS,
                          doc="normed: residuals on the LayerNormed tokens (official QCS); prenorm: x + f(norm x)"),
        "connection": Param("vit", choices=QB.CONNECTIONS,
                            doc="Table 1: vit (official), add_gap, bilinear, none (no residual), off (no cross module)"),
        "distill": Param("none", choices=("none", "kl", "mse"), doc="Eq. 10's optional KL or L2 term (off in the code)"),
        "distill_weight": Param(1.0, float, low=0.0, doc="lambda2 / lambda3 of Eq. 10"),
        "distill_temperature": Param(1.0, float, low=0.0, closed="neither", doc="temperature of the KL term"),
        "anchor_sampling": Param("shuffle", choices=("shuffle", "balanced"),
                                 doc="anchors: a shuffle (RAF-DB, FERPlus) or class-balanced draws with replacement (AffectNet)"),
        "epoch_fraction": Param(1.0, float, low=0.0, high=1.0, closed="right",
                                doc="anchors per epoch / train size (official AffectNet: 1/8 DCS, 1/12 QCS)"),
        "optimizer": Param("sam", choices=("adam", "adamw", "sgd", "sam")),
        "sam_base": Param("adam", choices=("sgd", "adam")),
        "scheduler": Param("exponential", choices=SCHEDULERS, search=SCHEDULE_SPACE),
        "gamma": Param(0.98, float, low=0.0, high=1.0, closed="right"),
        "backbone": Param("ir50_s3", str, doc="a backbone with three stages at m, m/2, m/4 px: ir50_s3, qcs_small"),
    }

    # -- network -------------------------------------------------------------------------------------
    def build(self, num_classes: int) -> nn.Module:
        if self.embed_dim % self.heads:
            raise ParameterError(f"The 'embed_dim' parameter of {self.display_name()} must be a multiple of heads "
                                 f"({self.heads}). Got {self.embed_dim} instead.")
        size = self.trunk_input or self.image_size
        trunk = build_backbone(self.backbone, pretrained=self.pretrained, in_size=size, strict=False)
        options = dict(matrix=self._matrix(), reduce=self.reduce, gate=self.gate, residual=self.residual,
                       attention=self.attention, gamma=self._gamma())
        return QB.QCSNetwork(trunk, self.image_size, num_classes, dim=self.embed_dim, branches=self.branches,
                             depth_base=self.depth_base, depth_cross=self.depth_cross, heads=self.heads,
                             drop_base=self.drop_base, drop_cross=self.drop_cross, connection=self.connection,
                             trunk_input=self.trunk_input, **options)

    def _matrix(self) -> str:
        return "S"

    def _gamma(self) -> float:
        return 1.0

    # -- data ----------------------------------------------------------------------------------------
    def sampler(self, train: FERDataset, generator: torch.Generator) -> Iterator[torch.Tensor]:
        """Index batches (B, 2) for DCS, (B, 4) for QCS: anchor, positive[, negative, negative2]."""
        draws = QuadrupletSampler(torch.as_tensor(train.labels))         # class tables: one argsort, cheap
        n = max(1, int(round(len(train) * self.epoch_fraction)))
        if self.anchor_sampling == "balanced":
            weights = 1.0 / draws.counts[draws.labels].double()
            anchors = torch.multinomial(weights, n, replacement=True, generator=generator)
        else:
            anchors = torch.randperm(len(train), generator=generator)[:n]
        columns = [anchors, draws.same_class(anchors, generator)]
        if self.branches == 4:
            neg = draws.negative(anchors, generator, self._negative_mode())
            columns += [neg, draws.same_class(neg, generator)]
        index = torch.stack(columns, dim=1)                              # (n, K)
        for start in range(0, n, self.batch_size):
            chunk = index[start:start + self.batch_size]
            if len(chunk) > 1 or n == 1:
                yield chunk

    def _negative_mode(self) -> str:
        return "image"

    def make_batch(self, index: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """One ``fetch`` of all B x K images (independent augmentation per image), reshaped per branch."""
        b, k = index.shape
        x = self.fetch(index.flatten(), generator)                      # (B*K, 3, S, S)
        labels = self.train_labels_[index.to(self.train_labels_.device)]  # (B, K)
        return {"index": index, "x": x.view(b, k, *x.shape[1:]), "y": labels[:, 0], "labels": labels}

    # -- loss ----------------------------------------------------------------------------------------
    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        xs = batch["x"].unbind(1)                                       # K x (B, 3, S, S)
        labels = batch["labels"].unbind(1)                              # K x (B,)
        base, cross = self.model_.train_forward(xs)
        heads = list(zip(base, labels)) + list(zip(cross, labels))
        loss = sum(F.cross_entropy(logit, y) for logit, y in heads) / len(heads)
        if self.distill != "none" and cross:
            loss = loss + self.distill_weight * sum(self._distill(b, c) for b, c in zip(base, cross)) / len(base)
        return loss

    def _distill(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """Cls_cross teaches Cls_base (teacher detached): T^2 KL(p_cross^T || p_base^T) or the MSE of logits."""
        teacher = teacher.detach()
        if self.distill == "kl":
            t = self.distill_temperature
            return F.kl_div(F.log_softmax(student / t, 1), F.softmax(teacher / t, 1), reduction="batchmean") * t * t
        return F.mse_loss(student, teacher)

    # -- inference: the base branch only -------------------------------------------------------------
    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model_.features(x)                                  # (B, C)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model_(x)                                           # (B, K)

    def after_fit(self, train: FERDataset) -> None:
        """Inference uses the base branch only: count the training-time parameters, then drop the rest."""
        net = self.model_
        self.train_params_ = sum(p.numel() for p in net.parameters())
        self.theta_k_ = [float(m.theta.detach().tanh()) for m in net.csa] if hasattr(net, "csa") and self.branches == 4 else []
        for name in _CROSS_PARTS:                                       # inference never needs them
            if hasattr(net, name):
                delattr(net, name)
        net.connection = "off"

    def _ensure_model(self) -> None:
        if not hasattr(self, "model_"):                                 # load(): build the base network only
            connection = self.connection
            self.connection = "off"
            try:
                super()._ensure_model()
            finally:
                self.connection = connection
        else:
            super()._ensure_model()

    def extra_results(self, out_dir: Path, train: FERDataset, test: FERDataset) -> dict[str, float]:
        """Training-time parameter count, tanh(theta) per scale (QCS), and with ``select='best_val'`` the
        test accuracy of the last epoch's weights too (read from the trainer's checkpoint), so one run
        gives both the last-epoch and the best-on-validation numbers."""
        out = {"train_params": float(getattr(self, "train_params_", float("nan")))}
        for s, k in enumerate(getattr(self, "theta_k_", []), 1):
            out[f"tanh_theta_scale{s}"] = k
        path = Path(self.workdir) / CHECKPOINT if self.workdir else None
        if self.select == "best_val" and path is not None and path.is_file():
            blob = torch.load(path, map_location=self.device_, weights_only=True)
            own = self.model_.state_dict()
            chosen = {k: v.clone() for k, v in own.items()}
            self.model_.load_state_dict({k: v for k, v in blob["model"].items() if k in own})
            pred = self._predict_proba(test.images).argmax(1)
            self.model_.load_state_dict(chosen)
            out["accuracy_last_epoch"] = float((pred == test.labels).mean())
        return out


# Quick: a small random-init trunk instead of the MS-Celeb IR-50, so its own learning rate. Measured on
# synthetic (2,000 images, base network alone, Adam): at lr 1e-3 or 2e-3 the POSTER ViT never leaves the
# class prior (loss flat at 1.633 for 10 epochs, while the same trunk with a linear head learns), at 2e-4
# it does (epoch 5: 50 %), at 5e-5 it is too slow. Width 64 with 4 heads (16 per head) as in that probe.
# The shared quick budget (was 4 epochs of 32 quadruplets): QUICK_EPOCHS of QUICK_BATCH anchors per step.
# Adam without SAM (#16): at this budget (550 steps) SAM held DCS at 45.1 / 44.6 % test accuracy (seeds 0, 1;
# QCS 48.7 / 46.2 / 56.3 %), while the same DCS cell with plain Adam reached 52.6 % (seed 0), at half the
# forward passes. SAM (the paper's optimizer, for flat minima over 100-200 epochs) stays in the paper profile.
QUICK = {"backbone": "qcs_small", "image_size": 48, "embed_dim": 64, "heads": 4, "epochs": QUICK_EPOCHS,
         "batch_size": QUICK_BATCH, "optimizer": "adam",
         "lr": 2e-4, "gamma": 0.9, "augment": QUICK_AUGMENT, "eval_batch_size": 256, "pretrained": QUICK_INIT}
TEST = {"backbone": "qcs_tiny", "image_size": 24, "embed_dim": 16, "epochs": 1, "batch_size": 16, "lr": 1e-3,
        "augment": "light", "eval_batch_size": 64}
# Paper: the official IR-50 trunk with its MS-Celeb-1M weights, ir50.pth from the QCS README, read from the
# weights folder ($FER_BENCH_WEIGHTS, default ~/.cache/fer_bench/weights; see fer_bench/models/ir50.py).
PAPER = {"backbone": "ir50_s3", "pretrained": "ir50.pth", "image_size": 224, "trunk_input": 112, "embed_dim": 768,
         "augment": "standard", "optimizer": "sam", "sam_base": "adam", "sam_rho": 0.05, "scheduler": "exponential",
         "gamma": 0.98, "weight_decay": 0.0, "select": "best_val", "amp": False}


@register_method("qcs")
class QCS(_CrossSimilarity):
    """Quadruplet Cross Similarity: anchor, positive, negative, negative2; S and D fused by Eq. 9."""

    branches = 4
    params = {
        "cross_matrix": Param("SD", choices=QB.MATRICES, doc="Table 2: SD (Eq. 9), S only or D only"),
        "theta_gamma": Param(1.0, float, low=0.0, closed="neither", doc="gamma of tanh(gamma * theta) (code: 1)"),
        "negative": Param("image", choices=("image", "class"),
                          doc="negative drawn uniformly by image (RAF-DB, FERPlus) or by class first (AffectNet)"),
    }
    # paper: the official main_QCS_* argparse defaults and model files (notes section 4.4, 5.3)
    profiles = {
        "test": dict(TEST),
        "quick": dict(QUICK),
        "paper": {**PAPER, "datasets": {
            "rafdb": {"epochs": 200, "batch_size": 24, "lr": 3e-6, "drop_cross": 0.0},
            "ferplus": {"epochs": 150, "batch_size": 24, "lr": 3.5e-6, "drop_cross": 0.2},
            "affectnet7": {"epochs": 150, "batch_size": 24, "lr": 4e-6, "drop_cross": 0.4, "negative": "class",
                           "anchor_sampling": "balanced", "epoch_fraction": 1 / 12},
            "affectnet8": {"epochs": 100, "batch_size": 24, "lr": 4e-6, "drop_cross": 0.0, "negative": "class",
                           "anchor_sampling": "balanced", "epoch_fraction": 1 / 12},
        }},
    }

    def _matrix(self) -> str:
        return self.cross_matrix

    def _gamma(self) -> float:
        return self.theta_gamma

    def _negative_mode(self) -> str:
        return self.negative


@register_method("dcs")
class DCS(_CrossSimilarity):
    """Dual Cross Similarity: anchor and positive of the same class, S only."""

    branches = 2
    profiles = {
        "test": dict(TEST),
        "quick": dict(QUICK),
        "paper": {**PAPER, "datasets": {
            "rafdb": {"epochs": 200, "batch_size": 48, "lr": 9e-6, "drop_cross": 0.2},
            "ferplus": {"epochs": 150, "batch_size": 24, "lr": 8e-6, "drop_cross": 0.2, "residual": "prenorm"},
            "affectnet7": {"epochs": 100, "batch_size": 48, "lr": 9e-6, "drop_cross": 0.4,
                           "anchor_sampling": "balanced", "epoch_fraction": 1 / 8},
            "affectnet8": {"epochs": 50, "batch_size": 48, "lr": 8e-6, "drop_base": 0.2, "drop_cross": 0.5,
                           "residual": "prenorm", "anchor_sampling": "balanced", "epoch_fraction": 1 / 8},
        }},
    }
