"""The contrastive loss of the Siamese 2-D similarity space and its networks (see :mod:`fer_bench_methods.siamese`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def contrastive_loss(g1: torch.Tensor, g2: torch.Tensor, same: torch.Tensor, margin: float = 1.0,
                     eps: float = 1e-12) -> torch.Tensor:
    """Hadsell-Chopra-LeCun contrastive loss averaged over pairs.

    g1, g2: (P, D) outputs of the twins; same: (P,) bool (True = same category, the paper's Y = 0).
    Same pairs: 1/2 D^2 (from the squared distance directly); different pairs: 1/2 max(0, m - D)^2
    with D = sqrt(D^2 + eps), so the gradient stays finite at D = 0.
    """
    if g1.shape != g2.shape or g1.dim() != 2 or same.shape != g1.shape[:1]:
        raise ValueError(f"contrastive_loss expects g1, g2 (P, D) and same (P,); got {tuple(g1.shape)}, "
                         f"{tuple(g2.shape)}, {tuple(same.shape)}.")
    if len(g1) == 0:
        return g1.sum() * 0.0
    dtype = torch.promote_types(g1.dtype, torch.float32)                             # float32 at least (AMP)
    d2 = (g1.to(dtype) - g2.to(dtype)).pow(2).sum(dim=1)                             # (P,)
    d = torch.sqrt(d2 + eps)                                                         # (P,)
    per_pair = torch.where(same, d2, F.relu(margin - d).pow(2))                      # (P,)
    return 0.5 * per_pair.mean()


def all_pairs_loss(z: torch.Tensor, y: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Contrastive loss over all B(B-1)/2 unordered pairs of a batch: z (B, D), y (B,) labels."""
    i, j = torch.triu_indices(len(z), len(z), offset=1, device=z.device)             # (2, P)
    return contrastive_loss(z[i], z[j], y[i] == y[j], margin)


class SiameseNet(nn.Module):
    """trunk (three convolutions) -> fc4 -> ReLU -> dropout -> fc5 -> ReLU -> dropout -> fc6 (2 units).

    ``finetune`` (a buffer, so it is saved and checkpointed) is False in the first stage: the trunk
    then runs without gradient in training mode.
    """

    def __init__(self, trunk: nn.Module, trunk_dim: int, fc4: int, fc5: int, out_dim: int, dropout: float,
                 head_init: str = "xavier"):
        super().__init__()
        self.trunk = trunk
        self.head = nn.Sequential(
            nn.Linear(trunk_dim, fc4), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(fc4, fc5), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(fc5, out_dim))
        for m in self.head:
            if isinstance(m, nn.Linear) and head_init == "xavier":                  # paper: Xavier init
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        self.register_buffer("finetune", torch.tensor(False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and not bool(self.finetune):
            with torch.no_grad():
                h = self.trunk(x)                                                    # (B, C, h, w), frozen
        else:
            h = self.trunk(x)
        return self.head(h.flatten(1))                                               # (B, 2)

    features = forward


def small3(width: int = 32, pool_conv3: bool = False, batchnorm: bool = False) -> nn.Sequential:
    """CPU-friendly AlexNet-shaped trunk: conv5x5/2-ReLU-pool3/2, conv5x5-ReLU-pool3/2, conv3x3-ReLU,
    with BatchNorm between each convolution and its ReLU when ``batchnorm``."""
    def conv(c_in: int, c_out: int, k: int, stride: int = 1) -> list[nn.Module]:
        norm = [nn.BatchNorm2d(c_out)] if batchnorm else []
        return [nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2), *norm, nn.ReLU(inplace=True)]

    layers: list[nn.Module] = [*conv(3, width, 5, stride=2), nn.MaxPool2d(3, 2),
                               *conv(width, 2 * width, 5), nn.MaxPool2d(3, 2),
                               *conv(2 * width, 3 * width, 3)]
    if pool_conv3:
        layers.append(nn.MaxPool2d(3, 2))
    return nn.Sequential(*layers)
