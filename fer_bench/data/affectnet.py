"""``affectnet7`` / ``affectnet8``: AffectNet's manually annotated part, validation set as the test set."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterator

import numpy as np
import pandas as pd

from fer_bench import labels as L
from fer_bench.data.adapter import FileAdapter, check_choice
from fer_bench.data.cache import cached_table
from fer_bench.data.dataset import fingerprint_of
from fer_bench.data.decode import DecodeSettings, Source, SplitIndex
from fer_bench.data.folder import SCHEMES, class_folder_index, folder_root, scheme_mapper
from fer_bench.data.paths import DatasetError, RootGuard, find_named, relative_key
from fer_bench.registry import register_dataset

if TYPE_CHECKING:
    import torch

HEADER = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
          "expression", "valence", "arousal")
CSV_FILES = {"train": "training.csv", "test": "validation.csv"}
NPY_DIRS = {"train": "train_set", "test": "val_set"}
IMAGE_DIR = "Manually_Annotated_Images"
LAYOUTS = ("auto", "csv", "npy", "folders")
PARSER_VERSION = "affectnet-1"


def balanced_weights(labels: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """Per-sample weights 1 / count(label) (DAN's and POSTER's ImbalancedDatasetSampler), float64 (N,)."""
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels, minlength=num_classes or 0)
    return 1.0 / counts[labels]


def balanced_batches(labels: np.ndarray, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """One epoch of class-balanced index batches: ``len(labels)`` draws with replacement, each class
    equally likely per draw (``torch.multinomial`` on ``balanced_weights``); a method's ``sampler``
    hook can return this when ``train.meta['sampler'] == 'balanced'``."""
    import torch  # here, not at the top: importing the adapters (e.g. in render workers) stays torch-free
    weights = torch.as_tensor(balanced_weights(labels), dtype=torch.float64)
    order = torch.multinomial(weights, len(weights), replacement=True, generator=generator)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        if len(chunk) > 1 or len(order) == 1:
            yield chunk


class AffectNet(FileAdapter):
    """AffectNet (manually annotated part): ~290k web faces, 8 expressions (+ none / uncertain / non-face).

    Source: http://mohammadmahoor.com/affectnet/ (request form; ``Manually_Annotated.tar`` and its file
    lists). Licence note: academic research only under the AffectNet licence agreement; no
    redistribution; fer-bench never ships or downloads the images.

    Layouts (``layout=auto`` finds the one present; the class-folder layout needs ``label_scheme``)::

        csv:     Manually_Annotated_file_lists/training.csv, validation.csv (searched up to three levels)
                 Manually_Annotated_Images/<subdir>/<name>.jpg     full web images, cropped by the CSV box
                 header: subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,
                         expression,valence,arousal
        npy:     train_set/images/<id>.jpg + train_set/annotations/<id>_exp.npy (+ _val, _aro, _lnd);
                 val_set/...                                       pre-cropped faces, only resized
        folders: train/<class>/*.jpg, val/<class>/*.jpg             label_scheme=names|affectnet|raf|raf0|fer2013

    Repackagings name class folders in different orders (DAN: 0..7 in AffectNet order; HSEmotion:
    Anger, Contempt, ... alphabetical): the scheme is never guessed.

    Splits: ``train`` (training.csv / train_set / train) and ``test`` = the official validation set
    (validation.csv / val_set / val): AffectNet has no public test set. No official validation split:
    methods carve a stratified hold-out from train.

    Classes: native 0..10 = neutral, happy, sad, surprise, fear, disgust, anger, contempt, none,
    uncertain, non-face (``NATIVE_MAPS['affectnet']``, identity on 0..7; 8..10 always dropped).
    ``affectnet8`` keeps 0..7, ``affectnet7`` drops contempt (train and test alike). CSV rows with a
    negative face width or height have no usable box and are dropped (counted in
    ``meta['invalid_box_rows']``); valence / arousal of -2 (invalid) become NaN in ``factors``.

    Expected counts: train (8 classes) 287,651 = neutral 74,874, happy 134,415, sad 25,459, surprise
    14,090, fear 6,378, disgust 3,803, anger 24,882, contempt 3,750 (7 classes: 283,901; third-party
    counts); test 500 per class (4,000 / 3,500; one validation image is known to be unreadable in some
    copies: allow_missing=true drops it and records it).

    Protocol: train on train with class-balanced sampling (DAN / POSTER: ImbalancedDatasetSampler;
    ``meta['sampler'] = 'balanced'`` on the train split, ``sampler=none`` to turn it off; see
    :func:`balanced_batches`), report accuracy on the balanced validation set (= mean class accuracy).

    Options: size=112, layout=auto|csv|npy|folders, label_scheme=""|names|affectnet|raf|raf0|fer2013,
    sampler=balanced|none, allow_missing=false, workers=0.

    Citation: A. Mollahosseini, B. Hasani, M. H. Mahoor. AffectNet: A Database for Facial Expression,
    Valence, and Arousal Computing in the Wild. IEEE Transactions on Affective Computing, 2017.
    """

    splits = ("train", "test")
    options = {**FileAdapter.options, "layout": "auto", "label_scheme": "", "sampler": "balanced"}
    data_dir = "affectnet"
    layout = ("Manually_Annotated_file_lists/{training,validation}.csv + Manually_Annotated_Images/, "
              "train_set|val_set/{images,annotations}, or train|val/<class>/ with label_scheme")
    n_classes: ClassVar[int] = 8
    train_counts = {L.NEUTRAL: 74874, L.HAPPY: 134415, L.SAD: 25459, L.SURPRISE: 14090, L.FEAR: 6378,
                    L.DISGUST: 3803, L.ANGER: 24882, L.CONTEMPT: 3750}

    @property
    def classes(self) -> tuple[int, ...]:
        return L.BASIC8 if self.n_classes == 8 else L.BASIC7

    def expected_for(self, split: str, options: dict[str, Any], meta: dict | None = None) -> dict | None:
        if meta is not None and meta.get("layout_kind") != "csv":
            return None   # re-packagings differ (the npy version may miss images)
        if split == "train":
            counts = {c: self.train_counts[c] for c in self.classes}
            return {"total": sum(counts.values()), "classes": counts, "source": "third-party counts"}
        return {"total": 500 * self.n_classes, "classes": {c: 500 for c in self.classes},
                "source": "third-party (500 per category)"}

    def detect(self, root: Path, options: dict[str, Any]) -> str:
        name = self.registered_name
        layout = check_choice(name, options, "layout", LAYOUTS)
        if layout != "auto":
            return layout
        found = []
        if find_named(root, "training.csv", name, depth=3) or find_named(root, "validation.csv", name, depth=3):
            found.append("csv")
        if find_named(root, NPY_DIRS["train"], name, depth=2, want_dir=True) or \
                find_named(root, NPY_DIRS["test"], name, depth=2, want_dir=True):
            found.append("npy")
        if len(found) > 1:
            raise DatasetError(f"{str(root)!r} holds both the CSV and the npy AffectNet layouts; pass layout=csv or "
                               f"layout=npy.")
        if found:
            return found[0]
        if options["label_scheme"]:
            return "folders"
        raise DatasetError(f"{str(root)!r} is not an AffectNet folder: expected {self.layout}. A class-folder tree "
                           f"needs label_scheme={'|'.join(SCHEMES)} (folder orders differ between re-packagings, "
                           f"so they are never guessed).")

    def index(self, split: str, root: Path, **options: Any) -> SplitIndex:
        check_choice(self.registered_name, options, "sampler", ("balanced", "none"))
        layout = self.detect(root, options)
        if layout == "csv":
            idx = self._csv_index(split, root, options)
        elif layout == "npy":
            idx = self._npy_index(split, root, options)
        elif layout == "folders":
            scheme = options["label_scheme"]
            if scheme not in SCHEMES:
                raise ValueError(f"The 'label_scheme' option of dataset {self.registered_name!r} must be one of "
                                 f"{', '.join(SCHEMES)} for the class-folder layout. Got {scheme!r} instead.")
            tree = folder_root(root, self.registered_name, self.layout)
            idx = class_folder_index(self.registered_name, "val" if split == "test" else split, root, tree,
                                     scheme_mapper(scheme), f"label_scheme={scheme}", self.classes, options["size"])
        else:
            raise ValueError(f"layout={layout!r} is not allowed; use one of {', '.join(LAYOUTS)}.")
        idx.meta.update(layout_kind=layout, protocol="official validation set as test; 8-10 dropped",
                        variant=self.registered_name)
        if split == "train":
            idx.meta["sampler"] = options["sampler"]
        return idx

    # -- official CSV layout ---------------------------------------------------------------------
    def _csv_index(self, split: str, root: Path, options: dict[str, Any]) -> SplitIndex:
        name = self.registered_name
        csv_path = find_named(root, CSV_FILES[split], name, depth=3)
        if csv_path is None:
            raise DatasetError(f"{str(root)!r}: no {CSV_FILES[split]} found (up to three levels down); expected "
                               f"Manually_Annotated_file_lists/{CSV_FILES[split]}; restore it from the AffectNet download.")
        image_dir = find_named(root, IMAGE_DIR, name, depth=3, want_dir=True)
        if image_dir is None:
            raise DatasetError(f"{str(root)!r}: no {IMAGE_DIR}/ folder found (up to three levels down); extract "
                               f"Manually_Annotated.tar there.")
        shown = relative_key(csv_path, root)
        table = _read_csv(csv_path, shown)
        guard = RootGuard(root)
        image_rel = relative_key(image_dir, root)
        codes = table["expression"]
        bad_box = (table["box"][:, 2] <= 0) | (table["box"][:, 3] <= 0)
        labels_all, in_classes = L.map_native(codes.tolist(), "affectnet", self.classes)
        position = np.cumsum(in_classes) - 1
        keep = in_classes & ~bad_box
        rows = np.flatnonzero(keep)
        sources = []
        for r in rows:
            where = f"{shown} line {r + 2}"
            path = guard.path(f"{image_rel}/{table['path'][r]}", where)
            box = tuple(float(v) for v in table["box"][r])
            sources.append(Source(f"{IMAGE_DIR}/{table['path'][r]}", where, path, box=box))
        va = table["va"][rows].astype(np.float64)
        va[va == -2] = np.nan
        factors = pd.DataFrame({"file": table["path"][rows], "valence": va[:, 0], "arousal": va[:, 1],
                                "face_x": table["box"][rows, 0], "face_y": table["box"][rows, 1],
                                "face_width": table["box"][rows, 2], "face_height": table["box"][rows, 3]})
        dropped_codes = {int(c): int((codes == c).sum()) for c in np.unique(codes[~in_classes])}
        return SplitIndex(sources=sources, labels=labels_all[position[rows]], classes=self.classes,
                          decode=DecodeSettings(size=options["size"], crop="box"), factors=factors, guard=guard,
                          meta={"layout": f"{shown} + {image_rel}/", "rows": int(len(codes)),
                                "dropped_codes": dropped_codes, "invalid_box_rows": int((in_classes & bad_box).sum()),
                                "crop": "CSV face box, clipped to the image"})

    # -- npy re-packaging ------------------------------------------------------------------------
    def _npy_index(self, split: str, root: Path, options: dict[str, Any]) -> SplitIndex:
        name = self.registered_name
        base = find_named(root, NPY_DIRS[split], name, depth=2, want_dir=True)
        if base is None or not (base / "annotations").is_dir():
            raise DatasetError(f"{str(root)!r}: no {NPY_DIRS[split]}/annotations/ folder found; expected "
                               f"{NPY_DIRS[split]}/images/<id>.jpg and {NPY_DIRS[split]}/annotations/<id>_exp.npy.")
        table = _read_npy_annotations(base, relative_key(base, root))
        guard = RootGuard(root)
        images = {}
        if (base / "images").is_dir():
            for entry in os.scandir(base / "images"):
                stem, ext = os.path.splitext(entry.name)
                if ext.lower() in (".jpg", ".jpeg", ".png") and stem not in images:
                    images[stem] = entry.name
        ids = table["id"]
        labels_all, in_classes = L.map_native(table["expression"].tolist(), "affectnet", self.classes)
        rows = np.flatnonzero(in_classes)
        base_rel = relative_key(base, root)
        sources = []
        for r in rows:
            where = f"{base_rel}/annotations/{ids[r]}_exp.npy"
            path = guard.path(f"{base_rel}/images/{images.get(ids[r], ids[r] + '.jpg')}", where)
            sources.append(Source(f"{NPY_DIRS[split]}/images/{images.get(ids[r], ids[r] + '.jpg')}", where, path))
        factors = pd.DataFrame({"id": ids[rows], "valence": table["valence"][rows], "arousal": table["arousal"][rows]})
        codes = table["expression"]
        return SplitIndex(sources=sources, labels=labels_all, classes=self.classes,
                          decode=DecodeSettings(size=options["size"]), factors=factors, guard=guard,
                          meta={"layout": f"{base_rel}/images + annotations/*_exp.npy",
                                "dropped_codes": {int(c): int((codes == c).sum()) for c in np.unique(codes[~in_classes])},
                                "images_without_annotation": len(set(images) - set(ids.tolist()))})


def _read_csv(path: Path, shown: str) -> dict[str, np.ndarray]:
    """path, box (N, 4), expression, valence/arousal (N, 2) of training.csv / validation.csv (cached)."""

    def build() -> dict[str, np.ndarray]:
        with open(path, encoding="utf-8-sig", errors="replace") as fh:
            header = tuple(h.strip() for h in fh.readline().strip().split(","))
        if header != HEADER:
            raise DatasetError(f"{shown} line 1: header {','.join(header)[:120]!r} is not AffectNet's "
                               f"{','.join(HEADER)!r}; restore the file from the download.")
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, usecols=[0, 1, 2, 3, 4, 6, 7, 8],
                                encoding="utf-8-sig")
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            raise DatasetError(f"{shown}: cannot be parsed ({type(exc).__name__}: {str(exc)[:100]}); restore the "
                               f"file from the download.") from None
        frame.columns = [c.strip() for c in frame.columns]
        numbers = frame[list(HEADER[1:5]) + ["expression", "valence", "arousal"]].apply(pd.to_numeric, errors="coerce")
        bad = np.flatnonzero(numbers.isna().any(axis=1).to_numpy())
        if len(bad):
            raise DatasetError(f"{shown} line {bad[0] + 2}: a box, expression, valence or arousal field is not a number; "
                               f"fix that line or restore the file.")
        expression = numbers["expression"].to_numpy()
        odd = np.flatnonzero((expression % 1 != 0) | ~np.isin(expression, list(L.NATIVE_MAPS["affectnet"])))
        if len(odd):
            raise DatasetError(f"{shown} line {odd[0] + 2}: expression {expression[odd[0]]:g} is not an AffectNet code "
                               f"(0..10); fix that line or restore the file.")
        return {"path": frame["subDirectory_filePath"].str.strip().to_numpy().astype(str),
                "box": numbers[list(HEADER[1:5])].to_numpy(dtype=np.float64),
                "expression": expression.astype(np.int64),
                "va": numbers[["valence", "arousal"]].to_numpy(dtype=np.float64)}

    return cached_table("affectnet", [path], PARSER_VERSION, build)


def _read_npy_annotations(base: Path, shown: str) -> dict[str, np.ndarray]:
    """id, expression, valence, arousal of ``<base>/annotations/<id>_{exp,val,aro}.npy`` (cached)."""
    folder = base / "annotations"
    names = sorted(e.name for e in os.scandir(folder) if e.name.endswith("_exp.npy"))
    stat = os.stat(folder)

    def build() -> dict[str, np.ndarray]:
        ids = [n[:-len("_exp.npy")] for n in names]
        order = sorted(range(len(ids)), key=lambda i: (not ids[i].isdigit(), int(ids[i]) if ids[i].isdigit() else 0, ids[i]))
        ids = [ids[i] for i in order]
        expression = np.empty(len(ids), dtype=np.int64)
        va = np.full((len(ids), 2), np.nan)
        for k, i in enumerate(ids):
            where = f"{shown}/annotations/{i}_exp.npy"
            try:
                value = np.load(folder / f"{i}_exp.npy", allow_pickle=False)
                code = float(value.item() if value.shape == () else value.reshape(-1)[0])
            except (OSError, ValueError, IndexError, TypeError) as exc:
                raise DatasetError(f"{where}: not a 0-d expression array ({type(exc).__name__}); "
                                   f"restore the file.") from None
            if code % 1 or int(code) not in L.NATIVE_MAPS["affectnet"]:
                raise DatasetError(f"{where}: expression {code:g} is not an AffectNet code (0..10); restore the file.")
            expression[k] = int(code)
            for j, kind in enumerate(("val", "aro")):
                p = folder / f"{i}_{kind}.npy"
                if p.is_file():
                    try:
                        value = np.load(p, allow_pickle=False)
                        va[k, j] = float(value.item() if value.shape == () else value.reshape(-1)[0])
                    except (OSError, ValueError, IndexError, TypeError):
                        pass
        va[va == -2] = np.nan
        return {"id": np.array(ids, dtype=str), "expression": expression, "valence": va[:, 0], "arousal": va[:, 1]}

    if not names:
        raise DatasetError(f"{shown}/annotations has no <id>_exp.npy files; expected the AffectNet npy re-packaging.")
    sig_file = folder / names[0]
    # The key covers the folder (entries added or removed) and the listing; values are read once.
    return cached_table("affectnet-npy", [folder, sig_file],
                        f"{PARSER_VERSION}-{stat.st_mtime_ns}-{fingerprint_of(names)[:16]}", build)


@register_dataset("affectnet8")
class AffectNet8(AffectNet):
    __doc__ = AffectNet.__doc__
    n_classes = 8


@register_dataset("affectnet7")
class AffectNet7(AffectNet):
    __doc__ = AffectNet.__doc__
    n_classes = 7
