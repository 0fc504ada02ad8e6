"""SCE-ALD: each equation against a hand-computed example, the epoch schedule, beta=1 = Baseline,
the amended-distribution scores, and the label-noise protocol."""
import math

import numpy as np
import pytest
import torch

import fer_bench_methods.baseline  # noqa: F401  (registers baseline)
import fer_bench_methods.sceald as S
from fer_bench.checks import toy_dataset
from fer_bench.data.noise import noisy_labels, transition_matrix

T = torch.tensor


# -- Eqs. 2 / 3 --------------------------------------------------------------------------------------

def test_cosine_relations_by_hand():
    out = S.cosine_relations(T([[1.0, 0.0], [1.0, 1.0]]), T([[1.0, 0.0], [0.0, 2.0]]))
    s = 1 / math.sqrt(2)
    torch.testing.assert_close(out, T([[1.0, 0.0], [s, s]]))


# -- Eq. 4 --------------------------------------------------------------------------------------------

def test_prototypes_with_and_without_weights():
    f = T([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]])
    y = T([0, 0, 1])
    alpha = T([1.0, 3.0, 2.0])
    # weighted mean: p0 = (1*[0,0] + 3*[2,0]) / 4, p1 = [0,4], empty class 2 -> 0
    torch.testing.assert_close(S.weighted_prototypes(f, y, alpha, 3), T([[1.5, 0.0], [0.0, 4.0], [0.0, 0.0]]))
    # the paper's literal Eq. 4 divides by n_k: p0 = [6,0] / 2, p1 = 2*[0,4] / 1
    torch.testing.assert_close(S.weighted_prototypes(f, y, alpha, 3, "literal"), T([[3.0, 0.0], [0.0, 8.0], [0.0, 0.0]]))
    # alpha = 1 (the paper's initialisation): plain class means, both modes
    ones = torch.ones(3)
    for mode in ("weighted_mean", "literal"):
        torch.testing.assert_close(S.weighted_prototypes(f, y, ones, 2, mode), T([[1.0, 0.0], [0.0, 4.0]]))
    with pytest.raises(ValueError, match="prototype norm"):
        S.weighted_prototypes(f, y, ones, 2, "median")


# -- Eq. 5 --------------------------------------------------------------------------------------------

def test_wasserstein_values_by_hand_and_against_scipy():
    from scipy.stats import wasserstein_distance
    a, b = T([[0.1, 0.5, 0.9]]), T([[0.9, 0.2, 0.3]])
    # sorted: [.1 .5 .9] vs [.2 .3 .9] -> |.1| + |.2| + 0, mean 0.1
    torch.testing.assert_close(S.wasserstein_values(a, b), T([0.1]))
    rng = np.random.default_rng(0)
    x, z = rng.uniform(-1, 1, (5, 7)), rng.uniform(-1, 1, (5, 7))
    ours = S.wasserstein_values(torch.from_numpy(x), torch.from_numpy(z)).numpy()
    np.testing.assert_allclose(ours, [wasserstein_distance(x[i], z[i]) for i in range(5)], atol=1e-12)
    # permutation-invariant: the literal reading ignores which class has which value
    torch.testing.assert_close(S.wasserstein_values(a, a.flip(1)), T([0.0]))


def test_wasserstein_class_aware_by_hand():
    pytest.importorskip("ot")
    ground2 = T([[0.0, 0.7], [0.7, 0.0]])
    # s = [1, -1] -> histogram [1, 0]; [-1, 1] -> [0, 1]: all mass moves at cost 0.7
    torch.testing.assert_close(S.wasserstein_class_aware(T([[1.0, -1.0]]), T([[-1.0, 1.0]]), ground2), T([0.7]))
    # s = [1, 0] -> [2/3, 1/3]; [0, 1] -> [1/3, 2/3]: 1/3 of the mass moves
    torch.testing.assert_close(S.wasserstein_class_aware(T([[1.0, 0.0]]), T([[0.0, 1.0]]), ground2), T([0.7 / 3]))
    # the ground metric matters: class 0 -> class 2 costs 2 (not 1, as the values reading would have it)
    ground3 = T([[0.0, 1.0, 2.0], [1.0, 0.0, 1.0], [2.0, 1.0, 0.0]])
    a, b = T([[1.0, -1.0, -1.0]]), T([[-1.0, -1.0, 1.0]])
    torch.testing.assert_close(S.wasserstein_class_aware(a, b, ground3), T([2.0]))
    torch.testing.assert_close(S.wasserstein_values(a, b), T([0.0]))
    torch.testing.assert_close(S.relation_histograms(T([[1.0, 0.0, -1.0]])), T([[2 / 3, 1 / 3, 0.0]]))


