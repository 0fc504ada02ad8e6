"""``jaffe``: the Japanese Female Facial Expression database, leave-one-subject-out or 10-fold."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fer_bench import labels as L
from fer_bench.data.adapter import (LAB_OPTIONS, FileAdapter, attach_boxes, check_choice, check_range, crop_settings,
                                    resolve_class_option)
from fer_bench.data.decode import Source, SplitIndex
from fer_bench.data.paths import DatasetError, RootGuard, files_below, relative_key
from fer_bench.registry import register_dataset

NAME = re.compile(r"^([A-Z]{2})\.([A-Z]{2})(\d+)\.(\d+)\.(tiff?|png|jpe?g|bmp)$", re.IGNORECASE)
IMAGE_LIKE = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
SUBJECTS = ("KA", "KL", "KM", "KR", "MK", "NA", "NM", "TM", "UY", "YM")


def stratified_folds(labels: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Fold of each item: within each class, a seeded shuffle dealt round-robin over the folds."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=np.int64)
    offset = 0
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        fold[idx] = (np.arange(len(idx)) + offset) % n_folds
        offset += len(idx)          # continue the deal so small classes do not all start at fold 0
    return fold


@register_dataset("jaffe")
class JAFFE(FileAdapter):
    """JAFFE: 213 posed grey portraits of 10 Japanese women, 7 expressions (6 basic + neutral).

    Source: https://zenodo.org/record/3451524 (Lyons, Kamachi, Gyoba; request form). Licence note:
    non-commercial scientific research only; images may not be redistributed; fer-bench never ships
    or downloads them.

    Layout: one flat folder (``jaffe/`` or ``jaffedbase/``, found up to two levels below
    ``--data-root``) of files named ``<subject>.<expression><repetition>.<number>.tiff``, e.g.
    ``KA.AN1.39.tiff``: subjects KA, KL, KM, KR, MK, NA, NM, TM, UY, YM; repetitions and numbers have
    gaps (``KM.DI3.22`` without ``KM.DI2``). Names are matched case-insensitively and .tif / .png / .jpg /
    .bmp re-encodings are accepted; README, ``.dat`` files and the like are ignored (counted).

    Classes: NE, HA, SA, SU, AN, DI, FE (``NATIVE_MAPS['jaffe']``); classes=7 (default, 213 images) or 6
    (neutral dropped, 183).

    Protocols: ``protocol=loso`` (default): leave one subject out, ``fold`` = the subject code (KA..YM)
    or its index 0..9 in sorted order; ``protocol=kfold``: person-dependent stratified ``folds``-fold CV
    (default 10; within each class a ``seed``-ed shuffle dealt round-robin), ``fold`` = 0..folds-1.
    ``test`` is the fold, ``train`` the rest, ``all`` every image (cross-dataset testing). No validation
    split: methods carve a subject-disjoint hold-out (``groups`` = subject index).

    Faces are not cropped (hair, shoulders, background): ``crop=haar`` (default; needs
    ``pip install fer-bench[align]``), ``boxes``, ``center`` or ``none``, as for CK+.

    Expected counts: 213 = neutral 30, happy 31, sad 31, surprise 30, anger 30, disgust 29, fear 32;
    per subject KA 23, KL 22, KM 22, YM 22, MK 21, NA 21, TM 21, UY 21, KR 20, NM 20.

    Options: size=112, classes=7|6, protocol=loso|kfold, fold="0", folds=10, seed=0,
    crop=haar|boxes|center|none, margin=0.1, rotate=true, boxes="", allow_missing=false, workers=0.

    Citation: M. Lyons, S. Akamatsu, M. Kamachi, J. Gyoba. Coding Facial Expressions with Gabor Wavelets.
    FG 1998.
    """

    splits = ("train", "test", "all")
    options = {**FileAdapter.options, **LAB_OPTIONS, "classes": 7, "protocol": "loso", "fold": "0", "folds": 10,
               "seed": 0}
    layout = "a folder of <subject>.<expression><n>.<number>.tiff files, e.g. KA.AN1.39.tiff"
    pool_split = "all"
    data_dir = "jaffe"
    expected = {"all": {"total": 213, "source": "verified from a full file listing",
                        "classes": {L.NEUTRAL: 30, L.HAPPY: 31, L.SAD: 31, L.SURPRISE: 30, L.ANGER: 30,
                                    L.DISGUST: 29, L.FEAR: 32}}}
    expected_when = {"classes": 7}

    def scan(self, root: Path) -> tuple[list[tuple[Path, re.Match]], list[str]]:
        """Matching files (path, match) under ``root`` (up to two levels) and image-like names that do not match."""
        matches, odd = [], []
        for path in files_below(root):
            m = NAME.match(path.name)
            if m:
                matches.append((path, m))
            elif path.name.lower().endswith(IMAGE_LIKE):
                odd.append(relative_key(path, root))
        return matches, odd

    def index(self, split: str, root: Path, **options: Any) -> SplitIndex:
        name = self.registered_name
        classes = resolve_class_option(name, options["classes"], {7: L.BASIC7, 6: L.SIX_BASIC})
        protocol = check_choice(name, options, "protocol", ("loso", "kfold"))
        folds = int(check_range(name, options, "folds", 2, 100))
        settings = crop_settings(name, options)
        matches, odd = self.scan(root)
        if not matches:
            raise DatasetError(f"{str(root)!r} is not a JAFFE folder: no file named like KA.AN1.39.tiff in it or up to "
                               f"two levels below; expected {self.layout}.")
        guard = RootGuard(root)
        table = L.NATIVE_MAPS["jaffe"]
        records = []
        for path, m in sorted(matches, key=lambda pm: pm[0].name.upper()):
            rel = relative_key(path, root)
            subject, code, rep, number = m.group(1).upper(), m.group(2).upper(), int(m.group(3)), int(m.group(4))
            if code not in table:
                raise DatasetError(f"{rel}: expression code {code!r} is not a JAFFE code ({', '.join(table)}); rename "
                                   f"or remove the file.")
            guard.check_dir(path, rel)
            records.append((Source(path.name, rel, str(path)), code, subject, rep, number))
        subjects = sorted({r[2] for r in records})
        subject_index = np.array([subjects.index(r[2]) for r in records])
        labels, in_classes = L.map_native([r[1] for r in records], table, classes)
        position = np.cumsum(in_classes) - 1
        fold_value = str(options["fold"]).strip()
        if protocol == "loso":
            if fold_value.upper() in subjects:
                held = subjects.index(fold_value.upper())
            elif fold_value.isdigit() and int(fold_value) < len(subjects):
                held = int(fold_value)
            else:
                raise ValueError(f"The 'fold' option of dataset {name!r} must be a subject code ({', '.join(subjects)}) "
                                 f"or its index 0..{len(subjects) - 1} with protocol=loso. Got {fold_value!r} instead.")
            item_fold = (subject_index == held).astype(np.int64)
            test_fold, fold_text = 1, f"leave-one-subject-out, held-out subject {subjects[held]}"
        else:
            if not fold_value.isdigit() or int(fold_value) >= folds:
                raise ValueError(f"The 'fold' option of dataset {name!r} must be 0..{folds - 1} with protocol=kfold. "
                                 f"Got {fold_value!r} instead.")
            item_fold = np.full(len(records), -1)
            labelled = np.flatnonzero(in_classes)
            item_fold[labelled] = stratified_folds(labels, folds, int(options["seed"]))
            test_fold, fold_text = int(fold_value), f"person-dependent stratified {folds}-fold, fold {fold_value} " \
                                                    f"(seed {options['seed']})"
        select = {"all": np.ones(len(records), bool), "test": item_fold == test_fold,
                  "train": item_fold != test_fold}[split]
        rows = np.flatnonzero(in_classes & select)
        factors = pd.DataFrame({"subject": [records[i][2] for i in rows], "repetition": [records[i][3] for i in rows],
                                "number": [records[i][4] for i in rows]})
        unknown_subjects = sorted(set(subjects) - set(SUBJECTS))
        return SplitIndex(sources=attach_boxes(name, [records[i][0] for i in rows], options, root),
                          labels=labels[position[rows]], classes=classes, decode=settings,
                          groups=subject_index[rows], factors=factors, guard=guard,
                          meta={"layout": f"{len(records)} JAFFE-named files",
                                "protocol": "all images" if split == "all" else fold_text,
                                "subjects": subjects, "unexpected_subjects": unknown_subjects,
                                "unmatched_image_files": odd[:50], "n_unmatched_image_files": len(odd)})
