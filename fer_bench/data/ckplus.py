"""``ckplus``: the Extended Cohn-Kanade dataset (CK+), peak frames of the labelled sequences."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fer_bench import labels as L
from fer_bench.data.adapter import (LAB_OPTIONS, FileAdapter, attach_boxes, check_range, crop_settings,
                                    resolve_class_option, subject_folds)
from fer_bench.data.decode import Source, SplitIndex
from fer_bench.data.paths import DatasetError, RootGuard, find_named, read_text_lines, relative_key
from fer_bench.registry import register_dataset

EMOTION_FILE = re.compile(r"^(S\d+)_(\d+)_(\d+)_emotion\.txt$", re.IGNORECASE)
FRAME_FILE = re.compile(r"^(S\d+)_(\d+)_(\d+)\.png$", re.IGNORECASE)
CLASS_SETS = {"6": L.SIX_BASIC, "7c": L.SIX_BASIC + (L.CONTEMPT,), "7n": L.BASIC7, "8": L.BASIC8}


@register_dataset("ckplus")
class CKPlus(FileAdapter):
    """CK+: 593 posed sequences (neutral to peak) of 123 subjects; 327 sequences carry an emotion label.

    Source: https://www.jeffcohn.net/Resources/ (CK+ agreement form): ``cohn-kanade-images.zip`` and
    ``Emotion_labels.zip``. Licence note: non-commercial research only; publication of subject images is
    restricted; fer-bench never ships or downloads them.

    Layout (both folders are found by name up to three levels below ``--data-root``, so nested unzips
    such as ``Emotion_labels/Emotion/`` work)::

        cohn-kanade-images/S005/001/S005_001_00000001.png ... S005_001_00000011.png
        Emotion/S005/001/S005_001_00000011_emotion.txt      one float, e.g. "   3.0000000e+00"

    The emotion file's frame number is the peak (last) frame; sequences without a file are unlabelled
    ("if there is no file it means that there is no emotion label"), and empty Emotion folders exist.

    Classes: native 0..7 = neutral, anger, contempt, disgust, fear, happy, sadness, surprise
    (``NATIVE_MAPS['ckplus']``). ``classes``: ``7c`` (default: the six basic emotions + contempt, the
    peak frames only), ``6`` (no contempt), ``7n`` (six basic + neutral) and ``8`` (all); with 7n / 8 the
    first frame of each labelled sequence is added as neutral.

    Protocol: the last ``peak_frames`` frames (default 3) of each labelled sequence carry its label
    (327 x 3 = 981 images; survey convention, not from a primary source). 10 subject-independent folds
    by sorted subject id: the subject at rank r (0-based) is in fold r mod ``folds``, as Emotion-FAN's
    fold list (its folds 1..10 are fold=0..9 here): ``test`` is fold ``fold``, ``train`` the others,
    ``all`` everything (cross-dataset testing). Report the mean over the 10 folds. No validation split:
    methods carve a subject-disjoint hold-out (``groups`` = subject number).

    Faces are not pre-aligned: ``crop=haar`` (default; OpenCV Haar face + eyes, eye line levelled,
    ``margin`` on each side; needs ``pip install fer-bench[align]``; failures fall back to the centred
    square and are counted), ``crop=boxes`` with ``boxes=PATH`` (CSV file,x,y,w,h), ``center`` or ``none``.

    Expected counts (classes=7c, peak_frames=3, split all): 981 = anger 135, contempt 54, disgust 177,
    fear 75, happy 207, sad 84, surprise 249 (3 x the 327 labelled sequences: 45 / 18 / 59 / 25 / 69 /
    28 / 83, from 118 subjects).

    Options: size=112, classes=7c|6|7n|8, peak_frames=3, folds=10, fold=0, crop=haar|boxes|center|none,
    margin=0.1, rotate=true, boxes="", allow_missing=false, workers=0.

    Citation: P. Lucey, J. F. Cohn, T. Kanade, J. Saragih, Z. Ambadar, I. Matthews. The Extended
    Cohn-Kanade Dataset (CK+). CVPR Workshops 2010. (And T. Kanade, J. F. Cohn, Y. Tian, FG 2000.)
    """

    splits = ("train", "test", "all")
    options = {**FileAdapter.options, **LAB_OPTIONS, "classes": "7c", "peak_frames": 3, "folds": 10, "fold": 0}
    layout = "cohn-kanade-images/Sxxx/nnn/Sxxx_nnn_0000000k.png and Emotion/Sxxx/nnn/Sxxx_nnn_0000000k_emotion.txt"
    pool_split = "all"
    data_dir = "ckplus"
    expected = {"all": {"total": 981, "source": "3 x the 327 labelled sequences (Emotion-FAN list)",
                        "classes": {L.ANGER: 135, L.CONTEMPT: 54, L.DISGUST: 177, L.FEAR: 75, L.HAPPY: 207,
                                    L.SAD: 84, L.SURPRISE: 249}}}
    expected_when = {"classes": "7c", "peak_frames": 3}

    def index(self, split: str, root: Path, **options: Any) -> SplitIndex:
        name = self.registered_name
        classes = resolve_class_option(name, str(options["classes"]), CLASS_SETS)
        peak = int(check_range(name, options, "peak_frames", 1, 20))
        folds = int(check_range(name, options, "folds", 2, 200))
        fold = int(check_range(name, options, "fold", 0, folds - 1))
        settings = crop_settings(name, options)
        images_dir = find_named(root, "cohn-kanade-images", name, depth=3, want_dir=True)
        emotion_dir = find_named(root, "Emotion", name, depth=3, want_dir=True)
        for found, what in ((images_dir, "cohn-kanade-images/"), (emotion_dir, "Emotion/")):
            if found is None:
                raise DatasetError(f"{str(root)!r} is not a CK+ folder: no {what} in it or up to three levels below; "
                                   f"expected {self.layout}; unzip cohn-kanade-images.zip and Emotion_labels.zip there.")
        guard = RootGuard(root)
        table = L.NATIVE_MAPS["ckplus"]
        with_neutral = L.NEUTRAL in classes
        records = []          # (source, native code, subject, sequence, frame, role)
        empty_dirs = peak_not_last = 0
        for seq_dir in sorted(p for subj in sorted(emotion_dir.iterdir()) if subj.is_dir()
                              for p in subj.iterdir() if p.is_dir()):
            files = [f for f in sorted(seq_dir.iterdir()) if EMOTION_FILE.match(f.name)]
            if not files:
                empty_dirs += 1
                continue
            shown = relative_key(files[0], root)
            if len(files) > 1:
                raise DatasetError(f"{relative_key(seq_dir, root)}: {len(files)} emotion files, expected one per "
                                   f"sequence; keep the one of the peak frame.")
            subject, sequence, frame = EMOTION_FILE.match(files[0].name).groups()
            code = _read_code(files[0], shown, table)
            k = int(frame)
            frames_dir = images_dir / subject / sequence
            frames = {}
            if frames_dir.is_dir():
                for f in frames_dir.iterdir():
                    m = FRAME_FILE.match(f.name)
                    if m:
                        frames[int(m.group(3))] = f
            if frames and k != max(frames):
                peak_not_last += 1
            wanted = [(n, code, "peak") for n in range(k, max(0, k - peak), -1)]
            if with_neutral:
                wanted.append((min(frames) if frames else 1, 0, "neutral"))
            for n, c, role in wanted:
                path = frames.get(n, frames_dir / f"{subject}_{sequence}_{n:08d}.png")
                guard.check_dir(path, shown)
                source = Source(relative_key(path, images_dir.parent), shown, str(path))
                records.append((source, c, subject, sequence, n, role))
        if not records:
            raise DatasetError(f"{relative_key(emotion_dir, root)}: no *_emotion.txt files; expected {self.layout}; "
                               f"unzip Emotion_labels.zip there.")
        subjects = np.array([int(r[2][1:]) for r in records])
        fold_of = subject_folds(subjects.tolist(), folds)
        subject_fold = np.array([fold_of[s] for s in subjects])
        labels, in_classes = L.map_native([r[1] for r in records], table, classes)
        select = {"all": np.ones(len(records), bool), "test": subject_fold == fold, "train": subject_fold != fold}[split]
        keep = in_classes & select
        position = np.cumsum(in_classes) - 1
        rows = np.flatnonzero(keep)
        factors = pd.DataFrame({"subject": [records[i][2] for i in rows], "sequence": [records[i][3] for i in rows],
                                "frame": [records[i][4] for i in rows], "role": [records[i][5] for i in rows],
                                "fold": subject_fold[rows]})
        sources = attach_boxes(name, [records[i][0] for i in rows], options, root)
        return SplitIndex(sources=sources, labels=labels[position[rows]], classes=classes, decode=settings,
                          groups=subjects[rows], factors=factors, guard=guard,
                          meta={"layout": f"{relative_key(images_dir, root)} + {relative_key(emotion_dir, root)}",
                                "protocol": f"{'all images' if split == 'all' else f'fold {fold} of {folds}'}: subject-"
                                            f"independent folds by sorted subject id; last {peak} frame(s) per labelled "
                                            f"sequence{' + first frame as neutral' if with_neutral else ''}",
                                "labelled_sequences": len({(r[2], r[3]) for r in records}),
                                "subjects": len(fold_of), "empty_emotion_dirs": empty_dirs,
                                "peak_frame_not_last_png": peak_not_last, "fold": fold, "folds": folds})


def _read_code(path: Path, shown: str, table: dict) -> int:
    """The integer code of a CK+ emotion file ('   3.0000000e+00')."""
    lines = read_text_lines(path, shown)
    try:
        value = float(lines[0][1].split()[0])
    except (IndexError, ValueError):
        raise DatasetError(f"{shown}: expected one number such as '3.0000000e+00'; restore the file from "
                           f"Emotion_labels.zip.") from None
    if value % 1 or int(value) not in table:
        raise DatasetError(f"{shown}: {value:g} is not a CK+ emotion code (0..7); restore the file from "
                           f"Emotion_labels.zip.")
    return int(value)
