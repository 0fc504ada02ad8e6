"""``fer2013``: the FER2013 Kaggle CSVs, with Training / PublicTest / PrivateTest kept apart.

Also the reader of FER2013's pixel CSVs (a 48x48 grey image per row, as a string of 2,304 integers),
which FERPlus uses too: ``read_pixel_csv`` reads such a CSV and ``PixelRows`` gives the decoder the
image of a row (``SplitIndex.row_reader``).
"""
from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from fer_bench import labels as L
from fer_bench.data.adapter import FileAdapter, check_choice, resolve_class_option
from fer_bench.data.cache import cached_table
from fer_bench.data.decode import DecodeSettings, Source, SplitIndex, Unreadable
from fer_bench.data.paths import DatasetError, find_layout, relative_key
from fer_bench.registry import register_dataset

# File -> the columns it must have (names stripped: icml_face_data.csv writes "emotion, Usage, pixels").
FILES: dict[str, tuple[str, ...]] = {
    "fer2013.csv": ("emotion", "pixels", "Usage"),
    "icml_face_data.csv": ("emotion", "Usage", "pixels"),
    "train.csv": ("emotion", "pixels"),
}
USAGE = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}
# torchvision's MD5s of the genuine files (reported by verify, never required).
GENUINE_MD5 = {"fer2013.csv": "f8428a1edbd21e88f42c73edd2a14f95",
               "icml_face_data.csv": "b114b9e04e6949e5fe8b6a98b3892b1d",
               "train.csv": "3f0dfb3d3fd99c811a1299cb947e3131"}
PARSER_VERSION = "fer2013-1"


@register_dataset("fer2013")
class FER2013(FileAdapter):
    """FER2013: 35,887 48x48 grey faces from the ICML 2013 challenge, 7 classes, three official splits.

    Source: Kaggle, "challenges-in-representation-learning-facial-expression-recognition-challenge"
    (``fer2013.tar.gz``). Licence note: released for the challenge under Kaggle's competition rules
    (research use); fer-bench never ships or downloads it.

    Layout (any one of these, looked for in this order in ``--data-root`` or up to two levels below)::

        fer2013.csv           emotion,pixels,Usage                (35,887 rows)
        icml_face_data.csv    emotion, Usage, pixels              (same rows; spaces and order differ)
        train.csv [+ test.csv] emotion,pixels                     (Training only; test.csv has no labels)

    ``pixels`` is 2,304 space-separated integers (48x48, row-major, grey). ``source=`` picks a file.

    Splits (kept apart, unlike torchvision's FER2013 which merges the two test sets):
    ``train`` = Training (28,709), ``val`` = PublicTest (3,589), ``test`` = PrivateTest (3,589). With
    only train.csv / test.csv there is just ``train``: test.csv carries no labels and no Usage.

    Classes: native 0..6 = angry, disgust, fear, happy, sad, surprise, neutral, mapped through
    ``fer_bench.labels.NATIVE_MAPS['fer2013']``; classes=7 (default) or 6 (neutral dropped).

    Expected counts (classes=7): train 28,709 = anger 3,995, disgust 436, fear 4,097, happy 7,215,
    sad 4,830, surprise 3,171, neutral 4,965 (per class: third-party, many repositories agree); val and
    test 3,589 each (which of the two published per-class vectors belongs to which split is unverified,
    so only the totals are checked).

    Protocol: train on Training, select on PublicTest, report accuracy on PrivateTest. The images are
    already cropped faces: no detection; grey is copied to 3 channels and resized to ``size`` (48 by
    default, the native size).

    Options: size=48, classes=7|6, source=auto|fer2013.csv|icml_face_data.csv|train.csv,
    allow_missing=false (a malformed pixel row counts as an unreadable image), workers=0.

    Citation: I. J. Goodfellow et al. Challenges in Representation Learning: A report on three machine
    learning contests. ICONIP 2013 (arXiv:1307.0414).
    """

    splits = ("train", "val", "test")
    options = {**FileAdapter.options, "size": 48, "classes": 7, "source": "auto"}
    layout = "fer2013.csv (emotion,pixels,Usage), icml_face_data.csv or train.csv"
    data_dir = "fer2013"
    expected = {
        "train": {"total": 28709, "source": "total verified (FERPlus rows); per class third-party",
                  "classes": {L.ANGER: 3995, L.DISGUST: 436, L.FEAR: 4097, L.HAPPY: 7215, L.SAD: 4830,
                              L.SURPRISE: 3171, L.NEUTRAL: 4965}},
        "val": {"total": 3589, "source": "verified (FERPlus rows); per class unverified", "classes": None},
        "test": {"total": 3589, "source": "verified (FERPlus rows); per class unverified", "classes": None},
    }
    expected_when = {"classes": 7}

    def find(self, root: Path, options: dict[str, Any]) -> Path:
        source = check_choice(self.registered_name, options, "source", ("auto", *FILES))
        names = list(FILES) if source == "auto" else [source]
        folder, found = find_layout(root, names, self.registered_name, self.layout)
        return folder / found

    def available_splits(self, root: Path, **options: Any) -> tuple[str, ...]:
        return ("train",) if self.find(root, options).name == "train.csv" else self.splits

    def index(self, split: str, root: Path, **options: Any) -> SplitIndex:
        name = self.registered_name
        classes = resolve_class_option(name, options["classes"], {7: L.BASIC7, 6: L.SIX_BASIC})
        path = self.find(root, options)
        shown = relative_key(path, root)
        if path.name == "train.csv" and split != "train":
            raise DatasetError(f"{shown}: the train.csv/test.csv variant has labels for Training only (test.csv has "
                               f"neither labels nor Usage), so there is no {split!r} split; place fer2013.csv or "
                               f"icml_face_data.csv in {str(path.parent)!r} for PublicTest / PrivateTest.")
        table = read_table(path, shown)
        rows = np.flatnonzero(table["usage"] == USAGE[split])
        labels, keep = L.map_native(table["emotion"][rows].tolist(), "fer2013", classes)
        rows = rows[keep]
        sources = [Source(f"{path.name}#{r}", f"{shown} line {r + 2}", str(path), row=int(r)) for r in rows]
        return SplitIndex(sources=sources, labels=labels, classes=classes,
                          decode=DecodeSettings(size=options["size"]),
                          factors=pd.DataFrame({"csv_row": rows}),
                          content=[table["digest"][rows]], row_reader=PixelRows,
                          meta={"layout": shown, "usage": USAGE[split],
                                "protocol": "Training / PublicTest (val) / PrivateTest (test), kept apart",
                                "dropped_by_classes": int((~keep).sum())})

    def notes(self, root: Path, **options: Any) -> list[str]:
        path = self.find(root, options)
        h = hashlib.md5()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        genuine = h.hexdigest() == GENUINE_MD5.get(path.name)
        verdict = "the genuine Kaggle file" if genuine else "differs from the genuine file (a subset or a modified copy)"
        return [f"file: {path.name} (md5 {h.hexdigest()}: {verdict})"]


