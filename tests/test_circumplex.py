"""The circumplex-order metric on constructed centroid layouts, against hand-computed values and exact nulls."""
import math

import numpy as np
import pytest

from fer_bench import circumplex as C
from fer_bench import labels as L

REF = C.REFERENCE_ORDER  # Happy, Surprise, Fear, Sad, Anger, Disgust


def layout(order, angles=None, n_per=20, spread=0.02, seed=0, dims=2, classes=L.SIX_BASIC):
    """Points around a circle: the i-th emotion of ``order`` at ``angles[i]``; labels index ``classes``."""
    rng = np.random.default_rng(seed)
    angles = np.arange(len(order)) * 2 * math.pi / len(order) if angles is None else np.asarray(angles)
    xs, ys = [], []
    for emotion, a in zip(order, angles):
        centre = np.array([math.cos(a), math.sin(a)])
        xs.append(centre + spread * rng.standard_normal((n_per, 2)))
        ys.append(np.full(n_per, list(classes).index(emotion)))
    x, y = np.concatenate(xs), np.concatenate(ys)
    if dims > 2:  # a random isometric embedding into `dims` dimensions plus an offset
        q, _ = np.linalg.qr(rng.standard_normal((dims, dims)))
        x = np.column_stack([x, np.zeros((len(x), dims - 2))]) @ q.T + rng.standard_normal(dims)
    return x, y


def test_reference_order_is_the_human_circumplex():
    assert L.names(REF, "short") == ["HA", "SU", "FE", "SA", "AN", "DI"]


def test_triple_orientation_by_hand():
    # cycle of 4 positions: classes 0,1,2 at 0,1,2 -> +1; at 0,2,1 -> -1; a tie -> 0
    pos = np.array([0, 1, 2, 3, 3, 3])
    o = C.triple_orientations(pos, 4)
    t = {tuple(tr): v for tr, v in zip(C.TRIPLES.tolist(), o.tolist())}
    assert t[(0, 1, 2)] == 1 and t[(0, 1, 3)] == 1 and t[(3, 4, 5)] == 0 and t[(0, 3, 4)] == 0
    assert C.triple_orientations(np.array([0, 2, 1, 3, 4, 5]), 6)[0] == -1  # (0,1,2) reversed
    assert C.triple_orientations(np.array([2, 0, 1, 3, 4, 5]), 6)[0] == 1   # a rotation keeps orientation


def test_exact_order_tau_one_and_p_one_sixtieth():
    x, y = layout(REF)
    r = C.circumplex_report(x, y, L.SIX_BASIC, n_boot=50)
    assert r["circumplex_tau"] == 1.0 and r["circumplex_exact"] == 1.0 and r["circumplex_adjacency"] == 6.0
    assert r["circumplex_tau_p"] == pytest.approx(1 / 60) and r["circumplex_exact_p"] == pytest.approx(1 / 60)
    assert r["circumplex_adjacency_p"] == pytest.approx(1 / 60)
    assert r["circumplex_rsa"] > 0.9 and r["circumplex_rsa_p"] == pytest.approx(1 / 60)  # 12 symmetries of 720
    exact = C.circumplex_report(*layout(REF, spread=0.0), L.SIX_BASIC, n_boot=0)
    assert exact["circumplex_rsa"] == pytest.approx(1.0)  # a regular hexagon: distances rank as the steps
    assert r["circumplex_ties"] == 0.0 and r["circumplex_min_gap_deg"] == pytest.approx(60, abs=2)
    assert r["circumplex_tau_ci_low"] == 1.0 and r["circumplex_exact_boot"] == 1.0


def test_one_adjacent_swap_gives_tau_point_six():
    swapped = (L.HAPPY, L.FEAR, L.SURPRISE, L.SAD, L.ANGER, L.DISGUST)
    x, y = layout(swapped)
    r = C.circumplex_report(x, y, L.SIX_BASIC, n_boot=0)
    assert r["circumplex_tau"] == pytest.approx(0.6)
    assert r["circumplex_tau_p"] == pytest.approx(7 / 60)  # P(T >= 16) = 0.1167 (notes section 4.4)
    assert r["circumplex_exact"] == 0.0 and r["circumplex_adjacency"] == 4.0
    assert math.isnan(r["circumplex_tau_boot_mean"])


@pytest.mark.parametrize("rotation,reflect,scale", [(0.7, False, 1.0), (2.5, True, 3.0), (-1.0, True, 0.01)])
def test_rotation_reflection_and_scale_invariance(rotation, reflect, scale):
    order = (L.HAPPY, L.SAD, L.FEAR, L.SURPRISE, L.DISGUST, L.ANGER)  # something partly wrong
    x, y = layout(order, seed=3)
    base = C.circumplex_report(x, y, L.SIX_BASIC, n_boot=20)
    rot = np.array([[math.cos(rotation), -math.sin(rotation)], [math.sin(rotation), math.cos(rotation)]])
    x2 = x @ rot.T * scale + np.array([5.0, -2.0])
    if reflect:
        x2[:, 0] = -x2[:, 0]
    assert C.circumplex_report(x2, y, L.SIX_BASIC, n_boot=20) == pytest.approx(base)


