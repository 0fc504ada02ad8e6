"""Tiny dataset folders in each dataset's exact official layout, for the adapter tests.

Every builder writes real image files in the real formats (JPEG, PNG, TIFF, BMP, CSV pixel strings)
under a given folder and returns a :class:`Fixture` with the ``--data-root`` to use and the counts the
adapter must find, per split, keyed by canonical emotion id. The expected emotions are derived from
each dataset's *documented* native order (the ``*_DOC`` tables below, written from the datasets' own
README / loader text), never from ``fer_bench.labels``, so the tests check the label tables.

Every image is (nearly) one flat grey level that encodes its emotion: ``level(canonical id)``; the
tests decode it back and so check that each image stays paired with its label (joins, duplicates,
boxes). The awkward cases of the real files are included: FERPlus rows without names and with
repeated names, the icml CSV header with leading spaces, AffectNet negative box widths and codes
8-10, CK+ float label files and unlabelled sequences, JAFFE numbering gaps, NimStim case variants.

Run ``python tests/fixtures.py OUT`` to write all of them under OUT (for manual end-to-end runs).
"""
from __future__ import annotations

import collections
import dataclasses
import sys
from pathlib import Path

import numpy as np
from PIL import Image

NAMES = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt")
CANON = {n: i for i, n in enumerate(NAMES)}
ALIASES = {"happiness": "happy", "sadness": "sad", "angry": "anger", "surprised": "surprise"}

# Native orders as the datasets document them (README / official loaders), independent of fer_bench.
RAF_DOC = {1: "surprise", 2: "fear", 3: "disgust", 4: "happiness", 5: "sadness", 6: "anger", 7: "neutral"}
FER2013_DOC = {0: "angry", 1: "disgust", 2: "fear", 3: "happy", 4: "sad", 5: "surprise", 6: "neutral"}
FERPLUS_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
                   "unknown", "NF")
AFFECTNET_DOC = {0: "neutral", 1: "happy", 2: "sad", 3: "surprise", 4: "fear", 5: "disgust", 6: "anger",
                 7: "contempt", 8: None, 9: None, 10: None}     # 8 none, 9 uncertain, 10 non-face
CK_DOC = {0: "neutral", 1: "anger", 2: "contempt", 3: "disgust", 4: "fear", 5: "happy", 6: "sadness", 7: "surprise"}
JAFFE_DOC = {"NE": "neutral", "HA": "happy", "SA": "sad", "SU": "surprise", "AN": "anger", "DI": "disgust",
             "FE": "fear"}
NIMSTIM_DOC = {"AN": "anger", "CA": None, "DI": "disgust", "FE": "fear", "HA": "happy", "NE": "neutral",
               "SA": "sad", "SP": "surprise"}


def canon(name: str | None) -> int | None:
    return None if name is None else CANON[ALIASES.get(name, name)]


def level(canon_id: int | None) -> int:
    """The grey level that encodes a canonical emotion (240: not an emotion / background)."""
    return 240 if canon_id is None else 30 + 25 * canon_id


def decode_level(mean: float) -> int:
    """Canonical id from an image's mean grey level (inverse of ``level``)."""
    return int(round((mean - 30) / 25))


