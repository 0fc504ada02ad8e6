import numpy as np
import pytest

from fer_bench import labels as L


def test_canonical_order_is_affectnet():
    assert L.NAMES == ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt")
    assert L.BASIC7 == tuple(range(7)) and L.BASIC8 == tuple(range(8)) and L.SIX_BASIC == tuple(range(1, 7))


@pytest.mark.parametrize("given, expected", [(7, L.BASIC7), ("8", L.BASIC8), ("six_basic", L.SIX_BASIC),
                                             (["anger", "HA", 0], (6, 1, 0))])
def test_resolve_classes(given, expected):
    assert L.resolve_classes(given) == expected


def test_resolve_classes_rejects_unknown():
    with pytest.raises(ValueError, match="use 6 .six basic., 7 .basic-7. or 8"):
        L.resolve_classes(5)
    with pytest.raises(ValueError, match="twice"):
        L.resolve_classes(["happy", "happiness"])


def test_rafdb_native_codes_map_to_canonical_indices():
    # RAF-DB: 1 Surprise, 2 Fear, 3 Disgust, 4 Happiness, 5 Sadness, 6 Anger, 7 Neutral
    labels, keep = L.map_native([1, 2, 3, 4, 5, 6, 7], "rafdb_basic", L.BASIC7)
    assert keep.all()
    assert [L.NAMES[L.BASIC7[i]] for i in labels] == ["surprise", "fear", "disgust", "happy", "sad", "anger", "neutral"]


def test_map_native_drops_non_emotions_and_out_of_set_classes():
    # FERPlus vote columns: 7 contempt, 8 unknown; in basic-7 contempt is dropped too
    labels, keep = L.map_native(np.array([0, 7, 8, 2]), "ferplus_votes", L.BASIC7)
    assert keep.tolist() == [True, False, False, True]
    assert labels.tolist() == [0, 3]  # neutral, surprise


def test_six_basic_indices_shift_by_one():
    labels, keep = L.map_native(["HA", "AN", "NE"], "jaffe", L.SIX_BASIC)
    assert labels.tolist() == [0, 5] and keep.tolist() == [True, True, False]


def test_unknown_native_code_raises():
    with pytest.raises(ValueError, match="not in the rafdb_basic label table"):
        L.map_native([8], "rafdb_basic", L.BASIC7)


def test_names_styles():
    assert L.names((1, 6), "short") == ["HA", "AN"]
    assert L.names((0,)) == ["Neutral"]