def test_confidence_by_hand():
    w = T([0.0, 0.999, 1.999])
    torch.testing.assert_close(S.confidences(w, eps=1e-3, alpha_max=1e3), T([1000.0, 1.0, 0.5]))
    torch.testing.assert_close(S.confidences(w, eps=1e-3, alpha_max=100.0), T([100.0, 1.0, 0.5]))


# -- Eq. 6 --------------------------------------------------------------------------------------------

def test_label_distribution_by_hand():
    # d^2 = [1, 4] -> 1/d^2 = [1, .25] -> [.8, .2]; a point on a prototype takes (almost) all the mass
    out = S.amended_distribution(T([[0.0, 0.0], [1.0, 0.0]]), T([[1.0, 0.0], [0.0, 2.0]]), eps=1e-8)
    torch.testing.assert_close(out[0], T([0.8, 0.2]))
    assert out[1, 0] > 1 - 1e-6
    torch.testing.assert_close(out.sum(1), T([1.0, 1.0]))


# -- Eq. 7 and Eq. 1 ----------------------------------------------------------------------------------

def test_mixed_loss_by_hand():
    logits = T([[0.0, math.log(3.0)]])                                  # softmax [.25, .75]
    y = T([0])
    dist = T([[0.5, 0.5]])
    ce = math.log(4.0)
    soft = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))
    assert S.mixed_loss(logits, y, dist, 0.7).item() == pytest.approx(0.7 * ce + 0.3 * soft, rel=1e-6)
    assert S.mixed_loss(logits, y, None, 0.7).item() == pytest.approx(ce, rel=1e-6)
    assert S.mixed_loss(logits, y, dist, 1.0).item() == pytest.approx(ce, rel=1e-6)
    assert S.mixed_loss(logits, y, dist, 0.0).item() == pytest.approx(soft, rel=1e-6)


def test_semantic_loss_by_hand():
    x = torch.zeros(1, 1, 1, 2)
    x_hat = T([[[[1.0, 3.0]]]])                                         # per-pixel mean (1 + 9) / 2 = 5
    g, v = T([[1.0, 0.0]]), T([[0.0, 1.0]])                              # cos 0 -> 1 - cos = 1
    assert S.semantic_loss(x, x_hat, g, v, 0.5).item() == pytest.approx(5.5)
    assert S.semantic_loss(x, x_hat, g, 2 * g, 0.5).item() == pytest.approx(5.0)


# -- the method ---------------------------------------------------------------------------------------

def test_schedule_first_ld_epoch():
    assert S.SCEALD(epochs=40, ld_start=0.225).first_ld_epoch() == 9      # the paper's 10th epoch
    assert S.SCEALD(epochs=10, ld_start=0.0).first_ld_epoch() == 0


@pytest.fixture(scope="module")
def fitted_noisy():
    train = toy_dataset(n=96, size=24, num_classes=3)
    noisy = noisy_labels(train.labels, 3, 0.3, "symmetric", seed=1)
    clean = train.labels
    train = train.with_labels(noisy, "noise")
    train.meta["clean_labels"] = clean
    params = S.SCEALD.resolve_params("test", overrides={"device": "cpu", "backbone": "smallcnn_tiny"})
    return S.SCEALD(**params).fit(train), train


def test_fitted_state_is_consistent(fitted_noisy):
    method, train = fitted_noisy
    n, c = len(train), 3
    assert method.label_distributions_.shape == (n, c) and method.confidences_.shape == (n,)
    torch.testing.assert_close(method.label_distributions_.sum(1), torch.ones(n))
    assert method.semantic_relations_.shape == (n, c) and method.word_vectors_.shape[0] == c
    assert len(method.amend_history_) == 2                                  # passes after epochs 1 and 2
    # the last pass ran on the final model: Eq. 6 on fresh features reproduces the stored distributions
    ld, alpha = method.amend(train.images)
    np.testing.assert_allclose(ld, method.label_distributions_.numpy(), atol=1e-5)
    assert alpha.shape == (n,) and np.all(alpha > 0) and np.all(alpha <= method.alpha_max)


def test_extra_results_report_noise_recovery(fitted_noisy, tmp_path):
    method, train = fitted_noisy
    test = toy_dataset(n=30, size=24, num_classes=3, split="test")
    out = method.extra_results(tmp_path, train, test)
    assert 0.2 < out["noise_rate_seen"] < 0.4
    for key in ("noisy_recovered_top1", "noisy_recovered_top2", "alpha_auc_clean_vs_noisy"):
        assert 0.0 <= out[key] <= 1.0
    assert out["noisy_recovered_top2"] >= out["noisy_recovered_top1"]
    for name in ("word_cosines.png", "test_label_distributions.png", "train_amended_dist.npy", "test_alpha.npy"):
        assert (tmp_path / name).is_file()


