"""``FERDataset``, one split of a dataset in memory, and what is derived from it (DESIGN.md section 2).

Every adapter returns a ``FERDataset``; this module also holds what works on any of them: the dataset
fingerprint (``fingerprint_of``), re-expressing a test set in another dataset's label space
(``in_label_space``), the validation hold-out of datasets without a val split (``stratified_holdout``)
and the record of how a split was read that is stored with every result (``dataset_record``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import numpy as np

from fer_bench import labels as L


@dataclasses.dataclass
class FERDataset:
    """One split of a FER dataset, in memory (or memory-mapped from the decode cache).

    images: uint8 (N, H, W, 3); labels: int64 (N,) indices into ``classes``; classes: canonical ids.
    """

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[int, ...]
    name: str
    split: str
    fingerprint: str
    label_dist: np.ndarray | None = None   # float32 (N, C), rows sum to 1
    groups: np.ndarray | None = None       # subject ids (N,)
    factors: Any = None                    # pandas DataFrame of generative factors, one row per image
    meta: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.labels)
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise ValueError(f"{self.name}/{self.split}: images must be uint8 (N, H, W, 3), "
                             f"got {self.images.dtype} {self.images.shape}.")
        if len(self.images) != n:
            raise ValueError(f"{self.name}/{self.split}: {len(self.images)} images but {n} labels.")
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.classes = tuple(int(c) for c in self.classes)
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise ValueError(f"{self.name}/{self.split}: labels must lie in 0..{len(self.classes) - 1}.")
        for field in ("label_dist", "groups"):
            value = getattr(self, field)
            if value is not None and len(value) != n:
                raise ValueError(f"{self.name}/{self.split}: {field} has {len(value)} rows for {n} images.")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_names(self) -> list[str]:
        return L.names(self.classes)

    def subset(self, index: np.ndarray, split: str | None = None) -> "FERDataset":
        """Rows ``index`` of this dataset (fingerprint derived from the parent's and the index)."""
        index = np.asarray(index)
        digest = hashlib.sha256(self.fingerprint.encode() + np.ascontiguousarray(index).tobytes()).hexdigest()
        return dataclasses.replace(
            self, images=self.images[index], labels=self.labels[index],
            label_dist=None if self.label_dist is None else self.label_dist[index],
            groups=None if self.groups is None else self.groups[index],
            factors=None if self.factors is None else self.factors.iloc[index].reset_index(drop=True),
            split=split or self.split, fingerprint=digest, meta=self._meta_rows(index))

    def _meta_rows(self, index: np.ndarray) -> dict:
        """``meta`` with every per-image array (length N) cut to ``index``; other values as they are."""
        n = len(self)
        return {k: v[index] if isinstance(v, np.ndarray) and len(v) == n else v for k, v in self.meta.items()}

    def with_labels(self, new_labels: np.ndarray, tag: str) -> "FERDataset":
        """The same images with other labels (label noise); ``tag`` enters the fingerprint."""
        digest = hashlib.sha256((self.fingerprint + tag).encode() + new_labels.astype(np.int64).tobytes()).hexdigest()
        return dataclasses.replace(self, labels=new_labels.astype(np.int64), fingerprint=digest, meta=dict(self.meta))


def in_label_space(test: FERDataset, classes: tuple[int, ...]) -> tuple[FERDataset, dict[str, Any]]:
    """``test`` re-expressed in another dataset's label space ``classes`` (canonical ids), for training on
    one dataset and testing on another: rows of classes outside ``classes`` are dropped, labels become
    indices into ``classes`` and ``label_dist`` columns follow (renormalised over the kept classes).
    Returns the dataset and a record of what was dropped."""
    classes = tuple(int(c) for c in classes)
    position = {c: i for i, c in enumerate(classes)}
    kept_classes = [c for c in test.classes if c in position]
    if not kept_classes:
        raise ValueError(f"{test.name} ({', '.join(test.class_names)}) shares no class with the training "
                         f"dataset ({', '.join(L.names(classes))}); pick a test dataset with common emotions.")
    canonical = np.asarray(test.classes)[test.labels]
    rows = np.flatnonzero(np.isin(canonical, kept_classes))
    out = test.subset(rows)
    dist = None
    if test.label_dist is not None:
        dist = np.zeros((len(rows), len(classes)), dtype=np.float32)
        for j, c in enumerate(test.classes):
            if c in position:
                dist[:, position[c]] = test.label_dist[rows, j]
        sums = dist.sum(axis=1, keepdims=True)
        labels_onehot = np.eye(len(classes), dtype=np.float32)[[position[c] for c in canonical[rows]]]
        dist = np.where(sums > 0, dist / np.maximum(sums, 1e-12), labels_onehot)
    fingerprint = hashlib.sha256(f"{out.fingerprint} in label space {classes}".encode()).hexdigest()
    out = dataclasses.replace(out, labels=np.array([position[c] for c in canonical[rows]], dtype=np.int64),
                              classes=classes, label_dist=dist, fingerprint=fingerprint)
    record = {"test_classes_dropped": {L.names([c])[0]: int((canonical == c).sum())
                                       for c in test.classes if c not in position},
              "train_classes_absent_from_test": L.names([c for c in classes if c not in test.classes]),
              "shared_classes": L.names(kept_classes), "test_rows_kept": int(len(rows)), "test_rows": int(len(test))}
    return out, record


def fingerprint_of(*parts: Any) -> str:
    """sha256 over the JSON of ``parts`` (numpy arrays hashed by their bytes)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(np.ascontiguousarray(part).tobytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()


# Kept instead of scikit-learn's StratifiedShuffleSplit / StratifiedGroupKFold on purpose: their splits differ
# from this one (0 of 20 seeds agreed; StratifiedGroupKFold(10) also holds out another size), and a different
# split would change every fingerprint and cell id of the committed stores; groups go whole, by majority label.
def stratified_holdout(labels: np.ndarray, fraction: float, seed: int,
                       groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """Split indices into (fit, holdout) for validation when a dataset has no val split.

    Stratified by label; when ``groups`` (subject ids) are given, whole subjects go to one side
    (subject-disjoint), chosen per majority label so the classes stay represented. Returns the rule
    used as a string, recorded with the result.
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    if groups is None:
        hold = []
        for c in np.unique(labels):
            idx = np.flatnonzero(labels == c)
            rng.shuffle(idx)
            hold.append(idx[: max(1, int(round(fraction * len(idx))))] if len(idx) > 1 else idx[:0])
        holdout = np.sort(np.concatenate(hold))
        rule = f"stratified hold-out {fraction:g} of train (seed {seed})"
    else:
        groups = np.asarray(groups)
        uniq, inverse = np.unique(groups, return_inverse=True)
        major = np.array([np.bincount(labels[inverse == g]).argmax() for g in range(len(uniq))])
        chosen = []
        for c in np.unique(major):
            g = np.flatnonzero(major == c)
            rng.shuffle(g)
            chosen.append(g[: max(1, int(round(fraction * len(g))))] if len(g) > 1 else g[:0])
        holdout = np.flatnonzero(np.isin(inverse, np.concatenate(chosen)))
        rule = f"subject-disjoint stratified hold-out {fraction:g} of train subjects (seed {seed})"
    fit = np.setdiff1d(np.arange(len(labels)), holdout)
    return fit, holdout, rule


RECORDED_META = ("layout", "protocol", "variant", "vote_source", "image_source", "label_mode", "sampler",
                 "n_missing", "n_unreadable", "images_dropped", "invalid_box_rows", "dropped_codes",
                 "rows_without_name", "duplicate_names_dropped", "fold", "folds", "decode", "cache_key",
                 "protocol_version")


def dataset_record(ds: FERDataset) -> dict[str, Any]:
    """The JSON-safe facts about how a split was read, to store with a result (which vote source,
    how many images were dropped with allow_missing, how many faces the detector missed, ...)."""
    meta = ds.meta or {}
    out: dict[str, Any] = {"name": ds.name, "split": ds.split, "images": len(ds), "classes": list(ds.classes),
                           "fingerprint": ds.fingerprint}
    out.update({k: meta[k] for k in RECORDED_META if k in meta})
    if meta.get("face_crop"):
        out["face_crop"] = {"counts": meta["face_crop"].get("counts", {})}
    return json.loads(json.dumps(out, default=str))
