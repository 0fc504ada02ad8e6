"""Tests of fer_bench.metrics: hand-computed oracles, a brute-force kNN oracle, and cross-checks
against scikit-learn and (when installed) pytorch-metric-learning's AccuracyCalculator."""
from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from fer_bench import cost as C
from fer_bench import divergence as D
from fer_bench import metrics as M
from fer_bench import neighbours as N

# ---------------------------------------------------------------------------------------------
# classification: one hand-made case, 10 items, 5 classes (class 4 never occurs)
# ---------------------------------------------------------------------------------------------
Y_TRUE = [0, 0, 0, 0, 1, 1, 2, 2, 2, 3]
Y_PRED = [0, 0, 1, 2, 1, 1, 2, 0, 0, 3]
# rows = true class, columns = predicted class
CM = [[2, 1, 1, 0, 0],
      [0, 2, 0, 0, 0],
      [2, 0, 1, 0, 0],
      [0, 0, 0, 1, 0],
      [0, 0, 0, 0, 0]]
# recall    (diag / row sums): 2/4, 2/2, 1/3, 1/1, 0 (class 4 absent from y_true -> 0)
# precision (diag / col sums): 2/4, 2/3, 1/2, 1/1, 0 (class 4 never predicted -> 0)
# per-class F1: 0.5, 2*(2/3)*1/(5/3) = 0.8, 2*(1/2)(1/3)/(5/6) = 0.4, 1, 0
MACRO_P = 8 / 15  # (0.5 + 2/3 + 0.5 + 1 + 0) / 5
MACRO_R = 17 / 30  # (0.5 + 1 + 1/3 + 1 + 0) / 5
MACRO_F1 = 0.54  # (0.5 + 0.8 + 0.4 + 1 + 0) / 5
SGM_F1 = 272 / 495  # 2 * (8/15) * (17/30) / (8/15 + 17/30) = 0.549495...
MEAN_CLASS_ACC = 17 / 24  # (0.5 + 1 + 1/3 + 1) / 4: classes present in y_true only


def test_classification_oracle():
    np.testing.assert_array_equal(M.confusion_matrix(Y_TRUE, Y_PRED, 5), CM)
    assert M.accuracy(Y_TRUE, Y_PRED) == pytest.approx(0.6)  # 6 of 10 on the diagonal
    np.testing.assert_allclose(M.per_class_recall(Y_TRUE, Y_PRED, 5), [0.5, 1, 1 / 3, 1, 0])
    assert M.mean_class_accuracy(Y_TRUE, Y_PRED) == pytest.approx(MEAN_CLASS_ACC)
    p, r, f1 = M.macro_precision_recall_f1(Y_TRUE, Y_PRED, 5)
    assert (p, r, f1) == pytest.approx((MACRO_P, MACRO_R, MACRO_F1))
    assert M.sgm_f1(Y_TRUE, Y_PRED, 5) == pytest.approx(SGM_F1)
    assert M.sgm_f1([0, 0], [1, 1], 2) == 0.0  # P = R = 0: defined as 0, not NaN


def test_classification_report_is_flat_and_consistent():
    report = M.classification_report(Y_TRUE, Y_PRED, 5)
    assert all(isinstance(v, float) for v in report.values())
    assert report["macro_f1"] == pytest.approx(MACRO_F1)
    assert report["sgm_f1"] == pytest.approx(SGM_F1)
    assert report["recall_class2"] == pytest.approx(1 / 3)
    assert report["mean_class_accuracy"] == pytest.approx(MEAN_CLASS_ACC)


def test_classification_matches_sklearn():
    from sklearn import metrics as skm

    rng = np.random.default_rng(0)
    for trial in range(5):
        y_true = rng.integers(0, 6, 200)  # classes 6 and 7 never occur in y_true...
        y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, 8, 200))  # ...but in y_pred
        p, r, f1, _ = skm.precision_recall_fscore_support(
            y_true, y_pred, labels=range(8), average="macro", zero_division=0)
        assert M.macro_precision_recall_f1(y_true, y_pred, 8) == pytest.approx((p, r, f1))
        np.testing.assert_array_equal(M.confusion_matrix(y_true, y_pred, 8),
                                      skm.confusion_matrix(y_true, y_pred, labels=range(8)))
        with pytest.warns(UserWarning):  # sklearn warns about y_pred classes absent from y_true
            expected = skm.balanced_accuracy_score(y_true, y_pred)
        assert M.mean_class_accuracy(y_true, y_pred) == pytest.approx(expected)


@pytest.mark.parametrize("bad, message", [
    (dict(y_pred=[0, 5]), "'y_pred' parameter of confusion_matrix must hold class indices in \\[0, 3\\)"),
    (dict(y_pred=[0.0, 1.0]), "'y_pred' parameter of confusion_matrix must be a 1-D array of integer"),
    (dict(y_pred=[0, 1, 1]), "must have the same number of rows"),
])
def test_classification_errors_name_the_input(bad, message):
    args = dict(y_true=[0, 1], y_pred=[0, 1], num_classes=3) | bad
    with pytest.raises(ValueError, match=message):
        M.confusion_matrix(**args)


# ---------------------------------------------------------------------------------------------
# nearest neighbours: brute-force oracle
# ---------------------------------------------------------------------------------------------

def brute_knn(queries: np.ndarray, gallery: np.ndarray, k: int, exclude_self: bool) -> np.ndarray:
    """Full float64 distance matrix + stable argsort: nearest first, ties to the smaller index
    (a block of 64 queries at a time, to keep the (64, Ng, D) differences small)."""
    q, g = queries.astype(np.float64), gallery.astype(np.float64)
    out = []
    for s in range(0, len(q), 64):
        d = ((q[s:s + 64, None, :] - g[None, :, :]) ** 2).sum(axis=2)  # (b, Ng)
        if exclude_self:
            d[np.arange(len(d)), s + np.arange(len(d))] = np.inf
        out.append(np.argsort(d, axis=1, kind="stable")[:, :k])
    return np.concatenate(out)


