"""Decode a dataset's image files once into the decode cache (DESIGN.md section 2).

Every file-based adapter (RAF-DB, FER2013, FERPlus, AffectNet, CK+, JAFFE, NimStim, ImageFolder)
does the same three things, and this module does the last two once:

1. It parses the dataset's own annotation files into a :class:`SplitIndex`: one :class:`Source` per
   image (the file, where it was named, an optional face box or the row of a table of pixels), the
   labels as indices into ``classes`` and the per-image extras (subjects, vote distributions,
   metadata columns). Every path taken from an annotation file goes through
   :class:`fer_bench.data.paths.RootGuard`, which confines it to the dataset root.
2. :func:`decode_sources` reads the files with PIL (grayscale, palette, 16-bit and alpha modes are all
   brought to 8-bit RGB), crops (a given box, a centred square or a Haar face, see ``faces.py``),
   resizes to the stored size and writes one uint8 ``(N, size, size, 3)`` array into the cache
   (:func:`fer_bench.data.cache.cached_images`). Sources that are rows of a table rather than files
   are read by the index's ``row_reader`` (FER2013's pixel CSVs: ``fer2013.PixelRows``). A later load
   stats the files, finds the entry and memory-maps it: nothing is decoded. Missing and unreadable
   images are counted and listed in one error; a split is never silently shrunk: with
   ``allow_missing=true`` they are dropped and the count is recorded in ``FERDataset.meta``.
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
import json
import logging
import os
import stat
import struct
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Protocol, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from fer_bench.data.cache import cache_dir, cached_images, entry_paths, key_part
from fer_bench.data.dataset import FERDataset, fingerprint_of
from fer_bench.data.faces import HaarCropper, square_box
from fer_bench.data.paths import DatasetError, RootGuard
from fer_bench.fileio import atomic_write_text

log = logging.getLogger(__name__)

DECODER_VERSION = "1"          # bump when the decoded pixels of the same settings change
CROPS = ("none", "center", "box", "haar")
RESAMPLE = Image.Resampling.BICUBIC
CHUNK = 256                    # images per decode chunk (one thread-pool map)
MAX_LISTED = 8                 # problems named in one error message


# ---------------------------------------------------------------------------------------------
# The index of one split


class Source(NamedTuple):
    """One image to decode: a file, or one row of a table of pixels (FER2013's CSV, read by a ``RowReader``).

    A named tuple: hundreds of thousands are made on every load of AffectNet, and tuples are cheap.
    """

    key: str                     # identity in the fingerprint: POSIX path relative to the dataset's own folder
                                 # (wherever --data-root points), or "file.csv#row"
    where: str                   # where it was named, for messages: "EmoLabel/list_patition_label.txt line 3"
    path: str                    # the image file, or the pixel CSV when ``row >= 0``
    box: tuple[float, float, float, float] | None = None   # face box (x, y, w, h) in the full image
    row: int = -1                # data row (0-based, header excluded) of a table of pixels


class RowReader(Protocol):
    """Reads the image of a source that is a row of a table (``Source.row >= 0``) instead of a file.

    ``SplitIndex.row_reader`` makes one per decode (so the tables it loads are freed after); it is called
    from several threads. A row that cannot be used raises :class:`Unreadable` with the reason.
    """

    def image(self, src: Source) -> Image.Image: ...


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
    row_reader: Callable[[], RowReader] | None = None   # reads the sources that are table rows (FER2013)

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
# Building the dataset


def materialize(name: str, split: str, idx: SplitIndex, allow_missing: bool = False,
                workers: int = 0, pool: SplitIndex | None = None, version: str = "1") -> FERDataset:
    """Decode (or map from the cache) the images of ``idx`` and return the ``FERDataset``.

    With ``pool`` (an index whose sources include all of ``idx``'s, decoded with the same settings),
    the pool is decoded (once, cached) and the split's rows are gathered from it into memory.
    """
    if pool is None:
        decoded = decode_sources(idx.sources, idx.decode, name=name, split=split, allow_missing=allow_missing,
                                 workers=workers, content=idx.content, guard=idx.guard, row_reader=idx.row_reader)
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


def _gather(name: str, split: str, idx: SplitIndex, pool: SplitIndex, allow_missing: bool, workers: int) -> "Decoded":
    """``Decoded`` of ``idx`` taken from the decoded ``pool`` (missing / unreadable: only its own)."""
    if pool.decode != idx.decode:
        raise ValueError(f"{name}/{split}: the pool split was indexed with other decode settings.")
    whole = decode_sources(pool.sources, pool.decode, name=name, split=f"{split} (pool)", allow_missing=True,
                           workers=workers, content=pool.content, guard=pool.guard, row_reader=pool.row_reader)
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
                   guard: RootGuard | None = None, row_reader: Callable[[], RowReader] | None = None) -> Decoded:
    """Decode ``sources`` into the cache once; map the cached array on later calls.

    Missing files (found by ``stat``) and unreadable ones (found while decoding) abort with one
    :class:`DatasetError` listing them unless ``allow_missing``; either way the readable images are
    cached first, so a second call with ``allow_missing=True`` decodes nothing.
    """
    image_id = fingerprint_of("fer-bench images", DECODER_VERSION, settings.describe(),
                              [s.key for s in sources], [s.box for s in sources] if settings.crop == "box" else "-",
                              list(content))
    present, signature = stat_sources(sources, guard)
    key = f"{key_part(name)}-{fingerprint_of(image_id, signature)[:40]}"      # the same images: the same entry
    report_path = _report_path(key)
    rows = np.flatnonzero(present)
    shape = (settings.size, settings.size, 3)

    def build() -> Iterator[tuple[int, np.ndarray]]:
        return _decode_rows(sources, rows, settings, workers, report_path, f"{name}/{split}", row_reader)

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


def _copy_rows(full: np.ndarray, good: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    for start in range(0, len(good), 4096):
        yield start, np.ascontiguousarray(full[good[start:start + 4096]])


def _decode_rows(sources: Sequence[Source], rows: np.ndarray, settings: DecodeSettings, workers: int,
                 report_path: Path, what: str, row_reader: Callable[[], RowReader] | None = None
                 ) -> Iterator[tuple[int, np.ndarray]]:
    """Chunks ``(start, uint8 (B, S, S, 3))`` of the decoded ``rows``; writes the decode report last.

    Unreadable images become black rows and are listed in the report (the caller drops or refuses them).
    """
    n_workers = workers or min(4, os.cpu_count() or 1)
    if row_reader is None and any(sources[r].row >= 0 for r in rows):
        raise ValueError(f"{what}: sources name rows of a table but the index has no row_reader to read them.")
    reader = row_reader() if row_reader is not None else None
    cropper = None
    if settings.crop == "haar":
        cropper = HaarCropper(settings.margin, settings.rotate)
    unreadable: list[tuple[int, str]] = []
    face_status: dict[str, int] = {}
    face_failed: list[str] = []
    S = settings.size

    def one(r: int) -> tuple[np.ndarray | None, str | None, str | None]:
        src = sources[rows[r]]
        try:
            img = reader.image(src) if src.row >= 0 else open_image(src.path, settings, src.box)
        except Unreadable as exc:
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
    atomic_write_text(report_path, json.dumps({"version": DECODER_VERSION, "n": len(rows), "unreadable": unreadable,
                                               "faces": faces}))


class Unreadable(Exception):
    """An image (a file or a table row) that cannot be decoded (the message is the reason)."""


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
        raise Unreadable(f"unreadable: {type(exc).__name__}: {' '.join(str(exc).split())[:120]}") from None
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
