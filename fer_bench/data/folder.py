"""``folder``: any ImageFolder tree (``<split>/<class>/<image>``) with an explicit class mapping."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from fer_bench import labels as L
from fer_bench.data.adapter import FileAdapter
from fer_bench.data.decode import DecodeSettings, Source, SplitIndex
from fer_bench.data.paths import DatasetError, RootGuard, relative_key
from fer_bench.registry import register_dataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif")
SPLIT_DIRS = {"train": ("train", "training"), "val": ("val", "valid", "validation"), "test": ("test", "testing")}
SCHEMES = ("names", "affectnet", "raf", "raf0", "fer2013")


def scheme_mapper(scheme: str) -> Callable[[str], int | None]:
    """Folder name -> canonical id (None: not an emotion, dropped) under a named label scheme.

    names: the folder is an emotion name ('Anger', 'happy', 'SU', ...; fer_bench.labels aliases).
    affectnet / raf / fer2013: the folder is that dataset's native code (AffectNet 0..7, RAF-DB 1..7,
    FER2013 0..6), mapped through ``fer_bench.labels.NATIVE_MAPS``; raf0 is RAF-DB's code minus one
    (0..6, the SCN / DAN / POSTER re-packagings).
    """
    if scheme == "names":
        return lambda folder: L.canonical_id(folder)
    tables = {"affectnet": ("affectnet", 0), "raf": ("rafdb_basic", 0), "raf0": ("rafdb_basic", 1),
              "fer2013": ("fer2013", 0)}
    if scheme not in tables:
        raise ValueError(f"label_scheme={scheme!r} is not allowed; use one of {', '.join(SCHEMES)}.")
    table, shift = tables[scheme]

    def numeric(folder: str) -> int | None:
        if not folder.isdigit() or int(folder) + shift not in L.NATIVE_MAPS[table]:
            raise ValueError(f"folder {folder!r} is not a code of the {scheme!r} scheme "
                             f"({', '.join(str(k - shift) for k in L.NATIVE_MAPS[table])})")
        return L.NATIVE_MAPS[table][int(folder) + shift]
    return numeric


def parse_mapping(text: str, root: Path | None = None) -> dict[str, int | None]:
    """``"angry:anger;happy:happy;other:none"`` or a JSON file ``{"angry": "anger", ...}`` -> folder -> id."""
    text = text.strip()
    if text.endswith(".json"):
        path = Path(text).expanduser()
        if not path.is_absolute() and root is not None and not path.is_file():
            path = root / path
        try:
            pairs = json.loads(path.read_text()).items()
        except (OSError, ValueError, AttributeError) as exc:
            raise DatasetError(f"mapping file {str(path)!r} cannot be read as a JSON object ({exc}); write "
                               f'{{"folder": "emotion", ...}}.') from None
    else:
        pairs = []
        for part in filter(None, (p.strip() for p in text.split(";"))):
            folder, sep, emotion = part.rpartition(":")
            if not sep or not folder.strip():
                raise ValueError(f"mapping entry {part!r} is not folder:emotion; write e.g. "
                                 f"mapping=angry:anger;happy:happy (quote it in the shell).")
            pairs.append((folder.strip(), emotion.strip()))
    out: dict[str, int | None] = {}
    for folder, emotion in pairs:
        if emotion is None or str(emotion).lower() in ("none", "drop", "-", ""):
            out[str(folder)] = None
        else:
            try:
                out[str(folder)] = L.canonical_id(emotion)
            except ValueError as exc:
                raise ValueError(f"mapping {folder!r}: {exc}") from None
    return out


def scan_class_folders(split_dir: Path, root: Path, mapper: Callable[[str], int | None], how: str,
                       guard: RootGuard) -> tuple[list[Source], list[int | None], list[str], int]:
    """(sources, canonical id or None per image, class folder per image, ignored files) of one split folder."""
    sources, ids, folders, ignored = [], [], [], 0
    class_dirs = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DatasetError(f"{str(split_dir)!r} has no class folders; expected <split>/<class>/<image> "
                           f"(an ImageFolder tree).")
    for class_dir in class_dirs:
        try:
            canon = mapper(class_dir.name)
        except (KeyError, ValueError) as exc:
            raise DatasetError(f"class folder {relative_key(class_dir, root)!r} has no emotion under {how} ({exc}); "
                               f"name it in the mapping (folder:emotion, or folder:none to drop it).") from None
        files = []
        for dirpath, dirnames, filenames in os.walk(class_dir):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for f in filenames:
                if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."):
                    files.append(Path(dirpath) / f)
                else:
                    ignored += 1
        for path in sorted(files):
            rel = relative_key(path, root)
            guard.check_dir(path, rel)
            sources.append(Source(relative_key(path, split_dir.parent), rel, str(path)))
            ids.append(canon)
            folders.append(class_dir.name)
    return sources, ids, folders, ignored


def find_split_dir(root: Path, split: str) -> Path | None:
    """The folder of ``split`` directly under ``root`` (train|training, val|valid|validation, test|testing)."""
    by_lower = {p.name.lower(): p for p in root.iterdir() if p.is_dir()} if root.is_dir() else {}
    for name in SPLIT_DIRS[split]:
        if name in by_lower:
            return by_lower[name]
    return None


def folder_root(root: Path, dataset: str, expected: str) -> Path:
    """The folder at or up to two levels below ``root`` that has a train/ split folder."""
    level = [root]
    for _ in range(3):
        found = [f for f in level if find_split_dir(f, "train") is not None]
        if len(found) > 1:
            raise DatasetError(f"{str(root)!r} holds several ImageFolder trees ({found[0]}, {found[1]}); "
                               f"point --data-root at one of them.")
        if found:
            return found[0]
        level = [c for f in level for c in sorted(p for p in f.iterdir() if p.is_dir() and not p.name.startswith("."))]
    raise DatasetError(f"{str(root)!r} is not a {dataset} folder: no train/ (or training/) folder in it or up to two "
                       f"levels below; expected {expected}.")


def class_folder_index(dataset: str, split: str, root: Path, tree: Path, mapper: Callable[[str], int | None],
                       how: str, classes: tuple[int, ...] | None, size: int) -> SplitIndex:
    """The SplitIndex of ``tree/<split>/<class>/*`` (classes None: the mapped emotions, canonical order)."""
    split_dir = find_split_dir(tree, split)
    if split_dir is None:
        raise DatasetError(f"{str(tree)!r} has no {'|'.join(SPLIT_DIRS[split])}/ folder, so there is no {split!r} "
                           f"split; expected <split>/<class>/<image>.")
    guard = RootGuard(root)
    sources, ids, folders, ignored = scan_class_folders(split_dir, root, mapper, how, guard)
    if classes is None:
        # Every class folder of every split of the tree counts, so train and test agree on ``classes``.
        every = set()
        for s in SPLIT_DIRS:
            d = find_split_dir(tree, s)
            if d is not None:
                for c in d.iterdir():
                    if c.is_dir() and not c.name.startswith("."):
                        try:
                            every.add(mapper(c.name))
                        except (KeyError, ValueError):
                            pass
        classes = tuple(sorted(c for c in every if c is not None))
    position = {c: i for i, c in enumerate(classes)}
    keep = np.array([i is not None and i in position for i in ids], dtype=bool)
    labels = np.array([position[i] for i, k in zip(ids, keep) if k], dtype=np.int64)
    keep_idx = np.flatnonzero(keep)
    if not len(keep_idx):
        raise DatasetError(f"{str(split_dir)!r}: no image in a class folder mapped to {L.names(classes, 'name')}; "
                           f"check the mapping / label_scheme.")
    return SplitIndex(sources=[sources[i] for i in keep_idx], labels=labels, classes=classes,
                      decode=DecodeSettings(size=size), guard=guard,
                      factors=pd.DataFrame({"class_folder": [folders[i] for i in keep_idx]}),
                      meta={"layout": f"{relative_key(split_dir, root)}/<class>/<image>", "label_scheme": how,
                            "class_folders": {f: (L.NAMES[m] if m is not None else None)
                                              for f, m in sorted(_folder_map(folders, ids).items())},
                            "ignored_files": ignored, "dropped_by_classes": int((~keep).sum())})


def _folder_map(folders: list[str], ids: list[int | None]) -> dict[str, int | None]:
    return dict(zip(folders, ids))


@register_dataset("folder")
class Folder(FileAdapter):
    """Any ImageFolder tree, with an explicit mapping from folder names to canonical emotions.

    Source: your own files (a re-packaged dataset, a new collection). Licence note: whatever licence
    your images carry; fer-bench reads them in place and never copies them elsewhere but its cache.

    Layout (``--data-root`` at the tree or up to two levels above)::

        train/<class>/<image>   (or training/)
        val/<class>/<image>     (or valid/, validation/; optional)
        test/<class>/<image>    (or testing/)

    Images may sit in sub-folders of a class folder; .jpg .jpeg .png .bmp .tif .tiff .webp .ppm .pgm
    .gif are read, anything else is counted as ignored.

    Classes: never guessed from folder order. Give either ``mapping`` (``angry:anger;happy:happy;...``,
    ``folder:none`` drops a folder, or a path to a JSON object ``{"folder": "emotion"}``) or
    ``label_scheme``: ``names`` (folder names are emotion names such as Anger / happiness / SU),
    ``affectnet`` (0..7), ``raf`` (1..7), ``raf0`` (0..6 = RAF-DB code minus one) or ``fer2013`` (0..6),
    mapped through ``fer_bench.labels``. ``classes=0`` (default) keeps every mapped emotion in canonical
    order; 6 / 7 / 8 restrict to the six basic / basic-7 / basic-8 emotions.

    Splits: train, val, test as present (a tree without val/ has no val split: methods carve one).
    Expected counts: none (your data). Protocol: as the tree defines it; images are only resized.

    Options: size=112, mapping="", label_scheme="", classes=0|6|7|8, allow_missing=false, workers=0.

    Citation: the dataset's own.
    """

    splits = ("train", "val", "test")
    options = {**FileAdapter.options, "mapping": "", "label_scheme": "", "classes": 0}
    layout = "train/<class>/<image>, test/<class>/<image> (val/ optional)"
    data_dir = "folder"

    def mapper(self, options: dict[str, Any], root: Path) -> tuple[Callable[[str], int | None], str]:
        name = self.registered_name
        mapping, scheme = options["mapping"], options["label_scheme"]
        if bool(mapping) == bool(scheme):
            raise ValueError(f"Dataset {name!r} needs exactly one of the options mapping=folder:emotion;... or "
                             f"label_scheme={'|'.join(SCHEMES)}: folder names are never guessed.")
        if scheme:
            if scheme not in SCHEMES:
                raise ValueError(f"The 'label_scheme' option of dataset {name!r} must be one of {', '.join(SCHEMES)}. "
                                 f"Got {scheme!r} instead.")
            return scheme_mapper(scheme), f"label_scheme={scheme}"
        table = parse_mapping(mapping, root)

        def mapped(folder: str) -> int | None:
            if folder not in table:
                raise KeyError(f"not in the mapping ({', '.join(sorted(table))})")
            return table[folder]
        return mapped, "mapping"

    def available_splits(self, root: Path, **options: Any) -> tuple[str, ...]:
        tree = folder_root(Path(root), self.registered_name, self.layout)
        return tuple(s for s in self.splits if find_split_dir(tree, s) is not None)

    def index(self, split: str, root: Path, **options: Any) -> SplitIndex:
        mapper, how = self.mapper(options, root)
        classes = None
        if options["classes"]:
            if options["classes"] not in (6, 7, 8):
                raise ValueError(f"The 'classes' option of dataset {self.registered_name!r} must be one of 0, 6, 7, 8. "
                                 f"Got {options['classes']!r} instead.")
            classes = L.resolve_classes(options["classes"])
        tree = folder_root(Path(root), self.registered_name, self.layout)
        return class_folder_index(self.registered_name, split, root, tree, mapper, how, classes, options["size"])
