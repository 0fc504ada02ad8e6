"""fer-bench's own face-pretrained trunks (``pretrained="synthetic-faces"``), shipped with the package.

Every seed paper fine-tunes a pretrained trunk (MS-Celeb-1M IR-50, ImageNet ResNet / VGG). The embedded
synthetic dataset gets its analogue: each trunk a quick profile uses was trained on a face task that knows
nothing about expressions (identity classification of synthetic faces whose identities are disjoint from
every benchmark split; ``scripts/pretrain_trunks.py`` regenerates them, the recipe is in its docstring and
in ``weights/manifest.json``). The files live in ``fer_bench/models/weights/``; each is checked against the
sha256 in the manifest before it is read, and read with ``weights_only=True``.

A trunk is named by its *trunk key*: a backbone's registry name (``smallcnn``, ``qcs_small``, ...) or a
method-specific key for trunks that are not registry backbones (``siamese_small3_w32_bn``,
``paca_convstem_p16_d64``).
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from fer_bench.models.backbones import (WEIGHTS_FILES, build_backbone, imagenet_record, read_state_file,
                                        resolve_weights_file, weights_dir)
from fer_bench.models.named_weights import (MANIFEST, NAMED_WEIGHTS, SYNTHETIC_FACES, WEIGHTS_DIR,  # noqa: F401
                                            UnknownWeights, allowed_values, file_record, manifest, sha256_of,
                                            synthetic_faces_state, weights_records)

def check_pretrained(value: str | None) -> None:
    """Raise ``UnknownWeights`` (one line) when ``value`` is no known name and no existing file."""
    if value is None or value.lower() in NAMED_WEIGHTS or Path(value).expanduser().is_file():
        return
    if value in WEIGHTS_FILES or (Path(value).name == value and (weights_dir() / value).is_file()):
        return                           # a file users download (ir50.pth): a missing one is reported on load
    raise UnknownWeights(f"Unknown pretrained value {value!r}: no such weights name or file. Allowed: {allowed_values()}.")


def record_of(pretrained: str | None, key: str) -> dict[str, str] | None:
    """The record ``load_trunk`` / ``build_backbone`` would leave for ``pretrained`` on trunk ``key``, without
    loading anything (for parts built lazily, e.g. a cached embedding network). None for random init."""
    if pretrained is None:
        return None
    name = pretrained.lower()
    if name == SYNTHETIC_FACES:
        entry = manifest()["trunks"].get(key, {})
        return {"name": SYNTHETIC_FACES, "trunk": key, "sha256": entry.get("sha256", "missing")}
    if name == "imagenet":                     # the architecture (random init, no download) names torchvision's file
        return imagenet_record(build_backbone(key))
    return file_record(pretrained)


def load_trunk(module: nn.Module, pretrained: str | None, key: str) -> None:
    """Load ``pretrained`` (``"synthetic-faces"`` or a file) into a trunk that is not a registry backbone,
    strictly, and remember the record on the module (``weights_record``). None leaves it untouched."""
    if pretrained is None:
        return
    check_pretrained(pretrained)
    if pretrained.lower() == SYNTHETIC_FACES:
        state, record = synthetic_faces_state(key)
    elif pretrained.lower() == "imagenet":
        raise UnknownWeights(f"No 'imagenet' weights exist for trunk {key!r}; use {SYNTHETIC_FACES!r} or None.")
    else:
        path = resolve_weights_file(pretrained)
        state, record = read_state_file(path), file_record(path)
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:                         # shapes differ: another width or depth of the trunk
        raise ValueError(f"Weights {record['name']!r} do not fit trunk {key!r}: "
                         f"{' '.join(str(exc).split())[:300]}") from None
    problems = [f"missing {list(result.missing_keys)}"] if result.missing_keys else []
    problems += [f"unexpected {list(result.unexpected_keys)}"] if result.unexpected_keys else []
    if problems:
        raise ValueError(f"Weights {record['name']!r} do not fit trunk {key!r}: {'; '.join(problems)}.")
    module.weights_record_ = record
