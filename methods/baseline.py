"""The cross-entropy baseline: a backbone and a linear head trained with cross-entropy.

This is the "CNN" row of the SGMLoss paper's tables and the "Baseline" row of SCE-ALD's: the same
backbone every other method uses, trained on hard labels with plain softmax cross-entropy. ``embed``
returns the backbone's pooled feature vector (the input of the linear head).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fer_bench.method import QUICK_AUGMENT, QUICK_BATCH, QUICK_EPOCHS, QUICK_INIT, Param, TorchMethod
from fer_bench.models import build_backbone
from fer_bench.registry import register_method


class BackboneClassifier(nn.Module):
    """backbone -> pooled features (B, D) -> dropout -> linear head (B, C)."""

    def __init__(self, backbone: nn.Module, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(backbone.out_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)[1]  # (B, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))  # (B, C)


@register_method("baseline")
class Baseline(TorchMethod):
    """Backbone + linear head, softmax cross-entropy on the hard labels."""

    params = {
        "dropout": Param(0.0, float, low=0.0, high=1.0, closed="left"),
        "label_smoothing": Param(0.0, float, low=0.0, high=1.0, closed="left"),
    }
    profiles = {
        "test": {"epochs": 1, "image_size": 32, "batch_size": 64},
        "quick": {"augment": QUICK_AUGMENT, "epochs": QUICK_EPOCHS, "image_size": 48, "batch_size": QUICK_BATCH, "lr": 2e-3, "scheduler": "cosine",
                  "pretrained": QUICK_INIT},
        # The SGMLoss paper's "CNN" row (section 4.1): ResNet18, Adam, lr 1e-4, batch 256. The paper gives
        # no epoch count or input size for it: 40 epochs (SCE-ALD's maximum) and 112 px are our choice.
        # SCE-ALD's "Baseline" row (VGG16, batch 32) is set by its benchmark file with --set overrides.
        "paper": {"backbone": "resnet18", "pretrained": "imagenet", "image_size": 112, "epochs": 40,
                  "batch_size": 256, "optimizer": "adam", "lr": 1e-4, "augment": "standard", "select": "best_val"},
    }

    def build(self, num_classes: int) -> nn.Module:
        backbone = build_backbone(self.backbone, pretrained=self.pretrained, in_size=self.image_size)
        return BackboneClassifier(backbone, num_classes, self.dropout)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(self.model_(batch["x"]), batch["y"], label_smoothing=self.label_smoothing)