def test_amend_summary_by_hand():
    ld = np.array([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4]])
    used, clean = np.array([0, 0, 1]), np.array([0, 1, 0])             # rows 1 and 2 are noisy
    alpha = np.array([3.0, 1.0, 2.0])
    truth = np.array([[0.9, 0.1], [0.5, 0.5], [0.6, 0.4]])
    out = S.amend_summary(ld, alpha, used, clean, truth)
    assert out["noise_rate_seen"] == pytest.approx(2 / 3)
    assert out["noisy_recovered_top1"] == 1.0                             # argmax [0, 1, 0] = clean on rows 1, 2
    assert out["alpha_clean_mean"] == 3.0 and out["alpha_noisy_mean"] == 1.5
    assert out["alpha_auc_clean_vs_noisy"] == 1.0
    kl = np.mean([0.9 * np.log(0.9 / 0.7) + 0.1 * np.log(0.1 / 0.3), 0.5 * np.log(0.5 / 0.2) + 0.5 * np.log(0.5 / 0.8), 0.0])
    assert out["ld_kl_to_truth"] == pytest.approx(kl, rel=1e-6)
    assert out["ld_top1_agrees_truth"] == pytest.approx(2 / 3)            # row 1: truth tie -> argmax 0, ld says 1


def test_beta_one_is_the_baseline(toy):
    train, test = toy
    common = {"epochs": 1, "image_size": 24, "batch_size": 64, "device": "cpu", "backbone": "smallcnn_tiny"}
    base = fer_bench_methods.baseline.Baseline(**common).fit(train).predict_proba(test)
    ours = S.SCEALD(**common, beta=1.0, ae_epochs=1, ae_backbone="smallcnn_tiny").fit(train).predict_proba(test)
    np.testing.assert_array_equal(base, ours)


# -- the label-noise protocol -------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["symmetric", "pairflip", "asymmetric"])
def test_noise_exact_rate_never_true_class_deterministic(kind):
    labels = np.arange(1000) % 7
    confusion = np.ones((7, 7)) if kind == "asymmetric" else None
    noisy = noisy_labels(labels, 7, 0.2, kind, seed=5, confusion=confusion, exact=True)
    assert (noisy != labels).sum() == 200                                 # exact count: no flip lands on y
    assert np.array_equal(noisy, noisy_labels(labels, 7, 0.2, kind, seed=5, confusion=confusion, exact=True))
    assert not np.array_equal(noisy, noisy_labels(labels, 7, 0.2, kind, seed=6, confusion=confusion, exact=True))
    assert noisy.min() >= 0 and noisy.max() < 7


def test_asymmetric_noise_follows_the_confusion_matrix():
    c = 4
    confusion = np.zeros((c, c))
    confusion[0, 1] = 1.0                                                 # 0 -> 1 only
    confusion[1, 2], confusion[1, 3] = 3.0, 1.0                           # 1 -> 2 three times as often as -> 3
    confusion[2, 2] = 5.0                                                 # only the diagonal: class 2 keeps its labels
    confusion[3, 0] = 1.0
    labels = np.arange(40000) % c
    noisy = noisy_labels(labels, c, 0.4, "asymmetric", seed=0, confusion=confusion)
    empirical = np.zeros((c, c))
    np.add.at(empirical, (labels, noisy), 1)
    empirical /= empirical.sum(1, keepdims=True)
    np.testing.assert_allclose(empirical, transition_matrix(0.4, c, "asymmetric", confusion), atol=0.015)
    assert np.all(noisy[labels == 2] == 2)
    with pytest.raises(ValueError, match="needs a confusion matrix"):
        noisy_labels(labels, c, 0.4, "asymmetric")


def test_runner_noise_touches_train_only(tmp_path):
    from fer_bench.runner import expand_grid, load_splits, run_cell
    import fer_bench_methods.majority  # noqa: F401
    spec = expand_grid(["majority"], ["synthetic:n_train=80,n_val=20,n_test=30,size=32"], [0], [0.3], "test", {},
                       "cpu")[0]
    result = run_cell(spec, tmp_path)
    train, _, test = load_splits(spec)
    expected = noisy_labels(train.labels, train.num_classes, 0.3, "symmetric", 0)
    from fer_bench.data.noise import labels_hash
    assert result.info["noisy_labels_hash"] == labels_hash(expected)
    assert np.array_equal(np.load(tmp_path / "test_labels.npy"), test.labels)   # test labels are the clean ones
