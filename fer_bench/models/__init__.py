"""Backbones shared by the methods: ``build_backbone(name, pretrained, in_size)`` and the ``BACKBONES`` registry.

Importing this package registers every built-in architecture (``backbones.py``, ``ir50.py``).
"""
from fer_bench.models.backbones import (  # noqa: F401
    BACKBONES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    WeightsMismatch,
    WeightsUnavailable,
    build_backbone,
    imagenet_cache_path,
    load_weights,
    normalize,
    register_backbone,
    with_stages,
)
from fer_bench.models.ir50 import IR50  # noqa: F401  (registers ir50, ir50_s3)
from fer_bench.models import three_stage  # noqa: F401,E402  (registers qcs_small, qcs_tiny)

__all__ = [
    "BACKBONES", "Backbone", "IMAGENET_MEAN", "IMAGENET_STD", "IR50", "WeightsMismatch", "WeightsUnavailable",
    "build_backbone", "imagenet_cache_path", "load_weights", "normalize", "register_backbone", "with_stages",
]
