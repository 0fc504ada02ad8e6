"""``ferplus``: FER2013 images relabelled by 10 annotators each (FER+), with the official label rules."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fer_bench import labels as L
from fer_bench.data.adapter import FileAdapter, check_choice, resolve_class_option
from fer_bench.data.decode import DecodeSettings, Source, SplitIndex
from fer_bench.data.fer2013 import USAGE, PixelRows, read_pixel_csv, read_table
from fer_bench.data.paths import DatasetError, RootGuard, find_named, relative_key
from fer_bench.registry import register_dataset

FOLDERS = {"train": "FER2013Train", "val": "FER2013Valid", "test": "FER2013Test"}
VOTE_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
                "unknown", "NF")            # column j holds the votes for native code j
HEADER_2017 = ("Usage", "Image name", *VOTE_COLUMNS)
HEADER_2016 = ("Usage", *VOTE_COLUMNS)
LABEL_MODES = ("majority", "probability", "crossentropy", "multi_target")
UNKNOWN = 8                                  # native index of 'unknown'; 9 is 'not a face'
EPS = np.finfo(float).eps


def process_votes(raw: np.ndarray, mode: str) -> np.ndarray:
    """The FERPlus label rule (``ferplus.py`` of microsoft/FERPlus, re-derived): votes (10,) -> (10,)
    distribution summing to 1; all mass on index 8 ('unknown') means the image is not used.

    1. Single votes (and zeros) are outliers: entries below 1 + eps become 0; ``s`` is the rest's sum.
    2. majority: one-hot at the first maximum if it holds more than half of ``s``, else unknown.
       probability / crossentropy: take the largest entries (all ties at once, in index order) until
       they hold 75% of ``s`` or three are taken; 'unknown' / 'not a face' ends the search and is kept
       only if nothing was taken before it; fewer than half of ``s`` taken, or more than three
       entries, gives unknown.
       multi_target: the entries with at least 30% of ``s``; unknown if they hold at most half of ``s``.
    """
    if mode not in LABEL_MODES:
        raise ValueError(f"label_mode={mode!r} is not allowed; use one of {', '.join(LABEL_MODES)}.")
    votes = np.where(np.asarray(raw, dtype=np.float64) < 1.0 + EPS, 0.0, np.asarray(raw, dtype=np.float64))
    s = votes.sum()
    out = np.zeros(len(votes))
    unknown = np.zeros(len(votes))
    unknown[UNKNOWN] = 1.0
    if mode == "majority":
        top = int(np.argmax(votes))
        if votes[top] > 0.5 * s:
            out[top] = votes[top]
        else:
            return unknown
    elif mode in ("probability", "crossentropy"):
        taken_sum, count, remaining = 0.0, 0, votes.copy()
        searching = True
        while taken_sum < 0.75 * s and count < 3 and searching:
            top = remaining.max()
            for i in range(len(remaining)):
                if remaining[i] != top:
                    continue
                out[i] = top
                remaining[i] = 0.0
                taken_sum += top
                count += 1
                if i >= UNKNOWN:             # 'unknown' or 'not a face' among the largest: stop here
                    searching = False
                    if out.sum() > top:      # other emotions were taken first: drop it again
                        out[i] = 0.0
                        count -= 1
                    break
        if out.sum() <= 0.5 * s or count > 3:
            return unknown
    else:  # multi_target
        out = np.where(votes >= 0.3 * s, votes, 0.0)
        if out.sum() <= 0.5 * s:
            return unknown
    return out / out.sum()


@register_dataset("ferplus")
class FERPlus(FileAdapter):
    """FERPlus (FER+): the FER2013 images with 10 crowd votes each over 8 emotions + unknown + not-a-face.

    Source: https://github.com/microsoft/FERPlus (``fer2013new.csv``, ``data/FER2013*/label.csv`` and
    ``src/generate_training_data.py``); the images are FER2013's (Kaggle). Licence note: the FER+
    labels are MIT-licensed; the FER2013 images follow Kaggle's competition rules; fer-bench ships
    neither.

    Layout (any folder up to three levels below ``--data-root``)::

        FER2013Train/fer0000000.png ... + label.csv     (generate_training_data.py output; Valid, Test alike)
        fer2013new.csv   Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF
        fer2013.csv      the FER2013 pixels (images=pixels), joined to fer2013new.csv row by row

    Votes (``votes=``): ``label_csv`` reads ``FER2013*/label.csv`` (no header; ``name,"(x, y, w, h)",10
    votes``: what the official training code reads), ``fer2013new`` reads ``fer2013new.csv`` (the 2017
    file, or the 2016 one without the name column); ``auto`` prefers label.csv. The two differ for
    about 1,600 images; ``meta['vote_source']`` records which one was used. Images (``images=``):
    ``folders`` (the PNGs) or ``pixels`` (decoded from fer2013.csv); ``auto`` prefers the folders.
    Rows are joined on the ``Image name`` column, never on a reconstructed number: names skip the 173
    rows that are not faces (empty name; dropped) and 4 names occur twice (the later row wins, as the
    official generator overwrites the earlier PNG).

    Splits: ``train`` = Training / FER2013Train, ``val`` = PublicTest / FER2013Valid,
    ``test`` = PrivateTest / FER2013Test.

    Classes: vote columns 0..7 = neutral, happiness, surprise, sadness, anger, disgust, fear, contempt
    (``NATIVE_MAPS['ferplus_votes']``; 8 unknown and 9 not-a-face are never classes). classes=8 (default)
    or 7 (contempt dropped).

    Label modes (train only; val and test always use ``majority``, as the official code does):
    ``majority`` (default: single votes dropped, a label needs more than half of the remaining votes;
    unknown and not-a-face dropped), ``probability``, ``crossentropy``, ``multi_target`` (see
    :func:`process_votes`). ``labels`` is the arg-max; ``label_dist`` is the annotators' vote
    distribution over ``classes`` (raw votes, normalised); the mode's official training target is in
    ``factors`` (columns ``target_<emotion>``) with the raw votes (``votes_<column>``).

    Expected counts (classes=8, majority): with label.csv train 25,045, val 3,191, test 3,137 (test:
    neutral 1,083, happy 892, surprise 394, sad 382, anger 269, disgust 16, fear 86, contempt 15); with
    fer2013new.csv 25,057 / 3,199 / 3,152 (computed from the files with the official rule).

    Protocol: train on train (label_mode), select on val, report accuracy on test (majority labels).
    48x48 grey faces, resized only (size=48 by default).

    Options: size=48, classes=8|7, label_mode=majority|probability|crossentropy|multi_target,
    votes=auto|label_csv|fer2013new, images=auto|folders|pixels, allow_missing=false, workers=0.

    Citation: E. Barsoum, C. Zhang, C. Canton Ferrer, Z. Zhang. Training Deep Networks for Facial
    Expression Recognition with Crowd-Sourced Label Distribution. ICMI 2016.
    """

    splits = ("train", "val", "test")
    options = {**FileAdapter.options, "size": 48, "classes": 8, "label_mode": "majority", "votes": "auto",
               "images": "auto"}
    layout = "FER2013Train|Valid|Test/ with label.csv and PNGs, or fer2013new.csv (+ fer2013.csv)"
    data_dir = "ferplus"
    expected = {
        "label.csv": {"train": 25045, "val": 3191, "test": 3137},
        "fer2013new.csv": {"train": 25057, "val": 3199, "test": 3152},
    }
    expected_test_classes = {L.NEUTRAL: 1083, L.HAPPY: 892, L.SURPRISE: 394, L.SAD: 382, L.ANGER: 269,
                             L.DISGUST: 16, L.FEAR: 86, L.CONTEMPT: 15}

    def expected_for(self, split: str, options: dict[str, Any], meta: dict | None = None) -> dict | None:
        if options.get("classes") != 8 or options.get("label_mode") != "majority" or meta is None:
            return None
        source = meta.get("vote_file")
        if source not in self.expected:
            return None
        classes = self.expected_test_classes if (split == "test" and source == "label.csv") else None
        return {"total": self.expected[source][split], "classes": classes,
                "source": f"computed from {source} with the official majority rule"}

    def index(self, split: str, root: Path, **options: Any) -> SplitIndex:
        name = self.registered_name
        mode = check_choice(name, options, "label_mode", LABEL_MODES)
        votes_opt = check_choice(name, options, "votes", ("auto", "label_csv", "fer2013new"))
        images_opt = check_choice(name, options, "images", ("auto", "folders", "pixels"))
        classes = resolve_class_option(name, options["classes"], {8: L.BASIC8, 7: L.BASIC7})
        effective_mode = mode if split == "train" else "majority"
        folder = find_named(root, FOLDERS[split], name, depth=3, want_dir=True)
        new_csv = find_named(root, "fer2013new.csv", name, depth=3)
        label_csv = folder / "label.csv" if folder is not None and (folder / "label.csv").is_file() else None

        vote_source = votes_opt if votes_opt != "auto" else ("label_csv" if label_csv is not None else "fer2013new")
        if vote_source == "label_csv" and label_csv is None:
            raise DatasetError(f"{str(root)!r}: no {FOLDERS[split]}/label.csv found (up to three levels down); expected "
                               f"{self.layout}; copy data/{FOLDERS[split]}/label.csv from the FERPlus repository or "
                               f"use votes=fer2013new.")
        if vote_source == "fer2013new" and new_csv is None:
            raise DatasetError(f"{str(root)!r}: no fer2013new.csv found (up to three levels down); expected "
                               f"{self.layout}; download fer2013new.csv from the FERPlus repository.")
        has_pngs = folder is not None and any(folder.glob("*.png"))
        image_source = images_opt if images_opt != "auto" else ("folders" if has_pngs else "pixels")
        if image_source == "folders" and folder is None:
            raise DatasetError(f"{str(root)!r}: no {FOLDERS[split]}/ folder of PNGs found; run the FERPlus "
                               f"generate_training_data.py, or use images=pixels with fer2013.csv.")

        guard = RootGuard(root)
        new_table = _read_new_csv(new_csv, relative_key(new_csv, root)) if new_csv is not None else None
        if vote_source == "label_csv":
            rows = _read_label_csv(label_csv, relative_key(label_csv, root))
            vote_file = "label.csv"
        else:
            usage = new_table["usage"]
            pick = np.flatnonzero(usage == USAGE[split])
            shown = relative_key(new_csv, root)
            rows = [(new_table["names"][r] if new_table["names"] is not None else None, int(r),
                     new_table["votes"][r], f"{shown} line {r + 2}") for r in pick]
            vote_file = "fer2013new.csv"
        n_rows = len(rows)

        # Names: rows without one are not faces (no image exists); a repeated name keeps its last row.
        named = vote_source == "label_csv" or new_table["names"] is not None
        no_name = [r for r in rows if named and not r[0]]
        rows = [r for r in rows if not named or r[0]]
        duplicates = 0
        if named:
            last = {r[0]: i for i, r in enumerate(rows)}
            duplicates = len(rows) - len(last)
            rows = [r for i, r in enumerate(rows) if last[r[0]] == i]

        content: list = []
        if image_source == "folders":
            fold_rel = relative_key(folder, root)
            if any(r[0] is None for r in rows):
                raise DatasetError(f"{relative_key(new_csv, root)}: this fer2013new.csv has no 'Image name' column "
                                   f"(the 2016 version), so it cannot be joined to the PNG folders; use the 2017 file, "
                                   f"label.csv, or images=pixels.")
            sources = []
            for r in rows:
                path = guard.path(f"{fold_rel}/{r[0]}", r[3])
                sources.append(Source(f"{FOLDERS[split]}/{r[0]}", r[3], path))
        else:
            fer_csv = find_named(root, "fer2013.csv", name, depth=3)
            if fer_csv is None:
                raise DatasetError(f"{str(root)!r}: images=pixels needs fer2013.csv (up to three levels down) next to "
                                   f"fer2013new.csv; place the Kaggle fer2013.csv there or use the PNG folders.")
            fer_shown = relative_key(fer_csv, root)
            fer_table = read_table(fer_csv, fer_shown)
            if new_table is None:
                raise DatasetError(f"{str(root)!r}: images=pixels needs fer2013new.csv to join names to fer2013.csv rows; "
                                   f"download it from the FERPlus repository.")
            fu, nu = fer_table["usage"], new_table["usage"]
            m = min(len(fu), len(nu))
            if len(fu) != len(nu) or (fu[:m] != nu[:m]).any():
                diff = np.flatnonzero(fu[:m] != nu[:m])
                raise DatasetError(f"{fer_shown} and {relative_key(new_csv, root)} do not describe the same rows "
                                   f"({len(fu)} vs {len(nu)} rows; first Usage difference at line "
                                   f"{(diff[0] if len(diff) else m) + 2}); use the original Kaggle fer2013.csv.")
            if vote_source == "label_csv":
                if new_table["names"] is None:
                    raise DatasetError(f"{relative_key(new_csv, root)} has no 'Image name' column (2016 version): label.csv "
                                       f"names cannot be joined to fer2013.csv rows; use the 2017 fer2013new.csv.")
                row_of = {n: i for i, n in enumerate(new_table["names"]) if n}
                joined = []
                for r in rows:
                    if r[0] not in row_of:
                        raise DatasetError(f"{r[3]}: {r[0]!r} is not an Image name of fer2013new.csv, so its pixels "
                                           f"cannot be found in fer2013.csv; restore label.csv or use images=folders.")
                    joined.append((r[0], row_of[r[0]], r[2], r[3]))
                rows = joined
            sources = [Source(f"fer2013.csv#{r[1]}", r[3], str(fer_csv), row=r[1]) for r in rows]
            content = [fer_table["digest"][[r[1] for r in rows]]]

        votes = np.array([r[2] for r in rows], dtype=np.float64).reshape(-1, 10)
        processed = np.array([process_votes(v, effective_mode) for v in votes]).reshape(-1, 10)
        winner = processed.argmax(axis=1) if len(rows) else np.zeros(0, dtype=np.int64)
        valid = winner < UNKNOWN
        labels, keep = L.map_native(np.where(valid, winner, UNKNOWN).tolist(), "ferplus_votes", classes)
        # Column j of the vote table is native code j; reorder to ``classes`` through the label table.
        native_of = {c: j for j, c in L.NATIVE_MAPS["ferplus_votes"].items() if c is not None}
        cols = [native_of[c] for c in classes]
        dist = votes[:, cols]
        target = processed[:, cols]
        keep_idx = np.flatnonzero(keep)
        dist, target = dist[keep_idx], target[keep_idx]
        dist = (dist / dist.sum(axis=1, keepdims=True)).astype(np.float32)
        target = target / np.maximum(target.sum(axis=1, keepdims=True), EPS)
        factors = pd.DataFrame({"image_name": [rows[i][0] or "" for i in keep_idx],
                                "fer2013_row": [rows[i][1] if rows[i][1] is not None else -1 for i in keep_idx]})
        for j, col in enumerate(VOTE_COLUMNS):
            factors[f"votes_{col}"] = votes[keep_idx, j].astype(np.int64)
        for k, c in enumerate(classes):
            factors[f"target_{L.NAMES[c]}"] = target[:, k].astype(np.float32)
        if not len(keep_idx):
            raise DatasetError(f"{str(root)!r}: no {split} image of FERPlus keeps a label under "
                               f"label_mode={effective_mode}; expected {self.layout}.")
        votes_shown = relative_key(label_csv if vote_file == "label.csv" else new_csv, root)
        images_shown = relative_key(folder, root) + "/" if image_source == "folders" else "fer2013.csv pixels"
        if vote_file == "label.csv":
            vote_source_text = "label.csv (official code path)"
        else:
            vote_source_text = f"fer2013new.csv ({'2017, with Image name' if named else '2016, no Image name'})"
        return SplitIndex(
            sources=[sources[i] for i in keep_idx], labels=labels, classes=classes,
            decode=DecodeSettings(size=options["size"]), label_dist=dist, guard=guard, factors=factors,
            content=[c[keep_idx] for c in content], row_reader=PixelRows if image_source == "pixels" else None,
            meta={"vote_source": vote_source_text, "vote_file": vote_file, "image_source": image_source,
                  "label_mode": effective_mode, "layout": f"votes {votes_shown}, images {images_shown}",
                  "protocol": "train: label_mode rule; val/test: official majority rule",
                  "rows": n_rows, "rows_without_name": len(no_name), "duplicate_names_dropped": duplicates,
                  "dropped_by_rule": int((~valid).sum()), "dropped_by_classes": int((valid & ~keep).sum())})


def _read_new_csv(path: Path, shown: str) -> dict[str, Any]:
    """Usage, names (None for the 2016 file) and the (N, 10) votes of fer2013new.csv."""
    frame = read_pixel_csv(path)
    header = tuple(frame.columns)
    if header not in (HEADER_2017, HEADER_2016):
        raise DatasetError(f"{shown} line 1: header {','.join(header)[:120]!r} is not FERPlus's "
                           f"{','.join(HEADER_2017)!r}; restore fer2013new.csv from the FERPlus repository.")
    votes = frame[list(VOTE_COLUMNS)].apply(pd.to_numeric, errors="coerce")
    bad = np.flatnonzero(votes.isna().any(axis=1).to_numpy())
    if len(bad):
        raise DatasetError(f"{shown} line {bad[0] + 2}: a vote is not a number; fix that line or restore the file.")
    usage = frame["Usage"].str.strip().to_numpy().astype(str)
    odd = np.flatnonzero(~np.isin(usage, list(USAGE.values())))
    if len(odd):
        raise DatasetError(f"{shown} line {odd[0] + 2}: Usage {usage[odd[0]]!r} is not one of "
                           f"{', '.join(USAGE.values())}; fix that line.")
    names = frame["Image name"].str.strip().tolist() if "Image name" in frame.columns else None
    return {"usage": usage, "names": names, "votes": votes.to_numpy(dtype=np.float64)}


def _read_label_csv(path: Path, shown: str) -> list[tuple[str, None, np.ndarray, str]]:
    """Rows (name, None, votes (10,), where) of a FERPlus ``label.csv`` (no header)."""
    rows = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            for line, row in enumerate(csv.reader(fh), start=1):
                if not row or not "".join(row).strip():
                    continue
                where = f"{shown} line {line}"
                if len(row) != 12:
                    raise DatasetError(f"{where}: {len(row)} fields, expected 12 (name, \"(x, y, w, h)\", 10 votes); "
                                       f"fix that line or restore label.csv from the FERPlus repository.")
                try:
                    votes = np.array([float(v) for v in row[2:]])
                except ValueError:
                    raise DatasetError(f"{where}: a vote is not a number; fix that line.") from None
                rows.append((row[0].strip(), None, votes, where))
    except OSError as exc:
        raise DatasetError(f"{shown}: cannot be read ({exc.strerror}); restore the file.") from None
    return rows
