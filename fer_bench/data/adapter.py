"""The dataset adapter contract (DESIGN.md section 2; the mteb habit: a dataset is a declaration).

An adapter is a small declarative class: its card (docstring), the splits it has, the options it takes
with their defaults, and one ``load(split, root, **options)`` that returns a ``FERDataset``. Adapters
register with ``@register_dataset(name)`` (``fer_bench.registry``); options arrive from the command
line as ``--dataset name:opt=value,...`` and are checked against the declaration (``resolve_options``).

:class:`DatasetAdapter` is the contract of every dataset; :class:`FileAdapter` is the base of those
read from a download: a subclass writes ``index`` (parse the annotation files into a
:class:`fer_bench.data.decode.SplitIndex`) and inherits decoding, caching, the option checks and the
card's expected counts. Adding a dataset is one new module with one such class (imported in
``fer_bench/data/__init__.py``). ``load_dataset`` and ``available_splits`` are the entry points the
runner uses.
"""
from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

from fer_bench import labels as L
from fer_bench.data.dataset import FERDataset
from fer_bench.data.decode import DecodeSettings, Source, SplitIndex, materialize
from fer_bench.data.faces import read_boxes_csv, require_cv2
from fer_bench.data.paths import DatasetError, RootGuard, data_root, relative_key
from fer_bench.registry import get_dataset

log = logging.getLogger(__name__)


class DatasetAdapter:
    """Base class of dataset adapters. Subclasses declare, then implement ``load``, and register with
    ``@register_dataset(name)``.

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


# ---------------------------------------------------------------------------------------------
# Option checks of the adapters


def check_choice(dataset: str, options: Mapping[str, Any], key: str, allowed: Sequence[Any]) -> Any:
    """``options[key]`` if it is one of ``allowed``, else the one-sentence parameter error."""
    value = options[key]
    if value not in allowed:
        raise ValueError(f"The {key!r} option of dataset {dataset!r} must be one of "
                         f"{', '.join(map(str, allowed))}. Got {value!r} instead.")
    return value


def check_range(dataset: str, options: Mapping[str, Any], key: str, lo: float, hi: float) -> Any:
    value = options[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise ValueError(f"The {key!r} option of dataset {dataset!r} must be a number in [{lo:g}, {hi:g}]. "
                         f"Got {value!r} instead.")
    return value


def resolve_class_option(dataset: str, value: Any, allowed: Mapping[Any, tuple[int, ...]]) -> tuple[int, ...]:
    """Canonical class ids for a ``classes`` option value (an int such as 7 or a named variant)."""
    text = str(value).strip()
    for key in (value, text, int(text) if text.isdigit() else None):
        if not isinstance(key, bool) and key in allowed:
            return allowed[key]
    raise ValueError(f"The 'classes' option of dataset {dataset!r} must be one of "
                     f"{', '.join(map(str, allowed))}. Got {value!r} instead.")


# ---------------------------------------------------------------------------------------------
# The adapter base of every file-based dataset


class FileAdapter(DatasetAdapter):
    """Base of the adapters that read a downloaded dataset: ``index`` parses, ``load`` decodes.

    Class attributes (besides ``splits`` / ``options``):
      expected: split -> {"total": n, "classes": {canonical id: n} or None, "source": provenance};
        the full dataset's counts under ``expected_when`` options (checked on load: a warning,
        since subsets and re-packagings differ; ``fer-bench datasets verify`` prints them).
      layout: one line describing the official layout (used in error messages and the verify report).
      data_dir: the folder name under ``$FER_BENCH_DATA`` (defaults to the registered name).
      protocol_version: part of every fingerprint; bump it when the adapter's protocol changes (a
        changed protocol is a new version, never a silent edit).
      pool_split: a split that holds every image of the others (``all`` of the cross-validated lab
        datasets): it is decoded once and the fold splits are gathered from it, so that ten folds do
        not decode (and face-detect) every image ten times.
    """

    options: ClassVar[dict[str, Any]] = {"size": 112, "allow_missing": False, "workers": 0}
    expected: ClassVar[dict[str, dict[str, Any]]] = {}
    expected_when: ClassVar[dict[str, Any]] = {}
    layout: ClassVar[str] = ""
    data_dir: ClassVar[str] = ""
    pool_split: ClassVar[str | None] = None
    protocol_version: ClassVar[str] = "1"

    def index(self, split: str, root: Path, **options: Any) -> SplitIndex:  # pragma: no cover
        raise NotImplementedError

    def load(self, split: str, root: Path | None, **options: Any) -> FERDataset:
        if root is None:
            raise DatasetError(f"Dataset {self.registered_name!r} needs its files: pass --data-root PATH.")
        self.check_common(options)
        idx = self.index(split, Path(root), **options)
        self.check_counts(split, idx, options)
        return self.materialize(split, Path(root), idx, options, options["allow_missing"])

    def materialize(self, split: str, root: Path, idx: SplitIndex, options: Mapping[str, Any],
                    allow_missing: bool) -> FERDataset:
        """The FERDataset of ``idx`` (through the pool split when the adapter has one)."""
        pool = None
        if self.pool_split is not None and split != self.pool_split:
            pool = self.index(self.pool_split, root, **options)
        return materialize(self.registered_name, split, idx, allow_missing=allow_missing,
                           workers=options["workers"], pool=pool, version=self.protocol_version)

    def available_splits(self, root: Path, **options: Any) -> tuple[str, ...]:
        """The splits this root actually has (``splits`` unless a layout lacks an optional one)."""
        return self.splits

    def notes(self, root: Path, **options: Any) -> list[str]:
        """Extra lines for the verify report (e.g. which file variant was found)."""
        return []

    def check_common(self, options: Mapping[str, Any]) -> None:
        name = self.registered_name
        size = options["size"]
        if isinstance(size, bool) or not isinstance(size, int) or not 8 <= size <= 1024:
            raise ValueError(f"The 'size' option of dataset {name!r} must be an int in [8, 1024]. Got {size!r} instead.")
        workers = options["workers"]
        if isinstance(workers, bool) or not isinstance(workers, int) or not 0 <= workers <= 64:
            raise ValueError(f"The 'workers' option of dataset {name!r} must be an int in [0, 64] "
                             f"(0: automatic). Got {workers!r} instead.")
        if not isinstance(options["allow_missing"], bool):
            raise ValueError(f"The 'allow_missing' option of dataset {name!r} must be true or false. "
                             f"Got {options['allow_missing']!r} instead.")

    def expected_for(self, split: str, options: Mapping[str, Any], meta: dict | None = None) -> dict[str, Any] | None:
        """The card's counts for ``split`` when ``options`` (and the layout found, ``meta``) are those
        they hold for, else None."""
        if split not in self.expected:
            return None
        if any(options.get(k) != v for k, v in self.expected_when.items()):
            return None
        return self.expected[split]

    def check_counts(self, split: str, idx: SplitIndex, options: Mapping[str, Any]) -> list[str]:
        """Differences from the card's expected counts (logged as warnings, returned for verify)."""
        exp = self.expected_for(split, options, idx.meta)
        if exp is None:
            return []
        diffs = []
        if exp.get("total") is not None and len(idx) != exp["total"]:
            diffs.append(f"{len(idx)} images, the card expects {exp['total']:,}")
        for c, n in (exp.get("classes") or {}).items():
            got = idx.class_counts().get(c, 0)
            if got != n:
                diffs.append(f"{got} {L.NAMES[c]}, the card expects {n:,}")
        if diffs:
            log.warning("%s/%s: %s (a subset, a re-packaging or a changed annotation file?)",
                        self.registered_name, split, "; ".join(diffs[:3]))
        return diffs


