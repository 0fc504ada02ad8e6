"""The canonical emotion vocabulary of fer-bench (DESIGN.md section 1).

Canonical ids follow AffectNet's order: 0 neutral, 1 happy, 2 sad, 3 surprise, 4 fear, 5 disgust,
6 anger, 7 contempt. Basic-7 is 0..6, basic-8 is 0..7, the six basic emotions are 1..6.

Every dataset adapter maps its native codes through an explicit table (``NATIVE_MAPS``, taken from
``shared/notes/label_maps.json``); nothing else in the code knows a dataset's native order. A dataset
carries ``classes`` (a tuple of canonical ids) and labels inside it are indices 0..C-1 into ``classes``.
Plots and tables take names from here, never from literals.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

NAMES: tuple[str, ...] = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt")
DISPLAY: tuple[str, ...] = ("Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt")
SHORT: tuple[str, ...] = ("NE", "HA", "SA", "SU", "FE", "DI", "AN", "CO")

NEUTRAL, HAPPY, SAD, SURPRISE, FEAR, DISGUST, ANGER, CONTEMPT = range(8)

BASIC7: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6)
BASIC8: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7)
SIX_BASIC: tuple[int, ...] = (1, 2, 3, 4, 5, 6)

SUBSETS: dict[str, tuple[int, ...]] = {"basic7": BASIC7, "basic8": BASIC8, "six_basic": SIX_BASIC}
_BY_COUNT: dict[int, tuple[int, ...]] = {7: BASIC7, 8: BASIC8, 6: SIX_BASIC}

# Native code -> canonical id (None = not an emotion label: dropped). Source: notes/label_maps.json,
# which cites the datasets' own files and reference loaders.
NATIVE_MAPS: dict[str, dict[object, int | None]] = {
    "rafdb_basic": {1: SURPRISE, 2: FEAR, 3: DISGUST, 4: HAPPY, 5: SAD, 6: ANGER, 7: NEUTRAL},
    "fer2013": {0: ANGER, 1: DISGUST, 2: FEAR, 3: HAPPY, 4: SAD, 5: SURPRISE, 6: NEUTRAL},
    "ferplus_votes": {0: NEUTRAL, 1: HAPPY, 2: SURPRISE, 3: SAD, 4: ANGER, 5: DISGUST, 6: FEAR,
                      7: CONTEMPT, 8: None, 9: None},
    "affectnet": {**{i: i for i in range(8)}, 8: None, 9: None, 10: None},
    "ckplus": {0: NEUTRAL, 1: ANGER, 2: CONTEMPT, 3: DISGUST, 4: FEAR, 5: HAPPY, 6: SAD, 7: SURPRISE},
    "jaffe": {"NE": NEUTRAL, "HA": HAPPY, "SA": SAD, "SU": SURPRISE, "FE": FEAR, "DI": DISGUST, "AN": ANGER},
    "bu3dfe": {"NE": NEUTRAL, "HA": HAPPY, "SA": SAD, "SU": SURPRISE, "FE": FEAR, "DI": DISGUST, "AN": ANGER},
    "nimstim": {"NE": NEUTRAL, "HA": HAPPY, "SA": SAD, "SP": SURPRISE, "FE": FEAR, "DI": DISGUST, "AN": ANGER,
                "CA": None},
}

_ALIASES: dict[str, int] = {}
for _i, (_n, _d, _s) in enumerate(zip(NAMES, DISPLAY, SHORT)):
    for _a in (_n, _d, _s):
        _ALIASES[_a.lower()] = _i
_ALIASES.update({"happiness": HAPPY, "sadness": SAD, "surprised": SURPRISE, "fearful": FEAR,
                 "disgusted": DISGUST, "angry": ANGER, "anger": ANGER, "sp": SURPRISE, "neutrality": NEUTRAL})


def resolve_classes(classes: int | str | Sequence[int | str]) -> tuple[int, ...]:
    """Turn 7 / 8 / 6, a subset name ("basic7") or a sequence of ids or names into canonical ids."""
    if isinstance(classes, (int, np.integer)) and not isinstance(classes, bool):
        if int(classes) not in _BY_COUNT:
            raise ValueError(f"classes={classes} is not a known class set; use 6 (six basic), 7 (basic-7) or 8 (basic-8).")
        return _BY_COUNT[int(classes)]
    if isinstance(classes, str):
        if classes.isdigit():
            return resolve_classes(int(classes))
        if classes not in SUBSETS:
            raise ValueError(f"classes={classes!r} is not a known class set; allowed: {', '.join(SUBSETS)}, 6, 7, 8.")
        return SUBSETS[classes]
    ids = tuple(canonical_id(c) for c in classes)
    if len(set(ids)) != len(ids):
        raise ValueError(f"classes {list(classes)} name the same emotion twice.")
    return ids


def canonical_id(name_or_id: int | str) -> int:
    """Canonical id of an emotion given its id, name, display name, short code or a common alias."""
    if isinstance(name_or_id, (int, np.integer)) and not isinstance(name_or_id, bool):
        if not 0 <= int(name_or_id) < len(NAMES):
            raise ValueError(f"emotion id {name_or_id} is out of range; canonical ids are 0..{len(NAMES) - 1}.")
        return int(name_or_id)
    key = str(name_or_id).strip().lower()
    if key not in _ALIASES:
        raise ValueError(f"unknown emotion name {name_or_id!r}; known: {', '.join(NAMES)}.")
    return _ALIASES[key]


def names(classes: Sequence[int], style: str = "display") -> list[str]:
    """Names of canonical ids, in the given style: 'name', 'display' or 'short'."""
    table = {"name": NAMES, "display": DISPLAY, "short": SHORT}
    if style not in table:
        raise ValueError(f"style={style!r} is not allowed; use one of {', '.join(table)}.")
    return [table[style][canonical_id(c)] for c in classes]


def map_native(codes: Sequence[object] | np.ndarray, table: str | Mapping[object, int | None],
               classes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Map native label codes of a dataset to indices into ``classes``.

    Returns ``(labels, keep)``: ``labels`` int64 indices into ``classes`` for the kept items and ``keep``
    a boolean mask over the input (False where the native code maps to no emotion, e.g. FERPlus
    'unknown', or to an emotion outside ``classes``, e.g. contempt in a 7-class setting).
    An unknown native code raises: a dataset must never silently gain or lose a label.
    """
    mapping = NATIVE_MAPS[table] if isinstance(table, str) else table
    position = {c: i for i, c in enumerate(classes)}
    out, keep = [], []
    for code in codes:
        key = code.item() if isinstance(code, np.generic) else code
        if key not in mapping:
            raise ValueError(f"native label {code!r} is not in the {table if isinstance(table, str) else 'given'} "
                             f"label table (known: {sorted(map(str, mapping))}); check the dataset files.")
        canon = mapping[key]
        ok = canon is not None and canon in position
        keep.append(ok)
        if ok:
            out.append(position[canon])
    return np.asarray(out, dtype=np.int64), np.asarray(keep, dtype=bool)
