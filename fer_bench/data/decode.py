"""Decode a dataset's image files once into the decode cache (DESIGN.md section 2).

Every file-based adapter (RAF-DB, FER2013, FERPlus, AffectNet, CK+, JAFFE, NimStim, ImageFolder)
does the same three things, and this module does them once:

1. It parses the dataset's own annotation files into a :class:`SplitIndex`: one :class:`Source` per
   image (the file, where it was named, an optional face box or CSV pixel row), the labels as indices
   into ``classes`` and the per-image extras (subjects, vote distributions, metadata columns). Every
   path taken from an annotation file goes through :class:`RootGuard`, which rejects absolute paths,
   ``..`` and symlinks that lead outside the dataset root, naming the offending line.
2. :func:`decode_sources` reads the files with PIL (grayscale, palette, 16-bit and alpha modes are all
   brought to 8-bit RGB), crops (a given box, a centred square or a Haar face, see ``faces.py``),
   resizes to the stored size and writes one uint8 ``(N, size, size, 3)`` array into the cache
   (:func:`fer_bench.data.cache.cached_images`). A later load stats the files, finds the entry and
   memory-maps it: nothing is decoded. Missing and unreadable images are counted and listed in one
   error; a split is never silently shrunk: with ``allow_missing=true`` they are dropped and the
   count is recorded in ``FERDataset.meta``.
3. :func:`materialize` puts the decoded images and the index together into a ``FERDataset`` whose
   fingerprint covers the ordered file list, the labels and the decode settings.

The cache key adds the files' sizes and modification times to the image identity, so a file that
is replaced (a corrupt download fixed) is decoded again; the dataset fingerprint does not contain
them, so the same files give the same fingerprint on every machine.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import stat
import struct
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Mapping, NamedTuple, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from fer_bench import labels as L
from fer_bench.data import DatasetAdapter, FERDataset, cache_dir, fingerprint_of
from fer_bench.data.cache import cached_images, entry_paths

log = logging.getLogger(__name__)

DECODER_VERSION = "1"          # bump when the decoded pixels of the same settings change
CROPS = ("none", "center", "box", "haar")
RESAMPLE = Image.Resampling.BICUBIC
CHUNK = 256                    # images per decode chunk (one thread-pool map)
MAX_LISTED = 8                 # problems named in one error message


class DatasetError(ValueError):
    """A dataset folder or file is not what its adapter expects (one line: path, expected, fix)."""


# ---------------------------------------------------------------------------------------------
# Options


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
# Paths: finding the layout, confining annotation paths to the root


class RootGuard:
    """Resolves paths named by annotation files and refuses those that leave the dataset root.

    Rejected: absolute paths (``/x``, ``C:\\x``), any ``..`` component, and paths whose real location
    (after following symlinks, in any component) is outside the real root. Each refusal is a
    :class:`DatasetError` naming the line (``where``) that holds the path.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._root = str(root).rstrip(os.sep) or os.sep
        real = os.path.realpath(root)
        self._real, self._real_prefix = real, real.rstrip(os.sep) + os.sep
        self._dirs: dict[str, bool] = {}

    def path(self, rel: str, where: str) -> str:
        """``root/rel`` for a relative path ``rel`` named at ``where``; raises if it escapes.

        Plain strings, not ``pathlib``: this runs once per image of a 290k-image list on every load.
        The file itself is checked (symlink or not) by the stat pass of ``decode_sources``.
        """
        return self.join(self.relative_parts(rel, where), where, str(rel).strip())

    def join(self, parts: Sequence[str], where: str, shown: str) -> str:
        """``root/part/...`` for components already checked by ``relative_parts``; checks the folder."""
        path = os.sep.join([self._root, *parts])
        self.check_dir(path, where, shown)
        return path

    def relative_parts(self, rel: str, where: str) -> list[str]:
        """The components of a path named in an annotation file; raises if absolute or with '..'."""
        text = str(rel).strip()
        if not text:
            raise DatasetError(f"{where}: empty file name; every line must name an image file.")
        if text[0] in "/\\" or (len(text) > 1 and text[1] == ":" and text[0].isalpha()):
            raise self._escape(text, where, "is an absolute path")
        parts = [p for p in text.replace("\\", "/").split("/") if p and p != "."]
        if ".." in parts:
            raise self._escape(text, where, "contains '..'")
        if not parts:
            raise DatasetError(f"{where}: {text!r} names no file; every line must name an image file.")
        return parts

    def check_dir(self, path: str | Path, where: str, shown: str | None = None) -> None:
        """Raise if the folder of ``path`` really lies outside the root (a symlinked folder)."""
        parent = os.path.dirname(str(path))
        inside = self._dirs.get(parent)
        if inside is None:
            inside = self._inside(os.path.realpath(parent))
            self._dirs[parent] = inside
        if not inside:
            raise self._escape(shown or str(path), where, "lies in a folder that links outside the root")

    def check_link(self, path: str | Path, where: str, shown: str | None = None) -> None:
        """Raise if the symlink ``path`` leads outside the root."""
        if not self._inside(os.path.realpath(path)):
            raise self._escape(shown or str(path), where, "is a symlink to a file outside the root")

    def check(self, path: str | Path, where: str, shown: str | None = None) -> str:
        """Folder and file checks of one path (``check_dir``, and ``check_link`` when it is a symlink)."""
        self.check_dir(path, where, shown)
        with contextlib.suppress(OSError):     # missing: reported by the decoder with the other problems
            if stat.S_ISLNK(os.lstat(path).st_mode):
                self.check_link(path, where, shown)
        return str(path)

    def _inside(self, real: str) -> bool:
        return real == self._real or real.startswith(self._real_prefix)

    def _escape(self, text: str, where: str, why: str) -> DatasetError:
        return DatasetError(f"{where}: path {text!r} {why}; paths must stay inside the dataset root "
                            f"{str(self.root)!r}; fix that line or move the file under the root.")


