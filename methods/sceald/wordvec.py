"""Word vectors for the emotion words (SCE-ALD, Mao et al., "Label distribution amendment with emotional
semantic correlations for facial expression recognition", section III-A).

SCE-ALD turns each class into a word ('surprised', 'fear', 'disgusted', 'happy', 'sad', 'angry',
'neutral'; 'contempt' for 8 classes) and uses that word's vector from Google's pre-trained word2vec.
That model is 3.6 GB and not on a package registry, so this module reads vectors that the user
supplies, without downloading anything, and ships a default table:

- ``read_word2vec_binary`` (the GoogleNews ``.bin`` format), ``read_text_vectors`` (word2vec text
  with its ``N D`` header line, or GloVe text without one), ``read_npy_vectors`` (an ``(N, D)`` ``.npy``
  with a word list, one word a line) and ``read_table`` (our JSON table). Every reader takes the
  words it needs and stops reading once it has them, so a multi-GB file is streamed, not loaded.
- ``load_vectors(path)`` picks the reader by the file name; ``"default"`` is the committed table
  ``methods/sceald/emotion_word_vectors.json``, computed by ``scripts/make_emotion_word_vectors.py``
  from a real pre-trained text embedding model (its name, version and the exact procedure are in
  the table's ``provenance`` header). Random vectors are never used outside tests.
- ``emotion_vectors(classes, source)`` returns the ``(C, D)`` matrix for a dataset's canonical class
  ids, in class order; ``cosine_matrix`` gives the paper's Figure 3.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from fer_bench import labels as L

DEFAULT_TABLE = Path(__file__).with_name("emotion_word_vectors.json")

# Canonical id -> the word SCE-ALD uses for it (section III-A); contempt is the 8-class extension.
EMOTION_WORDS: dict[int, str] = {
    L.SURPRISE: "surprised", L.FEAR: "fear", L.DISGUST: "disgusted", L.HAPPY: "happy", L.SAD: "sad",
    L.ANGER: "angry", L.NEUTRAL: "neutral", L.CONTEMPT: "contempt",
}

FORMATS = ("auto", "word2vec_binary", "text", "npy", "json")


def _wanted(words: Iterable[str] | None) -> set[str] | None:
    return None if words is None else {str(w) for w in words}


def _finish(found: dict[str, np.ndarray], words: Iterable[str] | None, path: Path) -> dict[str, np.ndarray]:
    """Check that every requested word was found (case-insensitive fallback) and return them."""
    if words is None:
        return found
    out: dict[str, np.ndarray] = {}
    lower = {k.lower(): k for k in found}
    for w in words:
        key = w if w in found else lower.get(w.lower())
        if key is None:
            raise KeyError(f"word {w!r} is not in the vector file {str(path)!r}; use a file that has it or pass "
                           f"other words (SCE-ALD's words: {', '.join(EMOTION_WORDS.values())}).")
        out[w] = found[key]
    return out


def _case_keys(words: set[str] | None) -> set[str] | None:
    # A file may spell a word with another case ('Happy'); keep both spellings while streaming.
    return None if words is None else words | {w.lower() for w in words}


def read_word2vec_binary(path: str | Path, words: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Vectors from a word2vec binary file (``N D\\n`` then ``word<space><D float32 LE>`` records).

    ``words``: the words to keep (None: all); reading stops once every one was seen.
    """
    path = Path(path)
    wanted = _case_keys(_wanted(words))
    found: dict[str, np.ndarray] = {}
    with open(path, "rb") as fh:
        header = fh.readline().split()
        if len(header) != 2 or not all(h.isdigit() for h in header):
            raise ValueError(f"{str(path)!r} is not a word2vec binary file: its first line must be 'N D'; "
                             f"got {b' '.join(header)[:60]!r}. Use format='text' for text files.")
        n, dim = int(header[0]), int(header[1])
        for _ in range(n):
            chars = bytearray()
            while True:
                ch = fh.read(1)
                if not ch:
                    raise ValueError(f"{str(path)!r} ends early: fewer than the {n} words its header announces.")
                if ch == b" ":
                    break
                if ch != b"\n":  # records may be separated by a newline
                    chars.extend(ch)
            raw = fh.read(4 * dim)
            if len(raw) != 4 * dim:
                raise ValueError(f"{str(path)!r} ends inside the vector of {chars.decode(errors='replace')!r}.")
            word = chars.decode("utf-8", errors="replace")
            if wanted is None or word in wanted or word.lower() in wanted:
                found.setdefault(word, np.frombuffer(raw, dtype="<f4").astype(np.float32))
                if wanted is not None and _all_seen(words, found):
                    break
    return _finish(found, words, path)


def _all_seen(words: Iterable[str] | None, found: dict[str, np.ndarray]) -> bool:
    keys = {k.lower() for k in found} | set(found)
    return all(w in keys or w.lower() in keys for w in words or ())


