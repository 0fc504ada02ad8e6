"""The ``synthetic`` dataset adapter, and faces for pretraining trunks (``pretraining_faces``)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from fer_bench import labels as L
from fer_bench.data.adapter import DatasetAdapter
from fer_bench.data.cache import cached_images
from fer_bench.data.dataset import FERDataset
from fer_bench.data.synthetic.factors import (AUS, GENERATOR_VERSION, IDENTITY_STRIDE, OPTIONS, PRETRAIN_CODE,
                                              PRETRAIN_SPLIT, SPLIT_CODES, SPLITS, VARIANTS, check_options,
                                              class_prior, factors_frame, fingerprint, label_distribution,
                                              sample_factors)
from fer_bench.data.synthetic.splits import iter_split, render_split
from fer_bench.registry import register_dataset


@register_dataset("synthetic")
class SyntheticFER(DatasetAdapter):
    """Synthetic faces with known generative factors (FACS action units, identities, nuisances).

    Rendered on the fly (no download) and cached like any decoded dataset. Splits train / val /
    test have disjoint identities (``groups``); ``label_dist`` is the ground-truth blend of two
    emotions; ``factors`` holds every factor of every image. Dataset card:
    fer_bench/data/synthetic.md. Options: see ``OPTIONS`` in fer_bench/data/synthetic/factors.py.
    """

    splits = SPLITS
    options = OPTIONS
    needs_root = False

    def load(self, split: str, root: Path | None, **options: Any) -> FERDataset:
        opts = check_options(options)
        if split not in SPLIT_CODES:
            raise ValueError(f"Dataset 'synthetic' has no split {split!r}; it has {', '.join(SPLITS)}.")
        n, size = opts[f"n_{split}"], opts["size"]
        key = fingerprint(split, **opts)
        F = sample_factors(split, np.arange(n), **opts)
        if opts["cache"]:
            images = cached_images(key, n, (size, size, 3),
                                   lambda: iter_split(split, n, **opts),
                                   version=f"synthetic-{GENERATOR_VERSION}")
        else:
            images = render_split(split, n, **opts)
        meta = {"generator_version": GENERATOR_VERSION, "options": opts, "aus": AUS,
                "variants": {L.NAMES[e]: [v[0] for v in vs] for e, vs in VARIANTS.items()},
                "prior": class_prior(opts["classes"], opts["prior"]).tolist()}
        if opts["spurious"] > 0:
            meta["spurious"] = {"factor": opts["spurious_factor"], "strength": opts["spurious"], "splits": ["train"]}
        return FERDataset(images=images, labels=F["label"], classes=L.resolve_classes(opts["classes"]),
                          name="synthetic", split=split, fingerprint=key,
                          label_dist=label_distribution(F, opts["classes"], opts["label_floor"]),
                          groups=F["identity"], factors=factors_frame(F), meta=meta)


@dataclasses.dataclass(frozen=True)
class PretrainFaces:
    """Faces for pretraining a trunk on a task with no expression information: images and identities only.

    Expressions, pose, lighting and every other nuisance are drawn as in the dataset (so the trunk sees
    the same kind of faces), but nothing about them is kept: no label, no action unit, no distribution.
    """

    images: np.ndarray            # uint8 (N, size, size, 3)
    identity: np.ndarray          # int64 (N,), 0..n_identities-1
    global_identity: np.ndarray   # int64 (N,), ids in the generator's identity space (PRETRAIN_CODE * IDENTITY_STRIDE + ...)
    options: dict[str, Any]


def pretraining_faces(n_identities: int, per_identity: int, **options: Any) -> PretrainFaces:
    """``n_identities`` persons of the pretraining identity space, ``per_identity`` images each."""
    opts = check_options({**options, "per_identity": per_identity})
    n = n_identities * per_identity
    images = np.empty((n, opts["size"], opts["size"], 3), dtype=np.uint8)
    for start, chunk in iter_split(PRETRAIN_SPLIT, n, **opts):
        images[start:start + len(chunk)] = chunk
    gid = PRETRAIN_CODE * IDENTITY_STRIDE + np.arange(n) // per_identity
    return PretrainFaces(images=images, identity=np.arange(n) // per_identity, global_identity=gid, options=opts)