@pytest.mark.parametrize("chunk", [4096, 257, 64, 50])  # N = 257: chunk > N, = N, divides not N
@pytest.mark.parametrize("exclude_self", [False, True])
def test_knn_indices_matches_brute_force(chunk, exclude_self):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((257, 8)) + 3).astype(np.float32)  # off-centre on purpose
    got = M.knn_indices(x, x, 7, exclude_self=exclude_self, chunk=chunk)
    assert got.shape == (257, 7) and got.dtype == np.int64
    np.testing.assert_array_equal(got, brute_knn(x, x, 7, exclude_self))
    if exclude_self:
        assert not (got == np.arange(257)[:, None]).any()
    else:
        np.testing.assert_array_equal(got[:, 0], np.arange(257))  # a row is its own nearest


def test_knn_indices_separate_query_set():
    rng = np.random.default_rng(2)
    gallery = rng.standard_normal((300, 16)).astype(np.float32)
    queries = rng.standard_normal((45, 16)).astype(np.float32)
    got = M.knn_indices(queries, gallery, 11, chunk=16)
    np.testing.assert_array_equal(got, brute_knn(queries, gallery, 11, False))


@pytest.mark.parametrize("chunk", [1000, 37])
def test_knn_indices_ties_go_to_the_smaller_index(chunk):
    # Integer coordinates in a set symmetric about 0: the centring and every distance are exact in
    # float32, so many exact ties occur (repeated points and equal distances); each is broken by
    # the smaller gallery index, as the stable argsort of the oracle does.
    rng = np.random.default_rng(3)
    base = rng.integers(-3, 4, (15, 4)).astype(np.float32)
    x = np.concatenate([base, -base] * 6)  # (180, 4); every point occurs at least 6 times
    assert M.knn_indices(x, x, 9, exclude_self=True, chunk=chunk).tolist() == \
        brute_knn(x, x, 9, True).tolist()
    identical = np.zeros((50, 3), dtype=np.float32)
    np.testing.assert_array_equal(M.knn_indices(identical, identical, 4, exclude_self=True,
                                                chunk=chunk)[:3], [[1, 2, 3, 4], [0, 2, 3, 4], [0, 1, 3, 4]])


def test_knn_indices_never_builds_an_n_by_n_matrix(monkeypatch):
    # The CPU screen's buffers (one per thread) hold the scores of at most `chunk` queries in
    # all; the screen on other devices multiplies `chunk` queries at a time.
    rows = []
    real_scratch = N._scratch

    def recording_scratch(n_rows, *args):
        rows.append(n_rows)
        return real_scratch(n_rows, *args)

    monkeypatch.setattr(N, "_scratch", recording_scratch)
    x = np.random.default_rng(4).standard_normal((500, 8)).astype(np.float32)
    M.knn_indices(x, x, 5, exclude_self=True, chunk=128)
    assert rows and sum(rows) <= 128

    shapes = []
    real_mm = torch.mm

    def recording_mm(a, b, **kwargs):
        shapes.append(tuple(kwargs["out"].shape) if "out" in kwargs else (a.shape[0], b.shape[1]))
        return real_mm(a, b, **kwargs)

    monkeypatch.setattr(torch, "mm", recording_mm)
    monkeypatch.setattr(N, "_cpu_passes", torch_screen)
    M.knn_indices(x, x, 5, exclude_self=True, chunk=128)
    assert shapes and all(n <= 128 for n, _ in shapes)


def test_knn_indices_errors():
    x = np.zeros((5, 2), dtype=np.float32)
    with pytest.raises(ValueError, match="'k' parameter of knn_indices must be an int in \\[1, 4\\]"):
        M.knn_indices(x, x, 5, exclude_self=True)
    with pytest.raises(ValueError, match="finite"):
        M.knn_indices(np.full((5, 2), np.nan), x, 1)
    for bad in (np.nan, -np.inf, np.inf, -1e200, 1e200):  # one bad value among finite ones
        y = np.arange(10.0).reshape(5, 2)
        y[3, 1] = bad
        with pytest.raises(ValueError, match="finite"):
            M.knn_indices(x, y, 1)
    with pytest.raises(ValueError, match="same dimension"):
        M.knn_indices(np.zeros((5, 3)), x, 1)


# ---------------------------------------------------------------------------------------------
# retrieval, kNN classification, MAP@R: hand oracles on points of a line
# ---------------------------------------------------------------------------------------------
# x = 0, 1, 3, 3.5, 10, 11.5 with labels 0, 0, 1, 0, 1, 1. Neighbours without the query (no ties):
#   item 0: 1, 2, 3, 4, 5 -> labels 0 1 0 1 1 -> same-label flags 1 0 1 0 0
#   item 1: 0, 2, 3, 4, 5 -> 0 1 0 1 1 -> 1 0 1 0 0
#   item 2: 3, 1, 0, 4, 5 -> 0 0 0 1 1 -> 0 0 0 1 1
#   item 3: 2, 1, 0, 4, 5 -> 1 0 0 1 1 -> 0 1 1 0 0
#   item 4: 5, 3, 2, 1, 0 -> 1 0 1 0 0 -> 1 0 1 0 0
#   item 5: 4, 3, 2, 1, 0 -> 1 0 1 0 0 -> 1 0 1 0 0
LINE_X = np.array([[0.0], [1.0], [3.0], [3.5], [10.0], [11.5]], dtype=np.float32)
LINE_Y = np.array([0, 0, 1, 0, 1, 1])
RECALL = {1: 4 / 6, 2: 5 / 6, 4: 6 / 6}  # rows with a 1 among their first K flags
ACC = {1: 4 / 6, 2: 5 / 12, 4: 11 / 24}  # K=2: (1+1+0+1+1+1)/2/6; K=4: (2+2+1+2+2+2)/4/6
# MAP@R: both labels have 3 members, so R = 2 for every item.
#   AP = (1/R) sum_{i<=R} P@i * rel_i: flags 1 0 -> (1*1 + 0)/2 = 0.5; 0 0 -> 0; 0 1 -> (0 + 1/2)/2
MAP_AT_R = (0.5 + 0.5 + 0 + 0.25 + 0.5 + 0.5) / 6  # 0.375