def read_text_vectors(path: str | Path, words: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Vectors from a text file: word2vec text (first line ``N D``) or GloVe (no header line).

    Each line is ``word v1 v2 ... vD``; ``words``: the words to keep (None: all).
    """
    path = Path(path)
    wanted = _case_keys(_wanted(words))
    found: dict[str, np.ndarray] = {}
    dim = None
    with open(path, "r", encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh):
            parts = line.rstrip("\n").rstrip().split(" ")
            if number == 0 and len(parts) == 2 and all(p.isdigit() for p in parts):
                dim = int(parts[1])  # word2vec text header
                continue
            if len(parts) < 2:
                continue
            word, values = parts[0], parts[1:]
            if dim is None:
                dim = len(values)
            if len(values) != dim:
                raise ValueError(f"{str(path)!r} line {number + 1} has {len(values)} values, expected {dim}; "
                                 f"check that the file is word2vec text or GloVe text.")
            if wanted is None or word in wanted or word.lower() in wanted:
                found.setdefault(word, np.asarray(values, dtype=np.float32))
                if wanted is not None and _all_seen(words, found):
                    break
    return _finish(found, words, path)


def read_npy_vectors(path: str | Path, words_path: str | Path | None = None,
                     words: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Vectors from an ``(N, D)`` ``.npy`` array and a word list (one word a line, row order).

    ``words_path`` defaults to the same name with the suffix ``.words`` or ``.txt``.
    """
    path = Path(path)
    if words_path is None:
        candidates = [path.with_suffix(".words"), path.with_suffix(".txt")]
        words_path = next((c for c in candidates if c.is_file()), None)
        if words_path is None:
            raise FileNotFoundError(f"no word list beside {str(path)!r}; write one word a line to "
                                    f"{str(candidates[0])!r} (row order of the array).")
    vocab = Path(words_path).read_text(encoding="utf-8").splitlines()
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    if array.ndim != 2 or array.shape[0] != len(vocab):
        raise ValueError(f"{str(path)!r} has shape {array.shape} but {str(words_path)!r} lists {len(vocab)} words; "
                         f"the array must be (N, D) with one row per listed word.")
    wanted = _case_keys(_wanted(words))
    found = {w: np.asarray(array[i], dtype=np.float32) for i, w in enumerate(vocab)
             if wanted is None or w in wanted or w.lower() in wanted}
    return _finish(found, words, path)


def read_table(path: str | Path = DEFAULT_TABLE, words: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Vectors from a fer-bench JSON table (``{"provenance": {...}, "dim": D, "vectors": {word: [...]}}``)."""
    path = Path(path)
    table = json.loads(path.read_text(encoding="utf-8"))
    if "vectors" not in table:
        raise ValueError(f"{str(path)!r} is not a word-vector table: it has no 'vectors' key; "
                         f"regenerate it with scripts/make_emotion_word_vectors.py.")
    found = {w: np.asarray(v, dtype=np.float32) for w, v in table["vectors"].items()}
    return _finish(found, words, path)


def table_provenance(path: str | Path = DEFAULT_TABLE) -> dict[str, Any]:
    """The ``provenance`` header of a JSON table (model, versions, procedure)."""
    return dict(json.loads(Path(path).read_text(encoding="utf-8")).get("provenance", {}))


def load_vectors(source: str | Path = "default", words: Iterable[str] | None = None,
                 format: str = "auto") -> dict[str, np.ndarray]:
    """Word -> vector from ``source``: ``"default"`` (the committed table) or a file path.

    ``format`` "auto" decides by the name: ``.bin`` word2vec binary, ``.npy`` array + word list,
    ``.json`` our table, anything else (``.txt``, ``.vec``) word2vec text or GloVe text.
    """
    if format not in FORMATS:
        raise ValueError(f"word-vector format {format!r} is not allowed; use one of {', '.join(FORMATS)}.")
    if str(source) == "default":
        return read_table(DEFAULT_TABLE, words)
    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"word-vector file {str(path)!r} does not exist; pass a word2vec .bin, a text "
                                f"(word2vec or GloVe) file, a .npy with a .words list, or 'default'.")
    suffix = path.suffix.lower()
    if format == "auto":
        format = {".bin": "word2vec_binary", ".npy": "npy", ".json": "json"}.get(suffix, "text")
    if format == "word2vec_binary":
        return read_word2vec_binary(path, words)
    if format == "npy":
        return read_npy_vectors(path, words=words)
    if format == "json":
        return read_table(path, words)
    if format == "text":
        return read_text_vectors(path, words)
    raise ValueError(f"word-vector format {format!r} is not allowed; use one of {', '.join(FORMATS)}.")


def emotion_words(classes: Sequence[int]) -> list[str]:
    """SCE-ALD's word for each canonical class id, in class order."""
    return [EMOTION_WORDS[L.canonical_id(c)] for c in classes]


def emotion_vectors(classes: Sequence[int], source: str | Path = "default",
                    words: Sequence[str] | None = None) -> np.ndarray:
    """float32 (C, D): the word vector of each class (canonical ids ``classes``) from ``source``.

    ``words`` replaces SCE-ALD's words (one per class, class order) when given.
    """
    words = list(words) if words is not None else emotion_words(classes)
    if len(words) != len(classes):
        raise ValueError(f"{len(words)} words were given for {len(classes)} classes; give one word per class.")
    table = load_vectors(source, words)
    vectors = np.stack([table[w] for w in words]).astype(np.float32)  # (C, D)
    if not np.all(np.isfinite(vectors)) or np.any(np.linalg.norm(vectors, axis=1) == 0):
        raise ValueError(f"the vectors of {words} from {source!s} contain zeros or non-finite values; use another file.")
    return vectors


def cosine_matrix(vectors: np.ndarray) -> np.ndarray:
    """float64 (C, C) cosine similarities between the rows of ``vectors`` (the paper's Figure 3)."""
    v = np.asarray(vectors, dtype=np.float64)
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    return np.clip(v @ v.T, -1.0, 1.0)
