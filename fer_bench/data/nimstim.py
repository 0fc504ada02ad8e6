"""``nimstim``: the NimStim set of facial expressions, subject-disjoint 80/10/10 split."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fer_bench import labels as L
from fer_bench.data.adapter import (LAB_OPTIONS, FileAdapter, attach_boxes, check_choice, crop_settings,
                                    resolve_class_option)
from fer_bench.data.decode import Source, SplitIndex
from fer_bench.data.paths import DatasetError, RootGuard, files_below, relative_key
from fer_bench.registry import register_dataset

NAME = re.compile(r"^(\d{2})([FM])_([A-Z]{2})_([OCX])\.(bmp|jpe?g|png|tiff?)$", re.IGNORECASE)
MOUTHS = {"open": "O", "closed": "C", "exuberant": "X", "o": "O", "c": "C", "x": "X"}
FRACTIONS = (0.8, 0.1, 0.1)       # train / val / test share of the actors


def actor_split(actors: list[str], seed: int) -> dict[str, str]:
    """Actor -> 'train' | 'val' | 'test': a seeded permutation of the sorted actors, 10% / 10% / 80%
    (rounded, at least one actor each for val and test)."""
    if len(actors) < 3:
        raise DatasetError(f"NimStim needs at least 3 actors for a subject-disjoint train/val/test split; found "
                           f"{len(actors)} ({', '.join(actors)}).")
    order = np.random.default_rng(seed).permutation(len(actors))
    n_test = max(1, int(round(FRACTIONS[2] * len(actors))))
    n_val = max(1, int(round(FRACTIONS[1] * len(actors))))
    ordered = sorted(actors)
    out = {}
    for rank, i in enumerate(order):
        out[ordered[i]] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    return out


@register_dataset("nimstim")
class NimStim(FileAdapter):
    """NimStim: posed colour portraits of professional actors, 8 expressions with open / closed mouths.

    Source: the MacBrain Face Stimulus Set (Tottenham et al.), https://danlab.psychology.columbia.edu/
    content/nimstim-set-facial-expressions (request form). Licence note: research use under the
    NimStim terms; only the designated models may appear in publications; fer-bench never ships or
    downloads the images.

    Layout: image files (any folder depth up to 2 below ``--data-root``) named
    ``<actor><F|M>_<expression>_<mouth>.<ext>``, e.g. ``01F_HA_O.bmp`` or ``20m_an_c.jpeg``
    (case-insensitive; .bmp .jpg .jpeg .png .tif). Expressions: AN, CA (calm), DI, FE, HA, NE, SA,
    SP (surprise); mouth: O open, C closed, X exuberant (happy only).

    Classes: ``NATIVE_MAPS['nimstim']``; CA (calm) is excluded (``calm=neutral`` counts it as neutral);
    classes=6 (default, the six basic emotions, as in the Siamese-network paper) or 7 (with neutral).
    ``mouth=all`` (default) or a ``+``-separated subset such as ``open+closed``.

    Protocol: subject-disjoint split of the actors, 80% train / 10% val / 10% test, as in the Siamese
    paper (Hadsell-style contrastive FER, "split by subject"; which actors went where is not given, so
    a ``seed``-ed permutation of the sorted actors decides; ``all`` is every image). ``groups`` = actor.
    Faces: ``crop=haar`` (default; ``pip install fer-bench[align]``), ``boxes``, ``center`` or ``none``.

    Expected counts: not checked. The full set is described as 672 images of 43 actors (unverified);
    the Siamese paper's six-basic subset decodes to 504 images (anger 87, disgust 82, fear 80, happy
    127, sad 84, surprise 44).

    Options: size=112, classes=6|7, calm=exclude|neutral, mouth=all, seed=0, crop=haar|boxes|center|none,
    margin=0.1, rotate=true, boxes="", allow_missing=false, workers=0.

    Citation: N. Tottenham et al. The NimStim set of facial expressions: Judgments from untrained
    research participants. Psychiatry Research 168(3), 2009.
    """

    splits = ("train", "val", "test", "all")
    options = {**FileAdapter.options, **LAB_OPTIONS, "classes": 6, "calm": "exclude", "mouth": "all", "seed": 0}
    layout = "image files named like 01F_HA_O.bmp (<actor><F|M>_<expression>_<O|C|X>)"
    pool_split = "all"
    data_dir = "nimstim"

    def index(self, split: str, root: Path, **options: Any) -> SplitIndex:
        name = self.registered_name
        classes = resolve_class_option(name, options["classes"], {6: L.SIX_BASIC, 7: L.BASIC7})
        calm = check_choice(name, options, "calm", ("exclude", "neutral"))
        mouths = self._mouths(options["mouth"])
        settings = crop_settings(name, options)
        table = dict(L.NATIVE_MAPS["nimstim"])
        if calm == "neutral":
            table["CA"] = L.NEUTRAL
        guard = RootGuard(root)
        records = []
        for path in files_below(root):
            m = NAME.match(path.name)
            if not m:
                continue
            rel = relative_key(path, root)
            code = m.group(3).upper()
            if code not in table:
                raise DatasetError(f"{rel}: expression code {code!r} is not a NimStim code "
                                   f"({', '.join(table)}); rename or remove the file.")
            guard.check_dir(path, rel)
            actor = f"{m.group(1)}{m.group(2).upper()}"
            records.append((Source(path.name, rel, str(path)), code, actor, m.group(4).upper()))
        if not records:
            raise DatasetError(f"{str(root)!r} is not a NimStim folder: no file named like 01F_HA_O.bmp in it or up to two "
                               f"levels below; expected {self.layout}.")
        records.sort(key=lambda r: r[0].key.upper())
        actors = sorted({r[2] for r in records})
        assignment = actor_split(actors, int(options["seed"]))
        labels, in_classes = L.map_native([r[1] for r in records], table, classes)
        position = np.cumsum(in_classes) - 1
        mouth_ok = np.array([r[3] in mouths for r in records])
        in_split = np.array([split == "all" or assignment[r[2]] == split for r in records])
        rows = np.flatnonzero(in_classes & mouth_ok & in_split)
        factors = pd.DataFrame({"actor": [records[i][2] for i in rows], "expression": [records[i][1] for i in rows],
                                "mouth": [records[i][3] for i in rows]})
        return SplitIndex(sources=attach_boxes(name, [records[i][0] for i in rows], options, root),
                          labels=labels[position[rows]], classes=classes, decode=settings,
                          groups=np.array([actors.index(records[i][2]) for i in rows], dtype=np.int64), factors=factors,
                          guard=guard,
                          meta={"layout": f"{len(records)} NimStim-named files, {len(actors)} actors",
                                "protocol": "all images" if split == "all" else
                                f"subject-disjoint 80/10/10 actor split (seed {options['seed']})",
                                "actors": {s: sorted(a for a, v in assignment.items() if v == s)
                                           for s in ("train", "val", "test")},
                                "calm": calm, "mouth": "".join(sorted(mouths))})

    def _mouths(self, value: str) -> set[str]:
        text = str(value).strip().lower()
        if text == "all":
            return {"O", "C", "X"}
        parts = [p for p in re.split(r"[+;/ ]", text) if p]
        if not parts or any(p not in MOUTHS for p in parts):
            raise ValueError(f"The 'mouth' option of dataset {self.registered_name!r} must be 'all' or a '+'-separated "
                             f"subset of open, closed, exuberant. Got {value!r} instead.")
        return {MOUTHS[p] for p in parts}