def test_recall_and_acc_at_k_oracle():
    recall, acc = M.retrieval_metrics(LINE_X, LINE_Y, ks=(1, 2, 4, 8))
    assert list(recall) == [1, 2, 4]  # K = 8 > N - 1 = 5 is skipped
    assert recall == pytest.approx(RECALL)
    assert acc == pytest.approx(ACC)
    assert M.recall_at_k(LINE_X, LINE_Y, ks=(2,)) == pytest.approx({2: 5 / 6})
    assert M.acc_at_k(LINE_X, LINE_Y, ks=(4,)) == pytest.approx({4: 11 / 24})


def test_map_at_r_oracle():
    assert M.map_at_r(LINE_X, LINE_Y) == pytest.approx(MAP_AT_R)
    # A far-away item of its own label has R = 0: it is left out, and is last for everyone else.
    x = np.concatenate([LINE_X, [[50.0]]]).astype(np.float32)
    assert M.map_at_r(x, np.append(LINE_Y, 2)) == pytest.approx(MAP_AT_R)
    # Perfectly separated classes: every AP is 1.
    assert M.map_at_r(LINE_X, [0, 0, 0, 0, 1, 1]) == pytest.approx(1.0)
    assert math.isnan(M.map_at_r(LINE_X[:2], [0, 1]))


# Training points on a line: 0 1 2 | 10 11 12 | 5 with labels 0 0 0 | 1 1 1 | 2.
TRAIN_X = np.array([[0.0], [1.0], [2.0], [10.0], [11.0], [12.0], [5.0]], dtype=np.float32)
TRAIN_Y = np.array([0, 0, 0, 1, 1, 1, 2])
# k = 3:  1.4 -> 1, 2, 0 (labels 0 0 0) -> 0      10.6 -> 11, 10, 12 (1 1 1) -> 1
#         4.6 -> 5, 2, 1 (2 0 0) -> 0             7.4 -> 5, 10, 11 (2 1 1) -> 1
TEST_X = np.array([[1.4], [10.6], [4.6], [7.4]], dtype=np.float32)
TEST_Y = np.array([0, 1, 2, 2])  # predictions 0 1 0 1: two of four right


def test_knn_accuracy_and_proba_oracle():
    assert M.knn_accuracy(TRAIN_X, TRAIN_Y, TEST_X, TEST_Y, k=3) == pytest.approx(0.5)
    np.testing.assert_allclose(M.knn_predict_proba(TRAIN_X, TRAIN_Y, TEST_X, k=3),
                               [[1, 0, 0], [0, 1, 0], [2 / 3, 0, 1 / 3], [0, 2 / 3, 1 / 3]])


def test_knn_proba_at_several_k_is_each_k_from_one_search():
    # k = 1 by hand: 1.4 -> 1 (0), 10.6 -> 11 (1), 4.6 -> 5 (2), 7.4 -> 5 (2)
    shares = M.knn_predict_proba_at(TRAIN_X, TRAIN_Y, TEST_X, [3, 1, 3])
    assert sorted(shares) == [1, 3]
    np.testing.assert_array_equal(shares[1], [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1]])
    for k in (1, 3, 7):
        together = M.knn_predict_proba_at(TRAIN_X, TRAIN_Y, TEST_X, (1, 3, 7))[k]
        np.testing.assert_array_equal(together, M.knn_predict_proba(TRAIN_X, TRAIN_Y, TEST_X, k=k))
    with pytest.raises(ValueError, match="'ks' parameter of knn_predict_proba_at"):
        M.knn_predict_proba_at(TRAIN_X, TRAIN_Y, TEST_X, [])


def test_knn_tie_break():
    # k = 2 at 5.9: neighbours 5 (d 0.9, label 2) and 2 (d 3.9, label 0) -> one vote each.
    query = np.array([[5.9]], dtype=np.float32)
    np.testing.assert_allclose(M.knn_predict_proba(TRAIN_X, TRAIN_Y, query, k=2), [[0.5, 0, 0.5]])
    assert M.knn_predict(TRAIN_X, TRAIN_Y, query, k=2, tie_break="nearest").tolist() == [2]  # the nearest's class
    assert M.knn_predict(TRAIN_X, TRAIN_Y, query, k=2).tolist() == [0]  # default: lowest label, as sklearn
    # the default agrees with the argmax of the vote fractions (what a kNN method's predict returns)
    assert M.knn_predict(TRAIN_X, TRAIN_Y, query, k=2).tolist() == M.knn_predict_proba(
        TRAIN_X, TRAIN_Y, query, k=2).argmax(1).tolist()
    with pytest.raises(ValueError, match="'tie_break' parameter of knn_predict must be one of"):
        M.knn_predict(TRAIN_X, TRAIN_Y, query, k=2, tie_break="random")