# ---------------------------------------------------------------------------------------------
# The lab datasets whose faces are not pre-aligned (CK+, JAFFE, NimStim): crops and folds


# Their options (besides FileAdapter.options).
LAB_OPTIONS: dict[str, Any] = {"crop": "haar", "margin": 0.1, "rotate": True, "boxes": ""}


def crop_settings(dataset: str, options: Mapping[str, Any]) -> DecodeSettings:
    """Decode settings of the lab datasets (options crop, margin, rotate; crop 'boxes' -> 'box')."""
    crop = check_choice(dataset, options, "crop", ("haar", "boxes", "center", "none"))
    margin = float(check_range(dataset, options, "margin", 0.0, 1.0))
    if crop == "haar":
        require_cv2(f"crop=haar of dataset {dataset!r}")
    if crop == "boxes" and not options.get("boxes"):
        raise ValueError(f"crop=boxes of dataset {dataset!r} needs boxes=PATH, a CSV with the header "
                         f"file,x,y,w,h (file relative to the dataset root).")
    return DecodeSettings(size=options["size"], crop={"boxes": "box"}.get(crop, crop),
                          margin=margin if crop in ("haar", "boxes") else 0.0,
                          rotate=bool(options["rotate"]) and crop == "haar")


def attach_boxes(dataset: str, sources: list[Source], options: Mapping[str, Any], root: Path) -> list[Source]:
    """With crop=boxes: every source gets its box from the user's CSV (one error if any lacks one)."""
    if options.get("crop") != "boxes":
        return sources
    boxes = read_boxes_csv(Path(options["boxes"]).expanduser(), RootGuard(root))
    found = [boxes.get(relative_key(s.path, root), boxes.get(s.key)) for s in sources]
    lacking = [s.key for s, b in zip(sources, found) if b is None]
    if lacking:
        raise DatasetError(f"{options['boxes']}: no box for {len(lacking)} image(s) of {dataset}, e.g. {lacking[0]!r}; "
                           f"add a row 'file,x,y,w,h' for each (file relative to {str(root)!r}) or use crop=haar.")
    return [s._replace(box=b) for s, b in zip(sources, found)]


def subject_folds(subjects: Sequence[Any], n_folds: int) -> dict[Any, int]:
    """Subject -> fold: subjects sorted ascending, the one at rank r goes to fold ``r % n_folds``."""
    return {s: r % n_folds for r, s in enumerate(sorted(set(subjects)))}
