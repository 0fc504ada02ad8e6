"""A fer-bench plugin in one file: the cross-entropy baseline trained with focal loss instead.

Run it with:  fer-bench run --plugin examples/focal_plugin.py --methods focal --profile test
"""
import torch.nn.functional as F

from fer_bench.method import Param, TorchMethod
from fer_bench.models import build_backbone
from fer_bench.registry import register_method
from fer_bench_methods.baseline import BackboneClassifier


@register_method("focal")
class Focal(TorchMethod):
    """Backbone + linear head trained with focal loss (Lin et al., ICCV 2017)."""

    params = {"focal_gamma": Param(2.0, float, low=0.0)}
    profiles = {"test": {"epochs": 1, "image_size": 32}, "quick": {"epochs": 10}, "paper": {"epochs": 40}}

    def build(self, num_classes):
        return BackboneClassifier(build_backbone(self.backbone, self.pretrained, self.image_size), num_classes)

    def loss(self, batch):
        log_p = F.log_softmax(self.model_(batch["x"]), dim=1)          # (B, C)
        log_pt = log_p.gather(1, batch["y"][:, None]).squeeze(1)       # (B,)
        return (-(1 - log_pt.exp()) ** self.focal_gamma * log_pt).mean()