def test_knn_matches_sklearn_with_lowest_label_ties():
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(5)
    train_x = rng.standard_normal((400, 6)).astype(np.float32)
    train_y = rng.integers(0, 5, 400)
    test_x = rng.standard_normal((150, 6)).astype(np.float32)
    sk = KNeighborsClassifier(n_neighbors=11, algorithm="brute").fit(train_x, train_y)
    np.testing.assert_allclose(M.knn_predict_proba(train_x, train_y, test_x, k=11),
                               sk.predict_proba(test_x))
    np.testing.assert_array_equal(M.knn_predict(train_x, train_y, test_x, k=11,
                                                tie_break="lowest_label"), sk.predict(test_x))


# ---------------------------------------------------------------------------------------------
# NMI and the bundled report
# ---------------------------------------------------------------------------------------------

def blobs(n_per_class: int, classes: int, dim: int, spread: float, seed: int):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim)) * 10
    y = np.repeat(np.arange(classes), n_per_class)
    return (centres[y] + spread * rng.standard_normal((len(y), dim))).astype(np.float32), y


def test_nmi_matches_sklearn_and_separated_clusters():
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    x, y = blobs(40, 4, 5, spread=1.0, seed=6)
    assert M.nmi(x, y, seed=0) == pytest.approx(1.0)  # well separated: clusters = classes
    x, y = blobs(40, 4, 5, spread=12.0, seed=7)  # overlapping
    clusters = KMeans(n_clusters=4, n_init=10, random_state=3).fit_predict(x)
    value = M.nmi(x, y, seed=3)
    assert value == pytest.approx(normalized_mutual_info_score(y, clusters))
    assert 0.0 < value < 1.0


def test_embedding_report():
    train_x, train_y = blobs(30, 3, 4, spread=1.0, seed=8)
    test_x, test_y = blobs(5, 3, 4, spread=1.0, seed=9)  # N = 15: K = 16, 32 are skipped
    report = M.embedding_report(train_x, train_y, test_x, test_y, seed=0)
    assert set(report) == {"recall@1", "recall@2", "recall@4", "recall@8", "acc@1", "acc@2",
                           "acc@4", "acc@8", "knn_acc", "nmi", "ami", "map@r", "r_precision"}
    assert all(isinstance(v, float) for v in report.values())
    assert report["recall@1"] == report["acc@1"]


def test_cross_check_pytorch_metric_learning():
    pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning.distances import LpDistance
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN

    x, y = blobs(60, 5, 8, spread=9.0, seed=10)  # overlapping classes, no lone labels
    calc = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r"),
                              k="max_bin_count", device=torch.device("cpu"),
                              knn_func=CustomKNN(LpDistance(normalize_embeddings=False)))
    pml = calc.get_accuracy(torch.from_numpy(x), torch.from_numpy(y))
    recall, acc = M.retrieval_metrics(x, y, ks=(1,))
    assert 0.2 < pml["precision_at_1"] < 0.95  # the check is not a trivial 1 = 1
    assert recall[1] == pytest.approx(pml["precision_at_1"], abs=1e-9)
    assert acc[1] == pytest.approx(pml["precision_at_1"], abs=1e-9)
    assert M.map_at_r(x, y) == pytest.approx(pml["mean_average_precision_at_r"], abs=1e-6)


def test_nmi_close_to_pytorch_metric_learning():
    # PML clusters with faiss k-means, another algorithm: compare loosely, on separated data.
    pytest.importorskip("pytorch_metric_learning")
    pytest.importorskip("faiss")
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    x, y = blobs(60, 5, 8, spread=3.0, seed=11)
    pml = AccuracyCalculator(include=("NMI",), device=torch.device("cpu")).get_accuracy(
        torch.from_numpy(x), torch.from_numpy(y))
    assert M.nmi(x, y) == pytest.approx(pml["NMI"], abs=0.05)


# ---------------------------------------------------------------------------------------------
# distributions
# ---------------------------------------------------------------------------------------------
P_REF = [[0.5, 0.5], [1.0, 0.0]]
Q_PRED = [[0.25, 0.75], [0.5, 0.5]]
# KL row 1: 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75) = 0.5 ln(4/3) = 0.1438410
# KL row 2: 1 ln(1/0.5) + 0 = ln 2 = 0.6931472                      mean 0.4184941
KL = 0.41849410839291784
# JS row 1: m = (.375, .625); KL(p||m) = 0.5 ln(16/15) = 0.0322693, KL(q||m) = .25 ln(2/3) + .75 ln 1.2
#           = 0.0353748; JS = 0.0338221.   JS row 2: m = (.75, .25); KL(p||m) = ln(4/3),
#           KL(q||m) = 0.5 ln(4/3); JS = 0.75 ln(4/3) = 0.2157616.         mean 0.1247918
JS = 0.12479181495372044


def test_kl_and_js_oracle():
    assert D.kl_divergence(P_REF, Q_PRED) == pytest.approx(KL, rel=1e-6)
    assert D.js_divergence(P_REF, Q_PRED) == pytest.approx(JS, rel=1e-6)
    # Rows are normalised: scaled inputs give the same values.
    assert D.kl_divergence(np.array(P_REF) * 7, np.array(Q_PRED) * 3) == pytest.approx(KL, rel=1e-6)
    assert D.js_divergence([[1, 0]], [[0, 1]]) == pytest.approx(math.log(2))  # disjoint: ln 2
    assert D.kl_divergence(P_REF, P_REF) == pytest.approx(0.0, abs=1e-7)  # eps floor: O(eps)
    assert np.isfinite(D.kl_divergence([[0.5, 0.5]], [[1.0, 0.0]]))  # q = 0 is floored at eps
    with pytest.raises(ValueError, match="'q_pred' parameter of kl_divergence"):
        D.kl_divergence(P_REF, [[-1.0, 2.0], [0.5, 0.5]])