def flat(size: tuple[int, int], value: int, mode: str = "L", seed: int = 0) -> Image.Image:
    """A (w, h) image of one grey level with a few +-3 speckles (so encoders see some texture)."""
    w, h = size
    rng = np.random.default_rng(seed)
    arr = np.full((h, w), value, dtype=np.int16)
    arr += rng.integers(-3, 4, size=(h, w)) * (rng.random((h, w)) < 0.1)
    arr = np.clip(arr, 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    return img.convert(mode) if mode != "L" else img


@dataclasses.dataclass
class Fixture:
    root: Path                                     # what --data-root gets
    counts: dict[str, dict[int, int]]              # split -> canonical id -> images (default options)
    info: dict = dataclasses.field(default_factory=dict)

    def total(self, split: str) -> int:
        return sum(self.counts[split].values())


def _count(ids) -> dict[int, int]:
    return dict(collections.Counter(i for i in ids if i is not None))


def _save(img: Image.Image, path: Path, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)


# ---------------------------------------------------------------------------------------------
# RAF-DB


def make_rafdb(base: Path, crlf: bool = False) -> Fixture:
    """``basic/EmoLabel/list_patition_label.txt`` + ``basic/Image/{aligned,original}``; train 3 per class
    (5-digit names), test 2 per class (4-digit names)."""
    root = base / "RAF-DB"
    basic = root / "basic"
    lines, counts = [], {"train": [], "test": []}
    for split, per, width in (("train", 3, 5), ("test", 2, 4)):
        k = 0
        for rep in range(per):
            for code in (5, 4, 7, 1, 2, 3, 6):          # a shuffled class order, as in the real file
                k += 1
                stem = f"{split}_{k:0{width}d}"
                c = canon(RAF_DOC[code])
                _save(flat((100, 100), level(c), "RGB", seed=k), basic / "Image" / "aligned" / f"{stem}_aligned.jpg",
                      quality=95)
                _save(flat((120, 150), level(c), "RGB", seed=k), basic / "Image" / "original" / f"{stem}.jpg", quality=95)
                lines.append(f"{stem}.jpg {code}")
                counts[split].append(c)
    (basic / "EmoLabel").mkdir(parents=True, exist_ok=True)
    (basic / "EmoLabel" / "list_patition_label.txt").write_bytes((("\r\n" if crlf else "\n").join(lines) + "\n").encode())
    return Fixture(root, {s: _count(v) for s, v in counts.items()}, {"list": basic / "EmoLabel" / "list_patition_label.txt"})


# ---------------------------------------------------------------------------------------------
# FER2013


def _pixels(value: int, seed: int) -> str:
    return " ".join(map(str, np.asarray(flat((48, 48), value, seed=seed)).reshape(-1)))


FER_USAGE_PER_CLASS = (("Training", 3), ("PublicTest", 2), ("PrivateTest", 2))


def fer2013_rows() -> list[tuple[int, str, str]]:
    """(emotion code, pixel string, Usage) rows in fer2013.csv order (Training, PublicTest, PrivateTest)."""
    rows, k = [], 0
    for usage, per in FER_USAGE_PER_CLASS:
        for rep in range(per):
            for code in (3, 0, 6, 2, 4, 5, 1):
                k += 1
                rows.append((code, _pixels(level(canon(FER2013_DOC[code])), k), usage))
    return rows


def make_fer2013(base: Path, variant: str = "fer2013") -> Fixture:
    """variant: 'fer2013' (fer2013.csv), 'icml' (icml_face_data.csv: ' Usage', ' pixels') or 'kaggle'
    (train.csv + test.csv without labels)."""
    root = base / f"fer2013-{variant}"
    folder = root / "fer2013"
    folder.mkdir(parents=True, exist_ok=True)
    rows = fer2013_rows()
    if variant == "fer2013":
        text = "emotion,pixels,Usage\n" + "".join(f"{e},{p},{u}\n" for e, p, u in rows)
        (folder / "fer2013.csv").write_text(text)
    elif variant == "icml":
        text = "emotion, Usage, pixels\n" + "".join(f"{e},{u},{p}\n" for e, p, u in rows)
        (folder / "icml_face_data.csv").write_text(text)
    elif variant == "kaggle":
        (folder / "train.csv").write_text("emotion,pixels\n" + "".join(f"{e},{p}\n" for e, p, u in rows if u == "Training"))
        (folder / "test.csv").write_text("pixels\n" + "".join(f"{p}\n" for e, p, u in rows if u != "Training"))
    else:
        raise ValueError(variant)
    split_of = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
    counts = {s: _count(canon(FER2013_DOC[e]) for e, _, u in rows if split_of[u] == s) for s in ("train", "val", "test")}
    if variant == "kaggle":
        counts = {"train": counts["train"]}
    return Fixture(root, counts)


# ---------------------------------------------------------------------------------------------
# FERPlus


def _clear(j: int) -> list[int]:
    votes = [0] * 10
    votes[j] = 8
    votes[(j + 1) % 8] += 1
    votes[8] += 1
    return votes


def ferplus_rows() -> list[dict]:
    """Rows of fer2013new.csv (in fer2013.csv order): usage, votes, name ('' = not a face), the native
    majority outcome (None: dropped) and the label.csv votes where they differ."""
    rows = []

    def add(usage, votes, outcome, name=True, label_votes=None, dup_of=None):
        rows.append({"usage": usage, "votes": votes, "outcome": outcome, "named": name,
                     "label_votes": label_votes, "dup_of": dup_of})

    for rep in range(2):
        for j in range(8):
            add("Training", _clear(j), j)
    add("Training", [4, 0, 0, 1, 3, 2, 0, 0, 0, 0], None)     # 4 is not > 4.5 after removing single votes
    add("Training", [5, 5, 0, 0, 0, 0, 0, 0, 0, 0], None)     # tie
    add("Training", [0] * 9 + [10], None, name=False)         # not a face: empty name
    add("Training", [0, 0, 0, 0, 0, 0, 0, 0, 6, 4], None)     # unknown wins
    add("Training", [6, 0, 1, 1, 0, 0, 0, 0, 2, 0], 0)        # 6 > 4 after removal: neutral
    # label.csv (2016) differs from fer2013new.csv for this one: a tie there, so dropped on the official path
    add("Training", _clear(2), 2, label_votes=[5, 0, 5, 0, 0, 0, 0, 0, 0, 0])
    add("Training", _clear(5), 5, dup_of=1)                   # repeats the name of Training row 1: later row wins
    for j in range(8):
        add("PublicTest", _clear(j), j)
    add("PublicTest", [0] * 9 + [10], None, name=False)
    add("PublicTest", [3, 3, 3, 0, 0, 0, 0, 0, 1, 0], None)
    for rep in range(2):
        for j in range(8):
            add("PrivateTest", _clear((j + 3) % 8), (j + 3) % 8)
    add("PrivateTest", [4, 0, 0, 1, 3, 2, 0, 0, 0, 0], None)
    add("PrivateTest", _clear(6), 6, dup_of=-5)               # repeats a PrivateTest name: later row wins
    # names: a running counter over named rows (it skips the not-a-face rows), duplicates reuse a name
    counter = 0
    for i, r in enumerate(rows):
        if not r["named"]:
            r["name"] = ""
        elif r["dup_of"] is not None:
            target = r["dup_of"] if r["dup_of"] >= 0 else i + r["dup_of"]
            r["name"] = rows[target]["name"]
            rows[target]["superseded"] = True
        else:
            r["name"] = f"fer{counter:07d}.png"
            counter += 1
    return rows


def make_ferplus(base: Path, layout: str = "folders", year: int = 2017) -> Fixture:
    """layout: 'folders' (FER2013Train|Valid|Test/ PNGs + label.csv, plus fer2013new.csv), 'pixels'
    (fer2013.csv + fer2013new.csv only) or 'both'. year 2016 writes fer2013new.csv without the name column."""
    root = base / f"ferplus-{layout}-{year}"
    root.mkdir(parents=True, exist_ok=True)
    rows = ferplus_rows()
    usage_split = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
    folders = {"Training": "FER2013Train", "PublicTest": "FER2013Valid", "PrivateTest": "FER2013Test"}
    header = "Usage,Image name," if year == 2017 else "Usage,"
    text = header + ",".join(FERPLUS_COLUMNS) + "\n"
    for r in rows:
        text += f"{r['usage']}," + (f"{r['name']}," if year == 2017 else "") + ",".join(map(str, r["votes"])) + "\n"
    (root / "fer2013new.csv").write_text(text)
    if layout in ("pixels", "both"):
        fer = "emotion,pixels,Usage\n"
        for i, r in enumerate(rows):
            value = level(None if r["outcome"] is None else canon(FERPLUS_COLUMNS[r["outcome"]]))
            fer += f"0,{_pixels(value, 1000 + i)},{r['usage']}\n"
        (root / "fer2013.csv").write_text(fer)
    if layout in ("folders", "both"):
        data = root / "data"
        label_rows = collections.defaultdict(dict)
        for i, r in enumerate(rows):
            if not r["name"]:
                continue
            value = level(None if r["outcome"] is None else canon(FERPLUS_COLUMNS[r["outcome"]]))
            folder = data / folders[r["usage"]]
            _save(flat((48, 48), value, seed=1000 + i), folder / r["name"], compress_level=0)   # later rows overwrite
            label_rows[r["usage"]][r["name"]] = r["label_votes"] or r["votes"]
        for usage, by_name in label_rows.items():
            lines = "".join(f'{n},"(0, 0, 48, 48)",' + ",".join(map(str, v)) + "\n" for n, v in sorted(by_name.items()))
            (data / folders[usage] / "label.csv").write_text(lines)

    def counts(official: bool) -> dict[str, dict[int, int]]:
        out = {}
        for usage, split in usage_split.items():
            ids = []
            for r in rows:
                if r["usage"] != usage or not r["name"] or r.get("superseded"):
                    continue
                outcome = r["outcome"]
                if official and r["label_votes"] is not None:
                    outcome = None       # the label.csv votes of that row are a tie
                ids.append(None if outcome is None else canon(FERPLUS_COLUMNS[outcome]))
            out[split] = _count(ids)
        return out

    official = layout in ("folders", "both")
    return Fixture(root, counts(official), {"counts_label_csv": counts(True), "counts_fer2013new": counts(False),
                                            "rows": rows})


# ---------------------------------------------------------------------------------------------
# AffectNet


AFFECTNET_HEADER = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal"


def _landmarks(seed: int) -> str:
    rng = np.random.default_rng(seed)
    return ";".join(f"{v:.2f}" for v in rng.uniform(10, 50, 136))


def make_affectnet(base: Path, layout: str = "csv") -> Fixture:
    """layout: 'csv' (official file lists + full images cropped by the box), 'npy' (train_set / val_set
    with *_exp.npy) or 'folders' (DAN: train|val/<0..7>/)."""
    root = base / f"affectnet-{layout}"
    counts8 = {"train": [], "test": []}
    info: dict = {}
    if layout == "csv":
        lists = root / "Manually_Annotated_file_lists"
        lists.mkdir(parents=True, exist_ok=True)
        k = 0
        for split, file, codes in (("train", "training.csv", [c for _ in range(2) for c in range(8)] + [8, 9, 10, 1, 2]),
                                   ("test", "validation.csv", [c for _ in range(2) for c in range(11)])):
            lines = [AFFECTNET_HEADER]
            for i, code in enumerate(codes):
                k += 1
                sub = str(100 + k % 3)
                name = f"{k:040x}{'e' * 16}.jpg"
                W, H = 80, 64
                x, y, w, h = 10 + k % 7, 6 + k % 5, 40, 44
                c = canon(AFFECTNET_DOC[code])
                img = np.full((H, W), 250, np.uint8)           # background: a level no class uses
                img[y:y + h, x:x + w] = level(c) if c is not None else 10
                _save(Image.fromarray(img).convert("RGB"), root / "Manually_Annotated_Images" / sub / name, quality=95)
                width = w
                valence, arousal = f"{(code - 5) / 10:.3f}", "0.25"
                if split == "train" and i == len(codes) - 2:
                    width = -1                                  # invalid box (HSEmotion skips these)
                if split == "train" and i == len(codes) - 1:
                    valence = "-2"                              # invalid valence
                lines.append(f"{sub}/{name},{x},{y},{width},{h},{_landmarks(k)},{code},{valence},{arousal}")
                if width > 0:
                    counts8[split].append(c)
            (lists / file).write_text("\n".join(lines) + "\n")
    elif layout == "npy":
        k = 0
        for split, folder, codes in (("train", "train_set", [c for _ in range(3) for c in range(8)]),
                                     ("test", "val_set", [c for _ in range(2) for c in range(8)])):
            for i, code in enumerate(codes):
                k += 1
                c = canon(AFFECTNET_DOC[code])
                _save(flat((32, 32), level(c), "RGB", seed=k), root / folder / "images" / f"{i}.jpg", quality=95)
                ann = root / folder / "annotations"
                ann.mkdir(parents=True, exist_ok=True)
                np.save(ann / f"{i}_exp.npy", np.array(str(code)) if i % 2 else np.array(code))
                np.save(ann / f"{i}_val.npy", np.array(f"{(code - 4) / 10:.2f}"))
                np.save(ann / f"{i}_aro.npy", np.array(0.1 * (i % 3)))
                np.save(ann / f"{i}_lnd.npy", np.array(_landmarks(i)))
                counts8[split].append(c)
    elif layout == "folders":
        k = 0
        for split, folder, per in (("train", "train", 3), ("test", "val", 2)):
            for code in range(8):
                for rep in range(per):
                    k += 1
                    c = canon(AFFECTNET_DOC[code])
                    _save(flat((32, 32), level(c), "RGB", seed=k), root / folder / str(code) / f"{k:05d}.jpg", quality=95)
                    counts8[split].append(c)
    else:
        raise ValueError(layout)
    counts = {s: _count(v) for s, v in counts8.items()}
    info["counts7"] = {s: {c: n for c, n in v.items() if c != CANON["contempt"]} for s, v in counts.items()}
    return Fixture(root, counts, info)


# ---------------------------------------------------------------------------------------------
# CK+


CK_SUBJECTS = ("S005", "S010", "S011", "S014", "S022", "S026", "S032", "S034", "S037", "S042", "S044", "S046")


def make_ckplus(base: Path, faces: bool = False) -> Fixture:
    """Nested unzips (``extended-cohn-kanade-images/cohn-kanade-images``, ``Emotion_labels/Emotion``),
    12 subjects with one or two labelled sequences of 5 frames (peak = last), float label files, an
    unlabelled sequence and an empty Emotion folder. ``faces=True`` draws a rendered face (fer_bench's
    synthetic renderer) into each frame, for the Haar tests."""
    root = base / ("ckplus-faces" if faces else "ckplus")
    images = root / "extended-cohn-kanade-images" / "cohn-kanade-images"
    emotion = root / "Emotion_labels" / "Emotion"
    codes = [1, 2, 3, 4, 5, 6, 7, 5, 7, 3, 1, 6]
    sequences = []                                              # (subject, seq, code or None, n frames)
    for i, subject in enumerate(CK_SUBJECTS):
        sequences.append((subject, "001", codes[i], 5))
        if i % 4 == 0:
            sequences.append((subject, "002", codes[(i + 3) % len(codes)], 4))
    sequences.append(("S010", "003", None, 4))                  # no emotion file: unlabelled
    face = _rendered_faces(len(sequences)) if faces else None
    peaks, neutrals = collections.Counter(), 0
    for n_seq, (subject, seq, code, n_frames) in enumerate(sequences):
        for f in range(1, n_frames + 1):
            c = canon(CK_DOC[code]) if (code is not None and f > n_frames - 3) else CANON["neutral"] if f == 1 else None
            value = level(c) if c is not None else 128
            name = f"{subject}_{seq}_{f:08d}.png"
            if face is not None:
                frame = Image.new("L", (200, 160), 90)
                frame.paste(Image.fromarray(face[n_seq]).convert("L"), (52, 20))
            else:
                frame = flat((64, 48), value, seed=n_seq * 10 + f)
            _save(frame, images / subject / seq / name)
        if code is not None:
            (emotion / subject / seq).mkdir(parents=True, exist_ok=True)
            (emotion / subject / seq / f"{subject}_{seq}_{n_frames:08d}_emotion.txt").write_text(f"   {code:.7e}\n")
            peaks[canon(CK_DOC[code])] += 3
            neutrals += 1
        else:
            (emotion / subject / seq).mkdir(parents=True, exist_ok=True)   # an empty Emotion folder
    all7c = dict(peaks)
    all8 = dict(peaks)
    all8[CANON["neutral"]] = neutrals
    return Fixture(root, {"all": all7c}, {"all8": all8, "sequences": sequences, "subjects": CK_SUBJECTS})


def _rendered_faces(n: int, size: int = 96) -> np.ndarray:
    from fer_bench.data.synthetic import render, sample_factors
    # Frontal faces without glasses or beards: what Haar cascades (and lab datasets) are made for.
    factors = sample_factors("train", np.arange(n), nuisance=0.0, size=size, glasses_rate=0.0, beard_rate=0.0)
    return render(factors, size=size)


# ---------------------------------------------------------------------------------------------
# JAFFE


JAFFE_SUBJECTS = ("KA", "KL", "KM", "KR", "MK", "NA", "NM", "TM", "UY", "YM")


def make_jaffe(base: Path) -> Fixture:
    """``jaffedbase/`` with every subject posing every expression once (70 files, 32x32 grey TIFF),
    repetition numbers with gaps (KM.DI3 without KM.DI2), a .tif re-encoding, plus README, a_names.dat
    and .DS_Store to ignore."""
    root = base / "jaffe"
    folder = root / "jaffedbase"
    folder.mkdir(parents=True, exist_ok=True)
    ids, number = [], 0
    for s, subject in enumerate(JAFFE_SUBJECTS):
        for e, code in enumerate(("NE", "HA", "SA", "SU", "AN", "DI", "FE")):
            number += 1 if number not in (7, 20) else 2          # gaps in the image numbers
            rep = 3 if (subject == "KM" and code == "DI") else 1 + (number % 2)
            ext = "tif" if (subject == "UY" and code == "HA") else "tiff"
            c = canon(JAFFE_DOC[code])
            _save(flat((32, 32), level(c), seed=number), folder / f"{subject}.{code}{rep}.{number}.{ext}")
            ids.append((subject, c))
    (folder / "README").write_text("The JAFFE images may be used only for non-commercial scientific research.\n")
    (folder / "a_names.dat").write_text("KA\nKL\n")
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    return Fixture(root, {"all": _count(c for _, c in ids)}, {"ids": ids})


# ---------------------------------------------------------------------------------------------
# NimStim


NIMSTIM_FILES = ("AN_C", "AN_O", "CA_C", "CA_O", "DI_C", "DI_O", "FE_O", "HA_C", "HA_O", "HA_X", "NE_C", "SA_O", "SP_O")


def make_nimstim(base: Path) -> Fixture:
    """10 actors (01F..10M) with up to 13 poses each as .bmp (40x50 RGB); actor 20M is written in lower
    case as .jpeg and lacks DI_C; calm (CA) is present and must be excluded."""
    root = base / "nimstim"
    folder = root / "NimStim"
    actors = ["01F", "02F", "03M", "04F", "05M", "06M", "07F", "08M", "09F", "20M"]
    ids = []
    for a, actor in enumerate(actors):
        for p, pose in enumerate(NIMSTIM_FILES):
            code, mouth = pose.split("_")
            if actor == "20M" and pose == "DI_C":
                continue
            name = f"{actor}_{pose}.bmp" if actor != "20M" else f"{actor.lower()}_{pose.lower()}.jpeg"
            c = canon(NIMSTIM_DOC[code])
            img = flat((40, 50), level(c), "RGB", seed=a * 20 + p)
            _save(img, folder / name, **({"quality": 95} if name.endswith(".jpeg") else {}))
            ids.append((actor, code, mouth, c))
    (folder / "NimStim_readme.txt").write_text("NimStim set\n")
    six = [c for _, code, _, c in ids if c is not None and c != CANON["neutral"]]
    return Fixture(root, {"all": _count(six)}, {"ids": ids, "actors": actors})


# ---------------------------------------------------------------------------------------------
# ImageFolder


FOLDER_CLASSES = {"angry": "anger", "Happy": "happy", "sad": "sad", "surprise": "surprise", "fear": "fear",
                  "disgust": "disgust", "neutral": "neutral"}
FOLDER_MAPPING = ";".join(f"{k}:{v}" for k, v in FOLDER_CLASSES.items())


def make_folder(base: Path, with_val: bool = True) -> Fixture:
    """``dataset/{train,val,test}/<class>/`` with mixed PNG / JPEG files and one nested sub-folder."""
    root = base / ("folder" if with_val else "folder-noval")
    tree = root / "dataset"
    counts = {}
    k = 0
    for split, per in (("train", 3), ("val", 1), ("test", 2)):
        if split == "val" and not with_val:
            continue
        ids = []
        for folder, emotion in FOLDER_CLASSES.items():
            for rep in range(per):
                k += 1
                c = canon(emotion)
                ext = "png" if rep % 2 else "jpg"
                sub = "nested/" if (split == "train" and rep == 2) else ""
                _save(flat((36, 36), level(c), "RGB", seed=k), tree / split / folder / f"{sub}img{k:04d}.{ext}",
                      **({"quality": 95} if ext == "jpg" else {}))
                ids.append(c)
        (tree / split / "angry" / "notes.txt").write_text("not an image\n")
        counts[split] = _count(ids)
    return Fixture(root, counts, {"mapping": FOLDER_MAPPING})


BUILDERS = {
    "rafdb": make_rafdb, "fer2013": make_fer2013, "ferplus": make_ferplus, "affectnet7": make_affectnet,
    "affectnet8": make_affectnet, "ckplus": make_ckplus, "jaffe": make_jaffe, "nimstim": make_nimstim,
    "folder": make_folder,
}


def make_all(out: Path) -> dict[str, Fixture]:
    """Every fixture under ``out`` (one folder per layout variant)."""
    out.mkdir(parents=True, exist_ok=True)
    made = {
        "rafdb": make_rafdb(out), "fer2013": make_fer2013(out), "fer2013-icml": make_fer2013(out, "icml"),
        "fer2013-kaggle": make_fer2013(out, "kaggle"), "ferplus": make_ferplus(out),
        "ferplus-pixels": make_ferplus(out, "pixels"), "affectnet-csv": make_affectnet(out, "csv"),
        "affectnet-npy": make_affectnet(out, "npy"), "affectnet-folders": make_affectnet(out, "folders"),
        "ckplus": make_ckplus(out), "jaffe": make_jaffe(out), "nimstim": make_nimstim(out), "folder": make_folder(out),
    }
    return made


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "fixtures")
    for name, fixture in make_all(target).items():
        print(f"{name:<18} {fixture.root}")