def find_layout(root: Path, sentinels: Sequence[str], dataset: str, expected: str, depth: int = 2,
                want_dir: bool = False) -> tuple[Path, str]:
    """The folder at or up to ``depth`` levels below ``root`` that holds one of ``sentinels``.

    Returns ``(folder, sentinel found)``; sentinels are tried in order at each folder, shallow folders
    first. One sentence naming what was expected when nothing matches, or when two folders match.
    """
    root = Path(root)
    level = [root]
    for _ in range(depth + 1):
        found = []
        for folder in level:
            for sentinel in sentinels:
                target = folder / sentinel
                if target.is_dir() if want_dir else target.is_file():
                    found.append((folder, sentinel))
                    break
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise DatasetError(f"{str(root)!r} holds more than one {dataset} layout "
                               f"({', '.join(str(f / s) for f, s in found[:3])}); point --data-root at one of them.")
        level = [c for f in level for c in _subdirs(f)]
    raise DatasetError(f"{str(root)!r} is not a {dataset} folder: no {' or '.join(sentinels)} in it or up to "
                       f"{depth} levels below; expected {expected}; point --data-root at the folder you downloaded.")


def find_named(root: Path, name: str, dataset: str, depth: int = 2, want_dir: bool = False) -> Path | None:
    """The one file (or folder) called ``name`` at or up to ``depth`` levels below ``root``, else None.

    Shallower matches win; two matches at the same level are an error naming both.
    """
    level = [Path(root)]
    for _ in range(depth + 1):
        found = [f / name for f in level if ((f / name).is_dir() if want_dir else (f / name).is_file())]
        if len(found) > 1:
            raise DatasetError(f"{str(root)!r} holds {name} twice ({found[0]} and {found[1]}); point --data-root at "
                               f"the {dataset} folder you mean.")
        if found:
            return found[0]
        level = [c for f in level for c in _subdirs(f)]
    return None