# ---------------------------------------------------------------------------------------------
# cost helpers
# ---------------------------------------------------------------------------------------------

def test_parameter_count():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))  # 8 + 3 parameters
    model[0].bias.requires_grad_(False)
    assert C.parameter_count(model) == {"total": 11, "trainable": 9}


def test_peak_memory_is_in_bytes():
    pytest.importorskip("resource")
    try:
        with open("/proc/self/status") as status:
            rss_kib = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    except FileNotFoundError:
        pytest.skip("needs /proc (Linux)")
    peak = C.peak_memory_bytes("cpu")
    # The peak is at least about the current RSS (the kernel updates it lazily, hence 0.9); KiB
    # taken for bytes would be 1024 x too small.
    assert 0.9 * rss_kib * 1024 <= peak < 64 * 2**30


def test_inference_ms_per_image():
    sizes = []

    def fn(batch):
        sizes.append(len(batch))
        time.sleep(0.005)

    ms = C.inference_ms_per_image(fn, torch.zeros(11, 3), batch_size=5, repeats=2, warmup=1)
    assert sizes == [5] + [5, 5, 1] * 2  # one warm-up call, then two passes of three batches
    assert 15 / 11 <= ms < 15 / 11 * 3  # >= 3 sleeps of 5 ms per 11 images


# ---------------------------------------------------------------------------------------------
# issue #19: exact float64 order, ties by index, lone queries, NMI's k, R-precision and AMI,
# macro averages. Oracles: brute_knn (float64 distances, stable argsort), scikit-learn, and
# pytorch-metric-learning's AccuracyCalculator when it is installed.
# ---------------------------------------------------------------------------------------------

@pytest.fixture(params=["float32", "float64"])
def screen(request, monkeypatch):
    """Run a test with each precision of the neighbour screen (by default float64 only for large k)."""
    monkeypatch.setattr(N, "_WIDE_SCREEN", 0 if request.param == "float32" else 10 ** 9)
    return request.param