def test_labels_are_mapped_through_classes_not_positions():
    classes = (L.ANGER, L.NEUTRAL, L.DISGUST, L.SAD, L.HAPPY, L.FEAR, L.SURPRISE)  # any order, with neutral
    x, y = layout(REF, classes=classes)
    neutral = np.full(15, classes.index(L.NEUTRAL))
    x = np.concatenate([x, np.full((15, 2), 9.0)])   # far-away neutral images must be ignored
    y = np.concatenate([y, neutral])
    assert C.circumplex_report(x, y, classes, n_boot=0)["circumplex_tau"] == 1.0


def test_high_dimensional_embeddings_reduced_by_mds():
    swapped = (L.HAPPY, L.FEAR, L.SURPRISE, L.SAD, L.ANGER, L.DISGUST)
    x, y = layout(swapped, dims=7, seed=5)
    r = C.circumplex_report(x, y, L.SIX_BASIC, n_boot=20)
    assert r["circumplex_tau"] == pytest.approx(0.6) and r["circumplex_rsa"] > 0.0
    one_d = C.circumplex_report(x[:, :1], y, L.SIX_BASIC, n_boot=0)  # collinear centroids: ties, still defined
    assert 0.0 <= one_d["circumplex_tau"] <= 1.0


def test_exact_null_distributions_sum_to_one_and_match_the_notes():
    values, probs = C.tau_null_distribution()
    assert probs.sum() == pytest.approx(1.0)
    tail = {v: probs[values >= v - 1e-9].sum() for v in (1.0, 0.6, 0.4, 0.2)}
    assert tail == pytest.approx({1.0: 1 / 60, 0.6: 0.11667, 0.4: 0.31667, 0.2: 0.70}, abs=1e-4)
    adj = C.null_statistics(np.arange(6), 6)["adjacency"]
    av, ap = C.null_distribution(adj)
    assert ap.sum() == pytest.approx(1.0) and 5.0 not in av
    assert (adj == 6).mean() == pytest.approx(1 / 60) and (adj >= 4).mean() == pytest.approx(1 / 6)
    assert (adj >= 3).mean() == pytest.approx(0.5)


def test_fear_surprise_tie_matches_the_paper_one_in_thirty():
    angles = np.array([0, 60, 60, 180, 240, 300]) * math.pi / 180  # Surprise and Fear at the same angle
    x, y = layout(REF, angles=angles, spread=0.0)
    r = C.circumplex_report(x, y, L.SIX_BASIC, n_boot=0)
    assert r["circumplex_ties"] == 1.0 and r["circumplex_exact"] == 1.0
    assert r["circumplex_exact_p"] == pytest.approx(1 / 30)  # Rao et al.: two orders of 1/60 each
    assert r["circumplex_tau"] == pytest.approx(0.8) and r["circumplex_tau_p"] == pytest.approx(1 / 30)
    # the tie threshold turns a near-overlap into a tie
    near = np.array([0, 58, 62, 180, 240, 300]) * math.pi / 180
    x2, y2 = layout((L.HAPPY, L.FEAR, L.SURPRISE, L.SAD, L.ANGER, L.DISGUST), angles=near, spread=0.0)
    strict = C.circumplex_report(x2, y2, L.SIX_BASIC, n_boot=0)
    tolerant = C.circumplex_report(x2, y2, L.SIX_BASIC, n_boot=0, tie_degrees=5.0)
    assert strict["circumplex_exact"] == 0.0 and tolerant["circumplex_exact"] == 1.0


def test_cyclic_positions_ties_wrap_around():
    pos, k = C.cyclic_positions(np.radians([359.0, 1.0, 90, 180, 200, 270]), math.radians(3))
    assert k == 5 and pos[0] == pos[1]


def test_missing_emotion_gives_empty_report_and_constant_embedding_nan():
    x, y = layout(REF)
    keep = y != L.SIX_BASIC.index(L.FEAR)
    assert C.circumplex_report(x[keep], y[keep], L.SIX_BASIC) == {}
    assert C.circumplex_report(x, y % 3, (1, 2, 3)) == {}
    r = C.circumplex_report(np.zeros((len(y), 4)), y, L.SIX_BASIC)
    assert set(r) == set(C.METRIC_KEYS) and all(math.isnan(v) for v in r.values())


def test_bootstrap_is_seeded_and_brackets_a_noisy_layout():
    x, y = layout(REF, spread=2.0, n_per=30, seed=1)
    a = C.circumplex_report(x, y, L.SIX_BASIC, n_boot=200, seed=4)
    b = C.circumplex_report(x, y, L.SIX_BASIC, n_boot=200, seed=4)
    assert a == b
    assert a["circumplex_tau_ci_low"] <= a["circumplex_tau_boot_mean"] <= a["circumplex_tau_ci_high"]
    assert 0.0 < a["circumplex_exact_boot"] < 1.0


def test_bad_inputs_name_the_problem():
    x, y = layout(REF)
    with pytest.raises(ValueError, match="labels"):
        C.circumplex_report(x, y[:-1], L.SIX_BASIC)
    with pytest.raises(ValueError, match="centroid"):
        C.circumplex_report(x, y, L.SIX_BASIC, centroid="mode")


def test_plot_circumplex_writes_png(tmp_path):
    x, y = layout(REF)
    C.plot_circumplex(x, y, L.SIX_BASIC, tmp_path / "c.png", title="t")
    C.plot_circumplex_grid([("a", x, y), ("b", -x, y)], L.SIX_BASIC, tmp_path / "g.png")
    assert (tmp_path / "c.png").stat().st_size > 1000 and (tmp_path / "g.png").is_file()
