"""Named weights and their records, below the backbones: the shipped ``synthetic-faces`` trunks (manifest,
sha256-checked loading) and the record every loaded part keeps (``weights_record_``). Nothing here builds a
network, so :mod:`fer_bench.models.backbones` can use it; :mod:`fer_bench.models.pretrained` (which builds
networks) sits above both.
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


def file_record(path: str | Path) -> dict[str, str]:
    path = Path(path).expanduser()
    return {"name": str(path), "trunk": "file", "sha256": sha256_of(path)}


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