def inputs(kind: str, n: int = 300, seed: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """(x, y): "random" float32 normals; "tied" an integer grid (float32; many exact distance ties,
    and a mean that float32 cannot hold); "float64" 1000 + 1e-3 x (float32 would lose it)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 5, n)
    if kind == "random":
        x = (rng.standard_normal((n, 8)) + y[:, None] * 0.3).astype(np.float32)
    elif kind == "tied":
        x = (rng.integers(0, 4, (n, 5)) + (y[:, None] == np.arange(5))).astype(np.float32)
    elif kind == "float64":
        x = 1000 + 1e-3 * (rng.standard_normal((n, 8)) + y[:, None] * 0.3)
    else:
        raise ValueError(kind)
    y[-1] = 5  # a lone query: its class has no other member
    return x, y


def oracle_metrics(x: np.ndarray, y: np.ndarray, ks: tuple[int, ...]) -> dict[str, float]:
    """Recall@K, Acc@K, MAP@R and R-precision from brute_knn in plain Python loops, lone queries
    (no other member of their class) left out."""
    idx = brute_knn(x, x, len(x) - 1, exclude_self=True)
    out = {f"{name}@{k}": [] for name in ("recall", "acc") for k in ks}
    out |= {"map@r": [], "r_precision": []}
    for i in range(len(x)):
        r = int(np.sum(y == y[i])) - 1
        if r == 0:
            continue
        rel = [bool(y[j] == y[i]) for j in idx[i]]
        for k in ks:
            out[f"recall@{k}"].append(float(any(rel[:k])))
            out[f"acc@{k}"].append(sum(rel[:k]) / k)
        out["map@r"].append(sum(sum(rel[:n + 1]) / (n + 1) for n in range(r) if rel[n]) / r)
        out["r_precision"].append(sum(rel[:r]) / r)
    return {name: float(np.mean(values)) for name, values in out.items()}


@pytest.mark.parametrize("kind", ["random", "tied", "float64"])
def test_neighbours_and_retrieval_match_the_float64_oracle(kind, screen):
    # Items 1 and 2: the neighbour lists are those of the exact float64 distances with ties to
    # the smaller index (before #19: 10 % of rows agreed on "float64", 82 % on "tied").
    x, y = inputs(kind)
    for chunk in (4096, 37):
        np.testing.assert_array_equal(M.knn_indices(x, x, 20, exclude_self=True, chunk=chunk),
                                      brute_knn(x, x, 20, True))
    queries, gallery = x[:70], x[70:]
    np.testing.assert_array_equal(M.knn_indices(queries, gallery, 11, chunk=16),
                                  brute_knn(queries, gallery, 11, False))
    ks = (1, 2, 4, 8, 16)
    expected = oracle_metrics(x, y, ks)
    recall, acc = M.retrieval_metrics(x, y, ks)
    map_r, r_prec = M.map_and_r_precision(x, y)
    got = ({f"recall@{k}": v for k, v in recall.items()} | {f"acc@{k}": v for k, v in acc.items()}
           | {"map@r": map_r, "r_precision": r_prec})
    assert got == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("kind", ["random", "tied", "float64"])
def test_knn_accuracy_matches_the_float64_oracle(kind, screen):
    # Item 1's kNN accuracy: votes of the exact float64 neighbours, ties of votes to the lowest label.
    x, y = inputs(kind)
    train_x, train_y, test_x, test_y = x[100:], y[100:], x[:100], y[:100]
    nl = train_y[brute_knn(test_x, train_x, 11, False)]  # (100, 11)
    pred = np.array([np.bincount(row, minlength=6).argmax() for row in nl])
    got = M.knn_accuracy(train_x, train_y, test_x, test_y, k=11)
    assert got == pytest.approx(np.mean(pred == test_y))
    if kind == "random":  # no ties: scikit-learn's float64 brute force gives the same lists
        from sklearn.neighbors import NearestNeighbors

        x64 = x.astype(np.float64)
        sk = NearestNeighbors(n_neighbors=20, algorithm="brute").fit(x64)
        np.testing.assert_array_equal(M.knn_indices(x64, x64, 20, exclude_self=True),
                                      sk.kneighbors(return_distance=False))  # X=None: without self


def test_float64_embeddings_are_not_cast_to_float32():
    # Item 1, the audit's case: on 1000 + 1e-3 x a float32 cast keeps ~2 significant digits of x.
    rng = np.random.default_rng(21)
    x = 1000 + 1e-3 * rng.standard_normal((500, 16))
    got = M.knn_indices(x, x, 8, exclude_self=True)
    np.testing.assert_array_equal(got, brute_knn(x, x, 8, True))
    # torch float64 tensors too
    np.testing.assert_array_equal(M.knn_indices(torch.from_numpy(x), torch.from_numpy(x)[:5], 3),
                                  brute_knn(x, x[:5], 3, False))


def test_a_tie_group_larger_than_the_candidate_list(screen):
    # Item 2 at the K-th boundary: the query (row 0, the origin) has 40 neighbours at distance
    # exactly 1 (the +-e_i of R^20, in shuffled order), far more than the k + margin candidates
    # of the screen; the K = 5 nearest are the five smallest indices among them. A point at 1/3
    # makes the mean inexact in float32 (before #19 the centring split the tie group).
    rng = np.random.default_rng(22)
    units = np.concatenate([np.eye(20), -np.eye(20)])[rng.permutation(40)]
    far = 5 + rng.integers(0, 3, (30, 20))
    x = np.concatenate([np.zeros((1, 20)), units, far, np.full((1, 20), 1 / 3)])
    perm = np.concatenate([[0], 1 + rng.permutation(len(x) - 1)])
    x = x[perm]
    unit_rows = np.flatnonzero(np.abs(x).sum(axis=1) == 1)
    for data in (x, x.astype(np.float32)):
        got = M.knn_indices(data, data, 5, exclude_self=True)
        assert got[0].tolist() == sorted(unit_rows)[:5]
        np.testing.assert_array_equal(got, brute_knn(data, data, 5, True))
        assert M.knn_indices(data[:1], data, 6)[0].tolist() == [0] + sorted(unit_rows)[:5]


def test_lone_queries_are_left_out_of_every_retrieval_metric():
    # Item 3: one rule for Recall@K, Acc@K, MAP@R and R-precision. A far item of its own label
    # (a lone query) changes none of them; it is last for everyone else, so K <= 5 is unaffected.
    x = np.concatenate([LINE_X, [[50.0]]]).astype(np.float32)
    y = np.append(LINE_Y, 2)
    recall, acc = M.retrieval_metrics(x, y, ks=(1, 2, 4))
    assert recall == pytest.approx(RECALL)  # before #19: (4 + 0) / 7 at K = 1
    assert acc == pytest.approx(ACC)
    assert M.map_at_r(x, y) == pytest.approx(MAP_AT_R)
    assert M.r_precision(x, y) == pytest.approx(R_PRECISION)
    # Every query lone: no value is defined.
    recall, acc = M.retrieval_metrics(LINE_X, np.arange(6), ks=(1, 2))
    assert all(math.isnan(v) for v in [*recall.values(), *acc.values()])
    assert all(math.isnan(v) for v in M.map_and_r_precision(LINE_X, np.arange(6)))


def test_nmi_uses_the_classes_present():
    # Item 4: four well-separated classes of a five-class label space: k = 4 clusters find them
    # exactly (NMI 1); k = 5 (before #19) splits one and scores less.
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    x, y = blobs(40, 4, 5, spread=1.0, seed=23)
    assert M.nmi(x, y, seed=0) == pytest.approx(1.0)
    five = KMeans(n_clusters=5, n_init=10, random_state=0).fit_predict(x)
    assert normalized_mutual_info_score(y, five) < 0.99  # what k = 5 gave
    report = M.embedding_report(x, y, x, y, seed=0)
    assert report["nmi"] == pytest.approx(1.0) and report["ami"] == pytest.approx(1.0)


# R-precision on LINE_X / LINE_Y: R = 2; the first two flags per item (see MAP_AT_R above) are
# 1 0, 1 0, 0 0, 0 1, 1 0, 1 0 -> (1/2 + 1/2 + 0 + 1/2 + 1/2 + 1/2) / 6
R_PRECISION = 5 / 12


def test_r_precision_and_ami():
    # Item 5: R-precision beside MAP@R, AMI of the same k-means clustering as NMI; both in the report.
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

    assert M.r_precision(LINE_X, LINE_Y) == pytest.approx(R_PRECISION)
    assert M.map_and_r_precision(LINE_X, LINE_Y) == pytest.approx((MAP_AT_R, R_PRECISION))
    x, y = blobs(40, 4, 5, spread=12.0, seed=7)  # overlapping
    clusters = KMeans(n_clusters=4, n_init=10, random_state=3).fit_predict(x)
    nmi, ami = M.clustering_metrics(x, y, seed=3)
    assert nmi == pytest.approx(normalized_mutual_info_score(y, clusters))
    assert ami == pytest.approx(adjusted_mutual_info_score(y, clusters))
    assert M.ami(x, y, seed=3) == ami and 0.0 < ami < nmi < 1.0
    train_x, train_y = blobs(30, 3, 4, spread=1.0, seed=8)
    test_x, test_y = blobs(5, 3, 4, spread=6.0, seed=9)
    report = M.embedding_report(train_x, train_y, test_x, test_y, seed=0)
    assert report["r_precision"] == pytest.approx(M.r_precision(test_x, test_y))
    assert report["ami"] == pytest.approx(M.ami(test_x, test_y, seed=0))


def test_macro_scores_average_over_the_whole_label_space():
    # Item 6 (documentation; the behaviour is unchanged): macro P / R / F1, sgm_f1 and the report
    # average over all num_classes classes, absent ones included, as scikit-learn with
    # labels=range(num_classes); the docstrings say so.
    from sklearn import metrics as skm

    rng = np.random.default_rng(24)
    y_true = rng.integers(0, 6, 200)  # classes 6 and 7 absent from y_true
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, 7, 200))  # 7 never predicted
    p, r, f1, _ = skm.precision_recall_fscore_support(y_true, y_pred, labels=range(8),
                                                      average="macro", zero_division=0)
    report = M.classification_report(y_true, y_pred, 8)
    macro = (report["macro_precision"], report["macro_recall"], report["macro_f1"])
    assert macro == pytest.approx((p, r, f1))
    assert report["sgm_f1"] == pytest.approx(2 * p * r / (p + r)) == M.sgm_f1(y_true, y_pred, 8)
    for fn in (M.macro_precision_recall_f1, M.sgm_f1, M.classification_report):
        doc = " ".join(fn.__doc__.split())
        assert "all ``num_classes`` classes of the label space" in doc, fn.__name__


@pytest.mark.parametrize("kind", ["random", "tied", "float64"])
def test_cross_check_pytorch_metric_learning_with_lone_queries(kind):
    # Items 3 and 5 against AccuracyCalculator: Precision@1 (= our Recall@1 = Acc@1), R-precision
    # and MAP@R with a lone query in the set. PML casts embeddings to float32 and its own kNN
    # orders ties arbitrarily, so it is handed the exact float64 neighbours (brute_knn) on the
    # "tied" and "float64" inputs; on "random" it uses its own kNN.
    pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning.distances import LpDistance
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN

    x, y = inputs(kind)

    def exact_knn(query, k, reference, ref_includes_query):
        assert ref_includes_query
        idx = brute_knn(x, x, k, exclude_self=True)
        dist = np.take_along_axis(((x[:, None, :] - x[None]) ** 2).sum(axis=2), idx, axis=1)
        return torch.from_numpy(dist), torch.from_numpy(idx)

    knn_func = CustomKNN(LpDistance(normalize_embeddings=False)) if kind == "random" else exact_knn
    calc = AccuracyCalculator(
        include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
        k="max_bin_count", device=torch.device("cpu"), knn_func=knn_func)
    pml = calc.get_accuracy(torch.from_numpy(np.asarray(x, dtype=np.float32)), torch.from_numpy(y))
    recall, acc = M.retrieval_metrics(x, y, ks=(1,))
    map_r, r_prec = M.map_and_r_precision(x, y)
    assert recall[1] == pytest.approx(pml["precision_at_1"], abs=1e-12) == acc[1]
    assert r_prec == pytest.approx(pml["r_precision"], abs=1e-12)
    assert map_r == pytest.approx(pml["mean_average_precision_at_r"], abs=1e-12)


# ---------------------------------------------------------------------------------------------
# issue #23: the CPU screen (products a gallery block at a time, by oneDNN or numpy, a tree of
# maxima, passes over threads) gives the exact neighbours whatever the sizes, product and threads.
# ---------------------------------------------------------------------------------------------

def torch_screen(q_aug, g_aug, k1, exclude_self, chunk, rank, *pool_and_threads):
    """_cpu_passes replaced by the other devices' screen (torch.mm + topk), run on the CPU."""
    for start, cand, score in N._torch_candidates(q_aug, g_aug, k1, exclude_self, chunk,
                                                  torch.device("cpu")):
        yield start, rank(start, cand, score)


@pytest.fixture
def threads():
    """Restores torch's thread count after a test that changes it."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_largest_returns_a_top_k_set_despite_ties():
    rng = np.random.default_rng(30)
    values = rng.integers(0, 6, (200, 40)).astype(np.float32)  # many ties at every rank
    values[:50] = rng.standard_normal((50, 40))  # and rows without ties (the fast path)
    for k in (1, 7, 39, 40):
        top = N._largest(values, k)
        assert top.shape == (200, k)
        for row, cols in zip(values, top):
            assert len(set(cols.tolist())) == k
            rest = np.delete(row, cols)
            assert len(rest) == 0 or row[cols].min() >= rest.max()
    assert N._largest(values[:, :5], 9).shape == (200, 5)  # fewer columns than k: all of them


@pytest.mark.parametrize("fanout", [4, 8])
@pytest.mark.parametrize("onednn", [False, True])
@pytest.mark.parametrize("n_gallery", [5, 70, 1000, 5000])
def test_cpu_candidates_are_the_best_scores(n_gallery, onednn, fanout, monkeypatch):
    # Small integers: every score is exact in float32, so the k1 best are known exactly (up to
    # ties). Galleries from one partial block to several blocks, a selection among all items (no
    # tree) and trees of 2 to 4 levels; numpy's products and oneDNN's; 4 and 8 children per node.
    if onednn and not N._onednn_linear():
        pytest.skip("torch's oneDNN linear is not usable here")
    monkeypatch.setattr(N, "_FANOUT", fanout)
    rng = np.random.default_rng(31)
    g_aug = rng.integers(-4, 5, (n_gallery, 9)).astype(np.float32)
    q_aug = g_aug[:min(n_gallery, 300)].copy()
    exact = q_aug.astype(np.float64) @ g_aug.T.astype(np.float64)  # (Nq, Ng)
    heights = set()
    for exclude_self in (False, True):
        if exclude_self:
            exact[np.arange(len(q_aug)), np.arange(len(q_aug))] = -np.inf
        for k1 in {1, min(19, n_gallery - 1), min(40, n_gallery - 1)}:
            scratch = N._scratch(64, n_gallery, np.float32, k1)
            heights.add(len(scratch.nodes) - 1)
            for start in range(0, len(q_aug), 64):
                stop = min(start + 64, len(q_aug))
                cand, score = N._cpu_candidates(q_aug, g_aug, start, stop, k1, exclude_self, scratch,
                                                onednn)
                rows = np.arange(start, stop)[:, None]
                np.testing.assert_array_equal(score, exact[rows, cand])  # the scores of those items
                assert (np.diff(score, axis=1) <= 0).all()  # best first
                best = -np.sort(-exact[start:stop], axis=1)[:, :k1]
                np.testing.assert_array_equal(score, best)  # the k1 best values
                assert all(len(set(row)) == k1 for row in cand.tolist())
                if exclude_self:
                    assert not (cand == rows).any()
    expected = {4: {5: {0}, 70: {0}, 1000: {2}, 5000: {4}}, 8: {5: {0}, 70: {0}, 1000: {0, 2}, 5000: {3}}}
    assert heights == expected[fanout][n_gallery]


@pytest.mark.parametrize("onednn", [False, True])
@pytest.mark.parametrize("kind", ["random", "tied", "duplicates"])
def test_larger_galleries_match_the_float64_oracle(kind, onednn, threads, monkeypatch):
    # 3,000 items: two levels of the tree, several gallery blocks and passes, 1 and 2 threads,
    # numpy's products and (where torch has it) oneDNN's.
    if onednn and not N._onednn_linear():
        pytest.skip("torch's oneDNN linear is not usable here")
    monkeypatch.setattr(N, "_onednn_screen", lambda: onednn)
    rng = np.random.default_rng(32)
    n = 3000
    if kind == "random":
        x = (rng.standard_normal((n, 16)) + rng.integers(0, 4, (n, 1))).astype(np.float32)
    elif kind == "tied":
        x = rng.integers(-2, 3, (n, 6)).astype(np.float32)
    else:
        x = rng.standard_normal((n // 10, 12)).astype(np.float32)[rng.integers(0, n // 10, n)]
    expected_self = brute_knn(x, x, 33, True)
    expected_cross = brute_knn(x[:400], x[400:], 11, False)
    for n_threads, chunk in ((1, 4096), (2, 4096), (2, 300)):
        torch.set_num_threads(n_threads)
        np.testing.assert_array_equal(M.knn_indices(x, x, 33, exclude_self=True, chunk=chunk),
                                      expected_self)
        np.testing.assert_array_equal(M.knn_indices(x[:400], x[400:], 11, chunk=chunk),
                                      expected_cross)


@pytest.mark.parametrize("kind", ["random", "tied", "float64"])
def test_the_other_devices_screen_matches_the_float64_oracle(kind, screen, monkeypatch):
    # The torch.mm + topk screen (used on GPUs) on the CPU: the same exact neighbours.
    monkeypatch.setattr(N, "_cpu_passes", torch_screen)
    x, _ = inputs(kind)
    for chunk in (4096, 37):
        np.testing.assert_array_equal(M.knn_indices(x, x, 20, exclude_self=True, chunk=chunk),
                                      brute_knn(x, x, 20, True))
    np.testing.assert_array_equal(M.knn_indices(x[:70], x[70:], 11, chunk=16),
                                  brute_knn(x[:70], x[70:], 11, False))


def test_exact_distances_are_the_oracles_arithmetic():
    # _sq_distances computes each pair as the oracle does (float64 difference, square, numpy's
    # sum over the row), bit for bit: ties and near-ties are decided by the same values.
    rng = np.random.default_rng(33)
    for d in (3, 128, 513):
        q = rng.standard_normal((40, d)).astype(np.float32)
        g = (rng.standard_normal((50, d)) * 1e3).astype(np.float32)
        rows, cols = rng.integers(0, 40, 3000), rng.integers(0, 50, 3000)
        expected = ((q.astype(np.float64)[:, None, :] - g.astype(np.float64)[None]) ** 2).sum(axis=2)
        np.testing.assert_array_equal(N._sq_distances(q, g, rows, cols), expected[rows, cols])


def test_onednn_screens_only_with_avx512(monkeypatch):
    # With AVX2 kernels oneDNN's products are no faster than numpy's and cost a copy: numpy screens.
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert not N._onednn_screen()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert N._onednn_screen() == N._onednn_linear()


def test_onednn_is_used_only_for_plain_float32(monkeypatch):
    # A request for reduced-precision float32 maths (torch's setting, checked per search; the
    # environment, checked once) sends the CPU screen to numpy's products.
    used = []
    real = N._cpu_candidates

    def recording(*args):
        used.append(args[-1])
        return real(*args)

    monkeypatch.setattr(N, "_cpu_candidates", recording)
    x = np.random.default_rng(34).standard_normal((1000, 8)).astype(np.float32)  # float32 screen
    expected = brute_knn(x, x, 5, True)
    np.testing.assert_array_equal(M.knn_indices(x, x, 5, exclude_self=True), expected)
    assert set(used) == {N._onednn_screen()}
    used.clear()
    monkeypatch.setattr(N, "_unit_roundoff", lambda: 2.0 ** -11)  # as if TF32 were allowed
    np.testing.assert_array_equal(M.knn_indices(x, x, 5, exclude_self=True), expected)
    assert set(used) == {False}
    N._onednn_linear.cache_clear()
    monkeypatch.setenv("ONEDNN_DEFAULT_FPMATH_MODE", "BF16")
    try:
        assert not N._onednn_linear()
    finally:
        N._onednn_linear.cache_clear()
