"""Datasets: the ``FERDataset`` container, the adapter contract and ``load_dataset`` (DESIGN.md section 2).

An adapter is a small declarative class (the mteb habit): its card (docstring), the splits it has,
the options it takes with their defaults, and one ``load(split, root, **options)`` that returns a
``FERDataset``. Adapters register with ``@register_dataset(name)``; options arrive from the command
line as ``--dataset name:opt=value,...`` and are checked against the declaration.
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from fer_bench import labels as L
from fer_bench.registry import DATASETS, get_dataset, register_dataset  # noqa: F401

DATA_ENV = "FER_BENCH_DATA"
CACHE_ENV = "FER_BENCH_CACHE"


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


class DatasetAdapter:
    """Base class of dataset adapters. Subclasses declare, then implement ``load``.

    Class attributes:
      splits: the split names this adapter serves ("train", "val", "test", ...).
      options: option name -> default value; the type of the default is the option's type.
      needs_root: whether the dataset lives on disk (False for generated data).
    """

    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    options: ClassVar[dict[str, Any]] = {}
    needs_root: ClassVar[bool] = True
    registered_name: ClassVar[str] = "?"

    data_dir: ClassVar[str] = ""  # folder under $FER_BENCH_DATA (default: the registered name)

    def load(self, split: str, root: Path | None, **options: Any) -> FERDataset:  # pragma: no cover
        raise NotImplementedError

    def available_splits(self, root: Path | None, **options: Any) -> tuple[str, ...]:
        """The declared splits present in this copy of the dataset (some layouts lack a val split)."""
        return self.splits

    @classmethod
    def card(cls) -> str:
        return inspect.cleandoc(cls.__doc__ or "")

    @classmethod
    def resolve_options(cls, given: dict[str, Any]) -> dict[str, Any]:
        """Declared defaults updated with ``given``, each value coerced to its default's type."""
        resolved = dict(cls.options)
        for key, value in given.items():
            if key not in cls.options:
                raise ValueError(f"Dataset {cls.registered_name!r} has no option {key!r}; "
                                 f"allowed: {', '.join(sorted(cls.options)) or '(none)'}.")
            resolved[key] = coerce_like(cls.options[key], value, f"option {key!r} of dataset {cls.registered_name!r}")
        return resolved


def coerce_like(default: Any, value: Any, what: str) -> Any:
    """Coerce a (possibly string) value to the type of ``default``; one sentence on failure."""
    if default is None or not isinstance(value, str):
        return value
    try:
        if isinstance(default, bool):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
    except ValueError:
        raise ValueError(f"The {what} must be a {type(default).__name__}. Got {value!r} instead.") from None
    return value


def parse_dataset_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``"synthetic:size=64,classes=7"`` -> ``("synthetic", {"size": "64", "classes": "7"})``."""
    name, _, rest = spec.partition(":")
    options: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq or not key:
            raise ValueError(f"Dataset option {part!r} in {spec!r} is not of the form key=value; "
                             f"write e.g. --dataset synthetic:size=64,classes=7.")
        options[key.strip()] = value.strip()
    return name.strip(), options


def data_root(root: str | Path | None, dataset: str) -> Path:
    """The folder of a dataset: ``root``, else ``$FER_BENCH_DATA/<dataset>``; a clear error if missing."""
    if root is None:
        base = os.environ.get(DATA_ENV)
        if not base:
            raise FileNotFoundError(f"Dataset {dataset!r} needs its files: pass --data-root PATH or set "
                                    f"{DATA_ENV} to the folder that holds {dataset}/.")
        root = Path(base) / dataset
    root = Path(root).expanduser()
    if root.exists() and not root.is_dir():
        raise FileNotFoundError(f"Data root {str(root)!r} for dataset {dataset!r} is a file, not a folder; "
                                f"pass --data-root to the folder that holds the downloaded dataset.")
    if not root.is_dir():
        raise FileNotFoundError(f"Data root {str(root)!r} for dataset {dataset!r} does not exist; "
                                f"pass --data-root to the folder you downloaded.")
    return root


def cache_dir() -> Path:
    """The decode cache folder: ``$FER_BENCH_CACHE`` or ``~/.cache/fer_bench``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "fer_bench")


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


def load_dataset(name: str, split: str, root: str | Path | None = None, **options: Any) -> FERDataset:
    """Load one split of a registered dataset with checked options."""
    adapter_cls = get_dataset(name)
    if split not in adapter_cls.splits:
        raise ValueError(f"Dataset {name!r} has no split {split!r}; it has {', '.join(adapter_cls.splits)}.")
    resolved = adapter_cls.resolve_options(options)
    path = data_root(root, adapter_cls.data_dir or name) if adapter_cls.needs_root else None
    return adapter_cls().load(split, path, **resolved)


def available_splits(name: str, root: str | Path | None = None, **options: Any) -> tuple[str, ...]:
    """The splits of a registered dataset present under ``root`` (or ``$FER_BENCH_DATA``)."""
    adapter_cls = get_dataset(name)
    resolved = adapter_cls.resolve_options(options)
    path = data_root(root, adapter_cls.data_dir or name) if adapter_cls.needs_root else None
    return tuple(adapter_cls().available_splits(path, **resolved))


def fingerprint_of(*parts: Any) -> str:
    """sha256 over the JSON of ``parts`` (numpy arrays hashed by their bytes)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(np.ascontiguousarray(part).tobytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()


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


def _register_builtin_adapters() -> None:
    # Adapters living in this package import here so that registering them needs no entry point.
    from importlib import import_module
    for module in ("synthetic", "rafdb", "fer2013", "ferplus", "affectnet", "ckplus", "jaffe", "nimstim", "folder"):
        try:
            import_module(f"fer_bench.data.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"fer_bench.data.{module}":
                raise


_register_builtin_adapters()
