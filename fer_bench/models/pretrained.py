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

import functools
import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

SYNTHETIC_FACES = "synthetic-faces"
NAMED_WEIGHTS = ("imagenet", SYNTHETIC_FACES)      # besides None (random init) and the path of a file
WEIGHTS_DIR = Path(__file__).with_name("weights")
MANIFEST = WEIGHTS_DIR / "manifest.json"


class UnknownWeights(ValueError):
    """A ``pretrained`` value that is neither a known name nor an existing file."""


def allowed_values() -> str:
    return "None (random init), " + ", ".join(repr(n) for n in NAMED_WEIGHTS) + " or the path of a state_dict file"


def check_pretrained(value: str | None) -> None:
    """Raise ``UnknownWeights`` (one line) when ``value`` is no known name and no existing file."""
    if value is None or value.lower() in NAMED_WEIGHTS or Path(value).expanduser().is_file():
        return
    from fer_bench.models.backbones import WEIGHTS_FILES, weights_dir
    if value in WEIGHTS_FILES or (Path(value).name == value and (weights_dir() / value).is_file()):
        return                           # a file users download (ir50.pth): a missing one is reported on load
    raise UnknownWeights(f"Unknown pretrained value {value!r}: no such weights name or file. Allowed: {allowed_values()}.")


@functools.lru_cache(maxsize=1)
def manifest() -> dict[str, Any]:
    """The shipped weights' manifest: ``{"recipe": {...}, "trunks": {key: {"file", "sha256", ...}}}``."""
    if not MANIFEST.is_file():
        return {"recipe": {}, "trunks": {}}
    return json.loads(MANIFEST.read_text())


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def synthetic_faces_state(key: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The shipped state_dict of trunk ``key`` and its record ``{"name", "trunk", "sha256"}``."""
    trunks = manifest()["trunks"]
    if key not in trunks:
        raise UnknownWeights(f"No {SYNTHETIC_FACES!r} weights exist for trunk {key!r}; they exist for: "
                             f"{', '.join(sorted(trunks)) or '(none shipped)'}. Use pretrained=None for random init.")
    entry = trunks[key]
    path = WEIGHTS_DIR / entry["file"]
    if not path.is_file():
        raise FileNotFoundError(f"The shipped weights file {path} is missing; reinstall fer-bench or run "
                                f"scripts/pretrain_trunks.py to regenerate it.")
    digest = sha256_of(path)
    if digest != entry["sha256"]:
        raise ValueError(f"The shipped weights file {path} has sha256 {digest[:12]}..., the manifest says "
                         f"{entry['sha256'][:12]}...; reinstall fer-bench or rerun scripts/pretrain_trunks.py.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state, {"name": SYNTHETIC_FACES, "trunk": key, "sha256": digest}


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
        from fer_bench.models.backbones import build_backbone, imagenet_record
        return imagenet_record(build_backbone(key))
    return file_record(pretrained)


def file_record(path: str | Path) -> dict[str, str]:
    path = Path(path).expanduser()
    return {"name": str(path), "trunk": "file", "sha256": sha256_of(path)}


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
        from fer_bench.models.backbones import read_state_file, resolve_weights_file
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


def weights_records(*modules: nn.Module | None) -> list[dict[str, str]]:
    """The records of every pretrained part of ``modules`` (each loaded part marks itself)."""
    out: list[dict[str, str]] = []
    for root in modules:
        if root is None:
            continue
        for m in root.modules():
            record = getattr(m, "weights_record_", None)
            if isinstance(record, Mapping) and dict(record) not in out:
                out.append(dict(record))
    return out