def read_table(path: Path, shown: str) -> dict[str, np.ndarray]:
    """emotion (int64), usage (str) and pixel-row digests of a FER2013 CSV, parsed once and cached."""
    columns = FILES.get(path.name, ("emotion", "pixels", "Usage"))

    def build() -> dict[str, np.ndarray]:
        frame = read_pixel_csv(path, columns)
        emotion = pd.to_numeric(frame["emotion"], errors="coerce")
        bad = np.flatnonzero(emotion.isna().to_numpy() | (emotion % 1 != 0).to_numpy())
        if len(bad):
            raise DatasetError(f"{shown} line {bad[0] + 2}: emotion {frame['emotion'].iloc[bad[0]]!r} is not an "
                               f"integer code 0..6; fix that line or restore the file.")
        codes = emotion.to_numpy().astype(np.int64)
        unknown = np.flatnonzero(~np.isin(codes, list(L.NATIVE_MAPS["fer2013"])))
        if len(unknown):
            raise DatasetError(f"{shown} line {unknown[0] + 2}: emotion {codes[unknown[0]]} is not a FER2013 code "
                               f"(0..6); fix that line or restore the file.")
        if "Usage" in frame.columns:
            usage = frame["Usage"].str.strip().to_numpy().astype(str)
            odd = np.flatnonzero(~np.isin(usage, list(USAGE.values())))
            if len(odd):
                raise DatasetError(f"{shown} line {odd[0] + 2}: Usage {usage[odd[0]]!r} is not one of "
                                   f"{', '.join(USAGE.values())}; fix that line or restore the file.")
        else:
            usage = np.full(len(frame), "Training")
        return {"emotion": codes, "usage": usage, "digest": row_digests(frame["pixels"].tolist())}

    return cached_table("fer2013", [path], PARSER_VERSION, build)


# ---------------------------------------------------------------------------------------------
# The pixel CSVs (FER2013 and its variants)


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
        raise Unreadable(f"pixels: {len(values)} values, expected {PIXELS_48} (48x48)")
    try:
        arr = np.array(values, dtype=np.int32)
    except ValueError:
        raise Unreadable("pixels: a value is not an integer") from None
    if arr.min() < 0 or arr.max() > 255:
        raise Unreadable("pixels: a value is outside 0..255")
    return Image.fromarray(arr.astype(np.uint8).reshape(48, 48))


class PixelRows:
    """The decoder's ``RowReader`` of pixel CSVs: each file is read once, when the first row of it is decoded."""

    def __init__(self) -> None:
        self._frames: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    def image(self, src: Source) -> Image.Image:
        with self._lock:
            if src.path not in self._frames:
                self._frames[src.path] = read_pixel_csv(src.path, ["pixels"])["pixels"].tolist()
        column = self._frames[src.path]
        if not 0 <= src.row < len(column):
            raise Unreadable(f"row {src.row} is not in {os.path.basename(src.path)} ({len(column)} rows)")
        return pixel_image(column[src.row])


def row_digests(texts: Sequence[str]) -> np.ndarray:
    """8-byte blake2b digests of strings, as uint64 (N,): the content identity of pixel rows."""
    out = np.empty(len(texts), dtype=np.uint64)
    for i, t in enumerate(texts):
        out[i] = int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "little")
    return out