def _subdirs(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def files_below(root: Path, levels: int = 3) -> Iterator[Path]:
    """Files in ``root`` and up to ``levels - 1`` folders below it, sorted by name within each folder,
    hidden entries skipped, folder symlinks not followed (lab datasets ship loose or one folder deep)."""
    level = [root]
    for _ in range(levels):
        below = []
        for folder in level:
            for entry in sorted(os.scandir(folder), key=lambda e: e.name):
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    below.append(Path(entry.path))
                else:
                    yield Path(entry.path)
        level = below


def relative_key(path: str | Path, root: str | Path) -> str:
    """``path`` relative to ``root`` in POSIX form (for keys and messages)."""
    return Path(os.path.relpath(path, root)).as_posix()


def read_text_lines(path: Path, shown: str) -> list[tuple[int, str]]:
    """Non-empty stripped lines of a text annotation file with their 1-based numbers (any line ending)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{shown}: cannot be read ({exc.strerror}); restore the file from the download.") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return [(i, line.strip()) for i, line in enumerate(text.splitlines(), start=1) if line.strip()]


# ---------------------------------------------------------------------------------------------
# The index of one split


class Source(NamedTuple):
    """One image to decode: a file, or one row of a CSV of pixel strings (FER2013).

    A named tuple: hundreds of thousands are made on every load of AffectNet, and tuples are cheap.
    """

    key: str                     # identity in the fingerprint: POSIX path relative to the dataset's own folder
                                 # (wherever --data-root points), or "file.csv#row"
    where: str                   # where it was named, for messages: "EmoLabel/list_patition_label.txt line 3"
    path: str                    # the image file, or the pixel CSV when ``row >= 0``
    box: tuple[float, float, float, float] | None = None   # face box (x, y, w, h) in the full image
    row: int = -1                # data row (0-based, header excluded) of a pixel CSV


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
    """How files become stored pixels; all of it enters the fingerprint."""

    size: int
    crop: str = "none"           # none: whole image | center: centred square | box: Source.box | haar: faces.py
    margin: float = 0.0          # added on each side of a box / Haar face, as a fraction of its size
    rotate: bool = False         # Haar only: level the eye line

    def __post_init__(self) -> None:
        if self.crop not in CROPS:
            raise ValueError(f"crop={self.crop!r} is not allowed; use one of {', '.join(CROPS)}.")

    def describe(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "resample": "bicubic", "decoder": DECODER_VERSION,
                "jpeg_draft": True, "mode": "RGB uint8"}


@dataclasses.dataclass
class SplitIndex:
    """Everything an adapter knows about one split before any pixel is decoded."""

    sources: list[Source]
    labels: np.ndarray                       # int64 (N,) indices into ``classes``
    classes: tuple[int, ...]
    decode: DecodeSettings
    groups: np.ndarray | None = None         # subject ids (N,)
    label_dist: np.ndarray | None = None     # float32 (N, C)
    factors: pd.DataFrame | None = None      # per-image metadata columns (N rows)
    meta: dict = dataclasses.field(default_factory=dict)
    content: list = dataclasses.field(default_factory=list)  # extra image identity (e.g. pixel digests)
    guard: RootGuard | None = None           # confines the files (symlinks are checked when they are stat-ed)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        n = len(self.sources)
        for field in ("labels", "groups", "label_dist", "factors"):
            value = getattr(self, field)
            if value is not None and len(value) != n:
                raise ValueError(f"SplitIndex: {field} has {len(value)} rows for {n} sources.")

    def __len__(self) -> int:
        return len(self.sources)

    def class_counts(self) -> dict[int, int]:
        """Canonical id -> number of images."""
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts)}

    def take(self, keep: np.ndarray) -> "SplitIndex":
        """The rows where the boolean mask (or index array) ``keep`` selects."""
        index = np.flatnonzero(keep) if np.asarray(keep).dtype == bool else np.asarray(keep, dtype=np.int64)
        return dataclasses.replace(
            self, sources=[self.sources[i] for i in index], labels=self.labels[index],
            groups=None if self.groups is None else self.groups[index],
            label_dist=None if self.label_dist is None else self.label_dist[index],
            factors=None if self.factors is None else self.factors.iloc[index].reset_index(drop=True),
            meta=dict(self.meta))


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


# Options of the lab datasets whose faces are not pre-aligned (CK+, JAFFE, NimStim).
LAB_OPTIONS: dict[str, Any] = {"crop": "haar", "margin": 0.1, "rotate": True, "boxes": ""}


def crop_settings(dataset: str, options: Mapping[str, Any]) -> DecodeSettings:
    """Decode settings of the lab datasets (options crop, margin, rotate; crop 'boxes' -> 'box')."""
    crop = check_choice(dataset, options, "crop", ("haar", "boxes", "center", "none"))
    margin = float(check_range(dataset, options, "margin", 0.0, 1.0))
    if crop == "haar":
        from fer_bench.data.faces import require_cv2
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
    from fer_bench.data.faces import read_boxes_csv
    boxes = read_boxes_csv(Path(options["boxes"]).expanduser(), RootGuard(root))
    found = [boxes.get(relative_key(s.path, root), boxes.get(s.key)) for s in sources]
    lacking = [s.key for s, b in zip(sources, found) if b is None]
    if lacking:
        raise DatasetError(f"{options['boxes']}: no box for {len(lacking)} image(s) of {dataset}, e.g. {lacking[0]!r}; "
                           f"add a row 'file,x,y,w,h' for each (file relative to {str(root)!r}) or use crop=haar.")
    return [s._replace(box=b) for s, b in zip(sources, found)]


# ---------------------------------------------------------------------------------------------
# Building the dataset


def materialize(name: str, split: str, idx: SplitIndex, allow_missing: bool = False,
                workers: int = 0, pool: SplitIndex | None = None, version: str = "1") -> FERDataset:
    """Decode (or map from the cache) the images of ``idx`` and return the ``FERDataset``.

    With ``pool`` (an index whose sources include all of ``idx``'s, decoded with the same settings),
    the pool is decoded (once, cached) and the split's rows are gathered from it into memory.
    """
    if pool is None:
        decoded = decode_sources(idx.sources, idx.decode, name=name, split=split, allow_missing=allow_missing,
                                 workers=workers, content=idx.content, guard=idx.guard)
    else:
        decoded = _gather(name, split, idx, pool, allow_missing, workers)
    kept = decoded.kept
    dropped = len(idx) - len(kept)
    if dropped:
        idx = idx.take(kept)
    fingerprint = fingerprint_of("fer-bench dataset", name, version, split, decoded.image_id, idx.labels,
                                 list(idx.classes), idx.label_dist if idx.label_dist is not None else "-",
                                 idx.groups.astype(str).tolist() if idx.groups is not None else "-",
                                 kept if dropped else "-")
    meta = dict(idx.meta)
    meta.update(decode=idx.decode.describe(), cache_key=decoded.key, images_dropped=dropped, protocol_version=version,
                missing=[p for p in decoded.problems if p["problem"] == "missing"][:100],
                unreadable=[p for p in decoded.problems if p["problem"] != "missing"][:100],
                n_missing=decoded.n_missing, n_unreadable=decoded.n_unreadable)
    if decoded.faces:
        meta["face_crop"] = decoded.faces
    return FERDataset(images=decoded.images, labels=idx.labels, classes=idx.classes, name=name, split=split,
                      fingerprint=fingerprint, label_dist=idx.label_dist, groups=idx.groups,
                      factors=idx.factors, meta=meta)


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


def _gather(name: str, split: str, idx: SplitIndex, pool: SplitIndex, allow_missing: bool, workers: int) -> "Decoded":
    """``Decoded`` of ``idx`` taken from the decoded ``pool`` (missing / unreadable: only its own)."""
    if pool.decode != idx.decode:
        raise ValueError(f"{name}/{split}: the pool split was indexed with other decode settings.")
    whole = decode_sources(pool.sources, pool.decode, name=name, split=f"{split} (pool)", allow_missing=True,
                           workers=workers, content=pool.content, guard=pool.guard)
    where = {s.path: i for i, s in enumerate(pool.sources)}
    try:
        positions = np.array([where[s.path] for s in idx.sources], dtype=np.int64)
    except KeyError as exc:
        raise ValueError(f"{name}/{split}: {exc} is not in the pool split; the adapter's splits must be "
                         f"subsets of its pool split.") from None
    row_of = np.full(len(pool.sources), -1, dtype=np.int64)
    row_of[whole.kept] = np.arange(len(whole.kept))
    rows = row_of[positions]
    split_pos = {int(p): i for i, p in enumerate(positions)}
    problems = [{**p, "index": split_pos[p["index"]]} for p in whole.problems if p["index"] in split_pos]
    n_missing = sum(p["problem"] == "missing" for p in problems)
    if problems and not allow_missing:
        raise DatasetError(problem_message(name, split, len(idx), problems, n_missing, len(problems) - n_missing))
    kept = np.flatnonzero(rows >= 0)
    images = np.ascontiguousarray(whole.images[rows[kept]])        # (n, S, S, 3): a fold of a small lab dataset
    image_id = fingerprint_of(whole.image_id, positions)
    return Decoded(images, kept, whole.key, image_id, problems, n_missing, len(problems) - n_missing, whole.faces)


@dataclasses.dataclass
class Decoded:
    images: np.ndarray           # uint8 (len(kept), S, S, 3), a memmap of the cache
    kept: np.ndarray             # int64 indices into the sources
    key: str                     # cache entry
    image_id: str                # identity of the decoded pixels (sources, boxes, settings)
    problems: list[dict]         # {"index", "key", "where", "problem"} of missing / unreadable images
    n_missing: int
    n_unreadable: int
    faces: dict                  # Haar statistics (crop=haar only)


def decode_sources(sources: Sequence[Source], settings: DecodeSettings, *, name: str, split: str,
                   allow_missing: bool = False, workers: int = 0, content: Sequence[Any] = (),
                   guard: RootGuard | None = None) -> Decoded:
    """Decode ``sources`` into the cache once; map the cached array on later calls.

    Missing files (found by ``stat``) and unreadable ones (found while decoding) abort with one
    :class:`DatasetError` listing them unless ``allow_missing``; either way the readable images are
    cached first, so a second call with ``allow_missing=True`` decodes nothing.
    """
    image_id = fingerprint_of("fer-bench images", DECODER_VERSION, settings.describe(),
                              [s.key for s in sources], [s.box for s in sources] if settings.crop == "box" else "-",
                              list(content))
    present, signature = stat_sources(sources, guard)
    key = f"{_safe(name)}-{fingerprint_of(image_id, signature)[:40]}"      # the same images: the same entry
    report_path = _report_path(key)
    rows = np.flatnonzero(present)
    shape = (settings.size, settings.size, 3)

    def build() -> Iterator[tuple[int, np.ndarray]]:
        return _decode_rows(sources, rows, settings, workers, report_path, f"{name}/{split}")

    images = cached_images(key, len(rows), shape, build, version=DECODER_VERSION, verify="sample")
    report = _read_report(report_path, len(rows))
    if report is None and len(rows):
        # An entry without its decode report (report deleted): decode again to know the failures.
        for path in entry_paths(key):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        images = cached_images(key, len(rows), shape, build, version=DECODER_VERSION, verify="sample")
        report = _read_report(report_path, len(rows))
    report = report or {"unreadable": [], "faces": {}}

    problems = [{"index": int(i), "key": sources[i].key, "where": sources[i].where, "problem": "missing"}
                for i in np.flatnonzero(~present)]
    bad_rows = [int(r) for r, _ in report["unreadable"]]
    problems += [{"index": int(rows[r]), "key": sources[rows[r]].key, "where": sources[rows[r]].where,
                  "problem": reason} for r, reason in report["unreadable"]]
    problems.sort(key=lambda p: p["index"])
    n_missing, n_unreadable = int((~present).sum()), len(bad_rows)
    if problems and not allow_missing:
        raise DatasetError(problem_message(name, split, len(sources), problems, n_missing, n_unreadable))
    kept = rows
    if bad_rows:
        good = np.setdiff1d(np.arange(len(rows)), bad_rows)
        full = images
        images = cached_images(f"{key}-kept", len(good), shape, lambda: _copy_rows(full, good),
                               version=DECODER_VERSION, verify="sample")
        kept = rows[good]
    if problems:
        log.warning("%s/%s: dropped %d missing and %d unreadable image(s) (allow_missing=true); first: %s",
                    name, split, n_missing, n_unreadable, problems[0]["key"])
    return Decoded(images, kept.astype(np.int64), key, image_id, problems, n_missing, n_unreadable,
                   report.get("faces", {}))


def problem_message(name: str, split: str, total: int, problems: list[dict], n_missing: int,
                    n_unreadable: int) -> str:
    """One line: how many images failed, the first few with where they were named, and the fix."""
    listed = "; ".join(f"{p['key']} ({p['problem']}, named in {p['where']})" for p in problems[:MAX_LISTED])
    more = f"; and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return (f"{name}/{split}: {len(problems)} of {total} images cannot be used ({n_missing} missing, "
            f"{n_unreadable} unreadable): {listed}{more}. Restore these files from the original download, "
            f"or pass the option allow_missing=true to drop them (the count is recorded with the results).")


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:40] or "x"


def stat_sources(sources: Sequence[Source], guard: RootGuard | None = None) -> tuple[np.ndarray, bytes]:
    """(present mask, signature bytes of sizes and mtimes) of the sources' files.

    One ``lstat`` per file; a symlink is followed only after ``guard`` has checked that it stays
    inside the dataset root (the error names the line that holds the path).
    """
    present = np.ones(len(sources), dtype=bool)
    sig = np.empty((len(sources), 2), dtype=np.int64)
    seen: dict[str, tuple[int, int]] = {}
    for i, s in enumerate(sources):
        st = seen.get(s.path)
        if st is None:
            try:
                info = os.lstat(s.path)
                if stat.S_ISLNK(info.st_mode):
                    if guard is not None:
                        guard.check_link(s.path, s.where, s.key)
                    info = os.stat(s.path)
                st = (info.st_size, info.st_mtime_ns) if stat.S_ISREG(info.st_mode) else (-2, -2)
            except OSError:
                st = (-1, -1)
            seen[s.path] = st
        sig[i] = st
        present[i] = st[0] >= 0
    return present, sig.tobytes()


def _report_path(key: str) -> Path:
    return cache_dir() / "decode_reports" / f"{key}.json"


def _read_report(path: Path, n: int) -> dict | None:
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return report if report.get("n") == n and report.get("version") == DECODER_VERSION else None


def _atomic_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _copy_rows(full: np.ndarray, good: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    for start in range(0, len(good), 4096):
        yield start, np.ascontiguousarray(full[good[start:start + 4096]])


def _decode_rows(sources: Sequence[Source], rows: np.ndarray, settings: DecodeSettings, workers: int,
                 report_path: Path, what: str) -> Iterator[tuple[int, np.ndarray]]:
    """Chunks ``(start, uint8 (B, S, S, 3))`` of the decoded ``rows``; writes the decode report last.

    Unreadable images become black rows and are listed in the report (the caller drops or refuses them).
    """
    n_workers = workers or min(4, os.cpu_count() or 1)
    pixels = _PixelRows()
    cropper = None
    if settings.crop == "haar":
        from fer_bench.data.faces import HaarCropper
        cropper = HaarCropper(settings.margin, settings.rotate)
    unreadable: list[tuple[int, str]] = []
    face_status: dict[str, int] = {}
    face_failed: list[str] = []
    S = settings.size

    def one(r: int) -> tuple[np.ndarray | None, str | None, str | None]:
        src = sources[rows[r]]
        try:
            img = pixels.image(src) if src.row >= 0 else open_image(src.path, settings, src.box)
        except _Unreadable as exc:
            return None, str(exc), None
        return decode_image(img, settings, src.box, cropper)

    log.info("%s: decoding %d images into the cache (stored size %d, crop %s)", what, len(rows), S, settings.crop)
    with concurrent.futures.ThreadPoolExecutor(max_workers=n_workers) as pool:
        for start in range(0, len(rows), CHUNK):
            stop = min(start + CHUNK, len(rows))
            out = np.zeros((stop - start, S, S, 3), dtype=np.uint8)
            for k, (array, error, status) in enumerate(pool.map(one, range(start, stop))):
                if error is not None:
                    unreadable.append((start + k, error))
                    continue
                out[k] = array
                if status is not None:
                    face_status[status] = face_status.get(status, 0) + 1
                    if status == "no_face" and len(face_failed) < 100:
                        face_failed.append(sources[rows[start + k]].key)
            yield start, out
    faces = {}
    if cropper is not None:
        faces = {"detector": "opencv haar (frontalface_default + eye)", "counts": face_status,
                 "no_face_files": face_failed, "fallback": "centred square of the whole image"}
        if face_status.get("no_face"):
            log.warning("%s: no face found in %d of %d images (centred square used instead)",
                        what, face_status["no_face"], len(rows))
    _atomic_json(report_path, {"version": DECODER_VERSION, "n": len(rows), "unreadable": unreadable,
                               "faces": faces})


class _Unreadable(Exception):
    """An image file that cannot be decoded (the message is the reason)."""


def open_image(path: str | Path, settings: DecodeSettings | None = None,
               box: tuple[float, float, float, float] | None = None) -> Image.Image:
    """The decoded image at ``path`` (first frame); JPEGs are decoded at a reduced scale when the
    stored size allows it (PIL's draft mode), which ``decode_image`` accounts for through ``img.info``."""
    try:
        img = Image.open(path)
        scale = 1.0
        if settings is not None and img.format == "JPEG" and settings.crop != "haar":
            W, H = img.size
            bw, bh = (box[2], box[3]) if (box is not None and settings.crop == "box") else (W, H)
            if settings.crop == "center":
                bw = bh = min(W, H)
            if bw > 0 and bh > 0:
                req = (max(1, int(np.ceil(W * settings.size / bw))), max(1, int(np.ceil(H * settings.size / bh))))
                drafted = img.draft(None, req)
                if drafted is not None:
                    scale = W / drafted[1][2]
        img.load()
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, Image.DecompressionBombError) as exc:
        raise _Unreadable(f"unreadable: {type(exc).__name__}: {' '.join(str(exc).split())[:120]}") from None
    img.info["fer_bench_scale"] = scale
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB from any PIL mode (16-bit and float grey are scaled, alpha is dropped)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = arr.max() if arr.size else 0
        if top > 255:
            arr = arr * (255.0 / (65535.0 if top <= 65535 else top))
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")      # the palette's transparency goes through RGBA; alpha is dropped
    return img.convert("RGB")


def decode_image(img: Image.Image, settings: DecodeSettings, box: tuple[float, float, float, float] | None = None,
                 cropper: Any = None) -> tuple[np.ndarray | None, str | None, str | None]:
    """(uint8 (S, S, 3) or None, reason when unusable, face status) of one opened image."""
    S = settings.size
    scale = float(img.info.get("fer_bench_scale", 1.0))
    try:
        img = to_rgb(img)
    except (OSError, ValueError) as exc:
        return None, f"unreadable: {type(exc).__name__}: {' '.join(str(exc).split())[:120]}", None
    W, H = img.size
    status = None
    if W < 1 or H < 1:
        return None, "empty image", None
    if settings.crop == "none":
        out = img.resize((S, S), RESAMPLE)
    elif settings.crop == "center":
        side = min(W, H)
        x0, y0 = (W - side) / 2, (H - side) / 2
        out = img.resize((S, S), RESAMPLE, box=(x0, y0, x0 + side, y0 + side))
    elif settings.crop == "box":
        if box is None:
            return None, "no face box", None
        x, y, w, h = (v / scale for v in box)
        if settings.margin:
            from fer_bench.data.faces import square_box
            out = img.crop(tuple(int(round(v)) for v in square_box((x, y, w, h), settings.margin)))
            out = out.resize((S, S), RESAMPLE)
        else:
            x0, y0, x1, y1 = max(0.0, x), max(0.0, y), min(float(W), x + w), min(float(H), y + h)
            if x1 - x0 < 1 or y1 - y0 < 1:
                return None, f"face box {tuple(box)} lies outside the {W}x{H} image", None
            out = img.resize((S, S), RESAMPLE, box=(x0, y0, x1, y1))
    elif settings.crop == "haar":
        face, status = cropper(img)
        out = face.resize((S, S), RESAMPLE)
    else:
        raise ValueError(f"crop={settings.crop!r} is not allowed; use one of {', '.join(CROPS)}.")
    return np.asarray(out, dtype=np.uint8), None, status


# ---------------------------------------------------------------------------------------------
# CSV pixel strings (FER2013 and its variants)


PIXELS_48 = 48 * 48


def read_pixel_csv(path: Path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """A FER2013-style CSV with its column names stripped (``icml_face_data.csv`` has ' Usage')."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{str(path)!r} cannot be read as CSV ({type(exc).__name__}: {str(exc)[:100]}); "
                           f"replace it with the original file.") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    if columns is not None:
        lacking = [c for c in columns if c not in frame.columns]
        if lacking:
            raise DatasetError(f"{str(path)!r} has the columns {list(frame.columns)}, not {list(columns)}; "
                               f"expected the original file (header e.g. 'emotion,pixels,Usage').")
    return frame


def pixel_image(text: str) -> Image.Image:
    """A 48x48 grey image from a string of 2,304 space-separated integers 0..255."""
    values = text.split()
    if len(values) != PIXELS_48:
        raise _Unreadable(f"pixels: {len(values)} values, expected {PIXELS_48} (48x48)")
    try:
        arr = np.array(values, dtype=np.int32)
    except ValueError:
        raise _Unreadable("pixels: a value is not an integer") from None
    if arr.min() < 0 or arr.max() > 255:
        raise _Unreadable("pixels: a value is outside 0..255")
    return Image.fromarray(arr.astype(np.uint8).reshape(48, 48))


class _PixelRows:
    """Pixel strings of CSV files, read once per file when the first row of it is decoded."""

    def __init__(self) -> None:
        self._frames: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    def image(self, src: Source) -> Image.Image:
        with self._lock:
            if src.path not in self._frames:
                self._frames[src.path] = read_pixel_csv(src.path, ["pixels"])["pixels"].tolist()
        column = self._frames[src.path]
        if not 0 <= src.row < len(column):
            raise _Unreadable(f"row {src.row} is not in {os.path.basename(src.path)} ({len(column)} rows)")
        return pixel_image(column[src.row])


def row_digests(texts: Sequence[str]) -> np.ndarray:
    """8-byte blake2b digests of strings, as uint64 (N,): the content identity of pixel rows."""
    out = np.empty(len(texts), dtype=np.uint64)
    for i, t in enumerate(texts):
        out[i] = int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "little")
    return out


# ---------------------------------------------------------------------------------------------
# A small cache of parsed annotation tables (big CSVs are parsed once)


def cached_table(name: str, files: Sequence[Path], parser_version: str,
                 build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Arrays parsed from ``files``, stored under ``cache_dir()/index`` keyed by the files' sizes and
    modification times, so a 300 MB CSV is parsed once. Arrays must not be object dtype."""
    sig = []
    for f in files:
        info = os.stat(f)
        sig.append([str(Path(f).resolve()), info.st_size, info.st_mtime_ns])
    key = f"{_safe(name)}-{fingerprint_of(parser_version, sig)[:40]}"
    path = cache_dir() / "index" / f"{key}.npz"
    with contextlib.suppress(OSError, ValueError, KeyError, EOFError):
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    table = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".npz", dir=path.parent)
    os.close(fd)
    try:
        np.savez(tmp, **table)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return table


# ---------------------------------------------------------------------------------------------
# Folds


def subject_folds(subjects: Sequence[Any], n_folds: int) -> dict[Any, int]:
    """Subject -> fold: subjects sorted ascending, the one at rank r goes to fold ``r % n_folds``."""
    return {s: r % n_folds for r, s in enumerate(sorted(set(subjects)))}

