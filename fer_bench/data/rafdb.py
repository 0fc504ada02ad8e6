"""``rafdb``: the basic (single-label) subset of RAF-DB, read from its official layout."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fer_bench import labels as L
from fer_bench.data.adapter import FileAdapter, check_choice, resolve_class_option
from fer_bench.data.decode import DecodeSettings, Source, SplitIndex
from fer_bench.data.paths import DatasetError, RootGuard, find_layout, read_text_lines, relative_key
from fer_bench.registry import register_dataset

LIST_FILE = "EmoLabel/list_patition_label.txt"   # sic: "patition", as in the download
VARIANTS = ("aligned", "original")


@register_dataset("rafdb")
class RAFDB(FileAdapter):
    """RAF-DB basic: 15,339 in-the-wild faces, 7 classes, official train / test split.

    Source: Real-world Affective Faces Database, http://www.whdeng.cn/raf/model1.html (download
    ``basic/`` after signing the licence). Licence note: academic, non-commercial research only; images
    may not be redistributed; fer-bench never ships or downloads them.

    Layout (``--data-root`` may point at ``basic/`` or up to two levels above it)::

        basic/EmoLabel/list_patition_label.txt      "<file> <label>" per line, e.g. "train_00001.jpg 5"
        basic/Image/aligned/train_00001_aligned.jpg  100x100 aligned faces (variant=aligned, default)
        basic/Image/original/train_00001.jpg         the original images (variant=original)

    Splits: ``train`` (names ``train_*``, 12,271) and ``test`` (``test_*``, 3,068); the split comes from
    the file name prefix only. There is no official validation split: methods carve a stratified
    hold-out from train (recorded with the result).

    Classes: native codes 1..7 = surprise, fear, disgust, happiness, sadness, anger, neutral, mapped
    through ``fer_bench.labels.NATIVE_MAPS['rafdb_basic']``; ``classes=7`` (default) or ``classes=6``
    (the six basic emotions, neutral dropped).

    Expected counts (classes=7): train 12,271 = surprise 1,290, fear 281, disgust 717, happy 4,772,
    sad 1,982, anger 705, neutral 2,524 (counted from SCN's train list); test 3,068 = surprise 329,
    fear 74, disgust 160, happy 1,185, sad 478, anger 162, neutral 680 (third-party count; the total is
    confirmed by several loaders).

    Protocol: train on train, report accuracy (and mean class accuracy) on test. Aligned faces are only
    resized to the stored ``size`` (no face detection), as SCN, DAN and POSTER do.

    Options: size=112, variant=aligned|original, classes=7|6, allow_missing=false, workers=0.

    Citation: S. Li, W. Deng, J. Du. Reliable Crowdsourcing and Deep Locality-Preserving Learning for
    Expression Recognition in the Wild. CVPR 2017.
    """

    splits = ("train", "test")
    options = {**FileAdapter.options, "variant": "aligned", "classes": 7}
    layout = f"{LIST_FILE} and Image/aligned/*_aligned.jpg (the RAF-DB basic download)"
    data_dir = "rafdb"
    expected = {
        "train": {"total": 12271, "source": "verified: SCN train list",
                  "classes": {L.SURPRISE: 1290, L.FEAR: 281, L.DISGUST: 717, L.HAPPY: 4772, L.SAD: 1982,
                              L.ANGER: 705, L.NEUTRAL: 2524}},
        "test": {"total": 3068, "source": "total: several loaders; per class: third-party",
                 "classes": {L.SURPRISE: 329, L.FEAR: 74, L.DISGUST: 160, L.HAPPY: 1185, L.SAD: 478,
                             L.ANGER: 162, L.NEUTRAL: 680}},
    }
    expected_when = {"classes": 7}

    def index(self, split: str, root: Path, **options: Any) -> SplitIndex:
        name = self.registered_name
        variant = check_choice(name, options, "variant", VARIANTS)
        classes = resolve_class_option(name, options["classes"], {7: L.BASIC7, 6: L.SIX_BASIC})
        base = root / "basic" if (root / "basic" / LIST_FILE).is_file() else root
        folder, _ = find_layout(base, [LIST_FILE], name, self.layout)
        guard = RootGuard(root)
        list_path = folder / LIST_FILE
        shown = relative_key(list_path, root)
        table = L.NATIVE_MAPS["rafdb_basic"]
        folder_parts = [] if relative_key(folder, root) == "." else relative_key(folder, root).split("/")
        sources, codes, names = [], [], []
        for lineno, line in read_text_lines(list_path, shown):
            where = f"{shown} line {lineno}"
            parts = line.split()
            if len(parts) != 2 or not parts[1].lstrip("+-").isdigit():
                raise DatasetError(f"{where}: {line[:60]!r} is not '<file> <label>' (e.g. 'train_00001.jpg 5'); "
                                   f"fix that line or restore {LIST_FILE} from the download.")
            file, code = parts[0], int(parts[1])
            names_in = guard.relative_parts(file, where)   # the list names files, never paths out of the folder
            if code not in table:
                raise DatasetError(f"{where}: label {code} is not a basic RAF-DB code ({min(table)}..{max(table)}); "
                                   f"is this the compound subset? Point --data-root at the basic/ folder.")
            base_name = names_in[-1]
            prefix = "train" if base_name.startswith("train") else "test" if base_name.startswith("test") else None
            if prefix is None:
                raise DatasetError(f"{where}: file {file!r} starts with neither 'train' nor 'test', so its split is "
                                   f"unknown; fix that line.")
            if prefix != split:
                continue
            image = f"{os.path.splitext(base_name)[0]}_aligned.jpg" if variant == "aligned" else base_name
            parts_in = ["Image", variant, *names_in[:-1], image]
            path = guard.join(folder_parts + parts_in, where, file)
            key = "/".join(parts_in)
            sources.append(Source(key, where, path))
            codes.append(code)
            names.append(file)
        labels, keep = L.map_native(codes, table, classes)
        keep_idx = np.flatnonzero(keep)
        idx = SplitIndex(sources=[sources[i] for i in keep_idx], labels=labels, classes=classes,
                         decode=DecodeSettings(size=options["size"]), guard=guard,
                         factors=pd.DataFrame({"file": [names[i] for i in keep_idx],
                                               "native_label": [codes[i] for i in keep_idx]}),
                         meta={"layout": f"{relative_key(list_path, root)} ({variant})", "variant": variant,
                               "protocol": "official train/test split; no official validation split",
                               "dropped_by_classes": int((~keep).sum())})
        if not len(idx):
            raise DatasetError(f"{shown}: no '{split}_*' lines; expected the full RAF-DB basic list "
                               f"(train_00001.jpg ... test_3068.jpg); restore the file from the download.")
        return idx
