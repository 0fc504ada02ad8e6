"""The equations of SCE-ALD as pure functions (tests recompute each one by hand), the semantic auto-encoder of
Eq. 1 and its training stage (see :mod:`fer_bench_methods.sceald`)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fer_bench.method import Param, TorchMethod
from fer_bench.models import build_backbone


def cosine_relations(x: torch.Tensor, centres: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Eqs. 2 / 3: cos(x_i, c_k), (N, D) x (C, D) -> (N, C); a zero vector gets cosine 0."""
    return F.normalize(x, dim=1, eps=eps) @ F.normalize(centres, dim=1, eps=eps).T  # (N, C)


def weighted_prototypes(features: torch.Tensor, labels: torch.Tensor, alpha: torch.Tensor, num_classes: int,
                        norm: str = "weighted_mean") -> torch.Tensor:
    """Eq. 4: (C, D) prototypes, ``sum_i alpha_i f_i`` over class k divided by ``sum alpha`` or ``n_k``.

    A class without samples gets the zero vector (cosine 0, distance ||f||).
    """
    onehot = F.one_hot(labels, num_classes).to(features.dtype)          # (N, C)
    weighted = onehot * alpha.to(features.dtype)[:, None]               # (N, C)
    sums = weighted.T @ features                                         # (C, D)
    if norm == "weighted_mean":
        denom = weighted.sum(0)                                          # (C,)
    elif norm == "literal":
        denom = onehot.sum(0)                                            # (C,) n_k
    else:
        raise ValueError(f"prototype norm {norm!r} is not allowed; use 'weighted_mean' or 'literal'.")
    return sums / denom.clamp_min(1e-12)[:, None]


def wasserstein_values(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Eq. 5, literal reading: row-wise 1-D W1 between the empirical distributions of the c values.

    (N, C), (N, C) -> (N,); equals ``scipy.stats.wasserstein_distance(a_i, b_i)`` for equal sizes.
    """
    return (torch.sort(a, dim=1).values - torch.sort(b, dim=1).values).abs().mean(dim=1)


def relation_histograms(s: torch.Tensor) -> torch.Tensor:
    """(N, C) similarities in [-1, 1] -> histograms over classes: (s + 1) / 2, normalised per row."""
    h = ((s + 1.0) / 2.0).clamp_min(0.0)
    return h / h.sum(dim=1, keepdim=True).clamp_min(1e-12)


def wasserstein_class_aware(a: torch.Tensor, b: torch.Tensor, ground: torch.Tensor) -> torch.Tensor:
    """Eq. 5, class-aware reading: exact transport cost between the class histograms of ``a`` and
    ``b`` (``relation_histograms``) with ground metric ``ground`` (C, C). (N, C) x2 -> (N,)."""
    try:
        import ot
    except ImportError:
        raise ImportError("wasserstein='class_aware' needs the POT package for exact transport; "
                          "run 'pip install pot' or use wasserstein='values'.") from None
    ha = relation_histograms(a).double().cpu().numpy()
    hb = relation_histograms(b).double().cpu().numpy()
    m = ground.double().cpu().numpy()
    costs = [ot.emd2(ha[i], hb[i], m) for i in range(len(ha))]
    return torch.tensor(costs, dtype=a.dtype, device=a.device)


def confidences(distance: torch.Tensor, eps: float = 1e-3, alpha_max: float = 1e3) -> torch.Tensor:
    """Eq. 5: alpha = 1 / (W + eps), clipped to ``alpha_max``. (N,) -> (N,)."""
    return (1.0 / (distance + eps)).clamp(max=alpha_max)


def amended_distribution(features: torch.Tensor, prototypes: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Eq. 6: l_ik proportional to 1 / (||f_i - p_k||^2 + eps), normalised over k. (N, D), (C, D) -> (N, C)."""
    d2 = torch.cdist(features.double(), prototypes.double()).pow(2)    # (N, C), float64: no cancellation
    inv = 1.0 / (d2 + eps)
    return (inv / inv.sum(dim=1, keepdim=True)).to(features.dtype)


def mixed_loss(logits: torch.Tensor, labels: torch.Tensor, dist: torch.Tensor | None, beta: float) -> torch.Tensor:
    """Eq. 7: beta * CE(one-hot) + (1 - beta) * CE(soft target ``dist``); ``dist`` None -> plain CE."""
    ce = F.cross_entropy(logits, labels)
    if dist is None or beta >= 1.0:
        return ce
    soft = -(dist * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()
    return beta * ce + (1.0 - beta) * soft


def semantic_loss(x: torch.Tensor, x_hat: torch.Tensor, g: torch.Tensor, v_y: torch.Tensor,
                  gamma: float) -> torch.Tensor:
    """Eq. 1: mean squared reconstruction error + gamma * mean(1 - cos(V(y_i), g(x_i)))."""
    recon = (x - x_hat).pow(2).flatten(1).mean(dim=1)                  # (B,) per-pixel mean
    cos = F.cosine_similarity(g, v_y, dim=1, eps=1e-12)                 # (B,)
    return recon.mean() + gamma * (1.0 - cos).mean()


class SemanticAutoEncoder(nn.Module):
    """encoder: backbone -> pooled (B, Db) -> linear -> g (B, Dw); decoder: g -> (B, 3, S, S)."""

    def __init__(self, backbone: nn.Module, word_dim: int, image_size: int, channels: int = 64):
        super().__init__()
        self.backbone = backbone
        self.to_semantic = nn.Linear(backbone.out_dim, word_dim)
        self.image_size = image_size
        self.start = max(1, math.ceil(image_size / 8))
        self.channels = channels
        self.from_semantic = nn.Linear(word_dim, channels * self.start * self.start)
        ups, c = [], channels
        for c_out in (channels // 2, channels // 4):
            ups += [nn.ConvTranspose2d(c, c_out, 4, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            c = c_out
        ups.append(nn.ConvTranspose2d(c, 3, 4, stride=2, padding=1))
        self.decoder = nn.Sequential(*ups)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_semantic(self.backbone(x)[1])                     # (B, Dw)

    def decode(self, g: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.from_semantic(g)).view(len(g), self.channels, self.start, self.start)
        out = self.decoder(h)                                            # (B, 3, 8*start, 8*start)
        if out.shape[-1] != self.image_size:
            out = F.interpolate(out, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return out                                                       # (B, 3, S, S)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.encode(x)
        return g, self.decode(g)


class _SemanticStage(TorchMethod):
    """Eq. 1 trained by the one training loop; not registered (an inner part of SCE-ALD)."""

    params = {"sem_gamma": Param(1.0, float, low=0.0), "word_dim": Param(300, int, low=1)}
    word_vectors: torch.Tensor | None = None   # runtime input (C, Dw), set by SCE-ALD before fit

    def build(self, num_classes: int) -> nn.Module:
        backbone = build_backbone(self.backbone, pretrained=self.pretrained, in_size=self.image_size)
        return SemanticAutoEncoder(backbone, self.word_dim, self.image_size)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        g, x_hat = self.model_(batch["x"])
        v_y = self.word_vectors.to(g.device)[batch["y"]]                # (B, Dw)
        return semantic_loss(batch["x"], x_hat, g, v_y, self.sem_gamma)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model_.encode(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return cosine_relations(self.model_.encode(x), self.word_vectors.to(x.device))  # (B, C) S_s
