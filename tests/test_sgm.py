"""SGMLoss, the triplet baseline, their samplers, the DGMS split and the kNN classifier (methods/sgm/).

Losses are checked against plain-Python oracles (values and finite-difference gradients), the
samplers by their exact counts, the classifier against fer_bench.metrics.
"""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from fer_bench import metrics as M
from fer_bench.checks import toy_dataset
from fer_bench.method import Method
from fer_bench_methods.sgm import (SGM, batch_all_triplet_loss, gmm_split, n_per_class_batches, random_triplets, sgm_loss,
                                   triplet_loss)
from fer_bench_methods.sgm.dgms import DGMS, within_class_nmi


# -- oracles --------------------------------------------------------------------------------------

def sgm_oracle(z: list[list[float]], y: list[int], sigma: float, lam: float) -> float:
    """Eq. 1-4 and Alg. 1 with loops and the literal exp of Eq. 3 (the Gaussian constant cancels)."""
    classes = sorted(set(y))
    d = len(z[0])
    mu = {c: [sum(z[i][k] for i in range(len(z)) if y[i] == c) / y.count(c) for k in range(d)] for c in classes}
    total = 0.0
    for i in range(len(z)):
        lik = {c: math.exp(-sum((z[i][k] - mu[c][k]) ** 2 for k in range(d)) / (2 * sigma ** 2)) for c in classes}
        norm = sum(lik.values())
        total += sum((lik[c] / norm - (1.0 if y[i] == c else 0.0)) ** 2 for c in classes)
    reg = sum(math.sqrt(sum(v * v for v in row)) for row in z) / len(z)
    return total / len(z) + lam * reg


def triplet_oracle(a, p, n, margin: float, lam: float, eps: float = 1e-6) -> float:
    def dist(u, v):  # torch.pairwise_distance: ||u - v + eps||
        return math.sqrt(sum((x - w + eps) ** 2 for x, w in zip(u, v)))

    def fro(m):
        return math.sqrt(sum(x * x for row in m for x in row))

    hinge = sum(max(0.0, dist(ai, pi) - dist(ai, ni) + margin) for ai, pi, ni in zip(a, p, n)) / len(a)
    return hinge + lam * (fro(a) + fro(p) + fro(n))


def numeric_grad(fn, z: list[list[float]], h: float = 1e-6) -> np.ndarray:
    g = np.zeros((len(z), len(z[0])))
    for i in range(len(z)):
        for k in range(len(z[0])):
            up = [row[:] for row in z]
            down = [row[:] for row in z]
            up[i][k] += h
            down[i][k] -= h
            g[i, k] = (fn(up) - fn(down)) / (2 * h)
    return g


# -- the SGM loss ---------------------------------------------------------------------------------

def test_sgm_loss_matches_the_python_oracle_values_and_gradients():
    rng = np.random.default_rng(0)
    z = rng.normal(scale=0.6, size=(7, 3))
    y = [0, 1, 2, 0, 1, 2, 2]
    zt = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    loss = sgm_loss(zt, torch.tensor(y), sigma=0.5, reg_lambda=0.1)
    loss.backward()
    assert loss.item() == pytest.approx(sgm_oracle(z.tolist(), y, 0.5, 0.1), rel=1e-10)
    expected = numeric_grad(lambda m: sgm_oracle(m, y, 0.5, 0.1), z.tolist())
    np.testing.assert_allclose(zt.grad.numpy(), expected, atol=1e-7)
    # float32 agrees with the float64 value
    assert sgm_loss(zt.float(), torch.tensor(y), 0.5, 0.1).item() == pytest.approx(loss.item(), rel=1e-5)


def test_sgm_loss_uses_only_the_classes_present_in_the_batch():
    z = torch.tensor([[0.0, 0.0], [0.1, 0.0], [2.0, 2.0], [2.1, 2.0]])
    a = sgm_loss(z, torch.tensor([0, 0, 5, 5]), 0.5, 0.0)
    b = sgm_loss(z, torch.tensor([1, 1, 2, 2]), 0.5, 0.0)
    assert a.item() == pytest.approx(b.item())


def test_sgm_loss_of_well_separated_clusters_is_near_zero():
    centres = torch.eye(4) * 10.0                                       # classes 10 apart, sigma 0.5
    z = centres.repeat_interleave(5, 0) + 0.01 * torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
    y = torch.arange(4).repeat_interleave(5)
    assert sgm_loss(z, y, 0.5, 0.0).item() < 1e-12
    # the regulariser alone is then lambda x the mean norm
    assert sgm_loss(z, y, 0.5, 1e-3).item() == pytest.approx(1e-3 * z.norm(dim=1).mean().item(), rel=1e-6)
    # overlapping clusters are not near zero
    assert sgm_loss(0.01 * z, y, 0.5, 0.0).item() > 0.1


def test_sgm_loss_survives_float32_underflow_where_the_literal_form_dies():
    # 1-D: sample 0 (class 0) sits at d^2 = 60 from mu_0 and 61 from mu_1, so both exp(-d^2 / 2 sigma^2)
    # = exp(-120), exp(-122) underflow to 0 in float32, although its posterior is a plain (0.88, 0.12).
    s = 8.6066
    q = s + math.sqrt(61.0)
    z = torch.tensor([[s]] + [[0.0]] * 9 + [[q]] * 10, requires_grad=True)
    y = torch.tensor([0] * 10 + [1] * 10)
    mu = torch.stack([z[:10].mean(0), z[10:].mean(0)])
    literal = torch.exp(-torch.cdist(z, mu).pow(2) / (2 * 0.5 ** 2))   # (20, 2), float32
    assert literal[0].sum().item() == 0.0                              # the paper's ratio is 0/0 for sample 0
    loss = sgm_loss(z, y, 0.5, 0.0)
    loss.backward()
    zd = z.detach().double().tolist()
    assert loss.item() == pytest.approx(sgm_oracle(zd, y.tolist(), 0.5, 0.0), rel=1e-4)
    expected = numeric_grad(lambda m: sgm_oracle(m, y.tolist(), 0.5, 0.0), zd)
    assert abs(expected[0, 0]) > 1e-3                                  # a live sample, not a dead one
    np.testing.assert_allclose(z.grad.numpy(), expected, rtol=1e-3, atol=1e-5)


# -- samplers -------------------------------------------------------------------------------------

def test_n_per_class_batches_have_exact_counts_and_cover_every_item():
    labels = np.array([0] * 50 + [1] * 7 + [2] * 23)
    batches = list(n_per_class_batches(labels, 10, torch.Generator().manual_seed(0), num_batches=5))
    assert len(batches) == 5
    for b in batches:
        assert b.shape == (30,)
        assert np.array_equal(np.bincount(labels[b.numpy()], minlength=3), [10, 10, 10])
    used = np.concatenate([b.numpy() for b in batches])
    assert set(np.flatnonzero(labels == 0)) == set(used[labels[used] == 0])   # 50 draws cover all 50
    assert set(np.flatnonzero(labels == 1)) <= set(used)                       # the small class repeats
    default = list(n_per_class_batches(labels, 10, torch.Generator().manual_seed(0)))
    assert len(default) == len(labels) // 30
    again = list(n_per_class_batches(labels, 10, torch.Generator().manual_seed(0)))
    assert all(torch.equal(a, b) for a, b in zip(default, again))


def test_random_triplets_are_valid_and_balanced():
    labels = np.array([0] * 40 + [1] * 5 + [2] * 15)
    t = random_triplets(labels, 99, torch.Generator().manual_seed(1)).numpy()
    assert t.shape == (99, 3)
    a, p, n = labels[t[:, 0]], labels[t[:, 1]], labels[t[:, 2]]
    assert np.array_equal(a, p) and np.all(a != n) and np.all(t[:, 0] != t[:, 1])
    assert np.array_equal(np.bincount(a, minlength=3), [33, 33, 33])


def test_triplet_loss_matches_the_python_oracle():
    rng = np.random.default_rng(2)
    a, p, n = (rng.normal(size=(6, 4)) for _ in range(3))
    n[0] = a[0] + 5.0                                                   # one inactive triplet
    ta, tp, tn = (torch.tensor(m, dtype=torch.float64, requires_grad=True) for m in (a, p, n))
    loss = triplet_loss(ta, tp, tn, margin=1.0, reg_lambda=1e-3)
    loss.backward()
    assert loss.item() == pytest.approx(triplet_oracle(a.tolist(), p.tolist(), n.tolist(), 1.0, 1e-3), rel=1e-10)
    expected = numeric_grad(lambda m: triplet_oracle(m, p.tolist(), n.tolist(), 1.0, 1e-3), a.tolist())
    np.testing.assert_allclose(ta.grad.numpy(), expected, atol=1e-6)


# -- DGMS split -----------------------------------------------------------------------------------

def test_batch_all_triplet_loss_matches_a_python_loop_over_every_valid_triplet():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(12, 5, generator=g, dtype=torch.float64) * 0.6
    y = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2, 0, 2, 1])
    hinges = []
    for a in range(12):
        for p in range(12):
            for n in range(12):
                if a != p and y[a] == y[p] and y[n] != y[a]:
                    h = max(0.0, float((z[a] - z[p]).norm() - (z[a] - z[n]).norm()) + 0.8)
                    hinges.append(h)
    positive = [h for h in hinges if h > 0]
    expected = sum(positive) / len(positive) + 1e-3 * float(z.norm())
    assert batch_all_triplet_loss(z, y, margin=0.8, reg_lambda=1e-3).item() == pytest.approx(expected, rel=1e-5)
    far = torch.cat([torch.zeros(4, 5), torch.full((4, 5), 10.0)])             # two far-apart point clusters
    assert batch_all_triplet_loss(far, torch.tensor([0] * 4 + [1] * 4), 1.0, 0.0).item() == 0.0


def test_gmm_split_gives_the_expected_number_of_subclasses():
    rng = np.random.default_rng(0)
    blobs = np.array([[0, 0], [8, 0], [0, 8]], dtype=float)
    z = np.concatenate([blobs[i % 3] + 0.3 * rng.normal(size=(1, 2)) for i in range(120)])   # 3 blobs per class
    labels = np.repeat([0, 1], 60)
    z[labels == 1] += 50.0
    sub, parent = gmm_split(z, labels, level=3, mc=10)
    assert np.array_equal(parent, [0, 0, 0, 1, 1, 1])
    assert set(sub) == set(range(6)) and np.all(parent[sub] == labels)
    blob = np.arange(120) % 3
    assert within_class_nmi(sub, blob, labels) == pytest.approx(1.0)   # the blobs are found exactly
    # level caps the count, and so does n_c // mc
    assert len(gmm_split(z, labels, level=2, mc=10)[1]) == 4
    small = np.repeat([0, 1], [25, 95])
    assert np.array_equal(gmm_split(z, small, level=5, mc=10)[1], [0, 0, 1, 1, 1, 1, 1])
    assert len(gmm_split(z, labels, level=1, mc=10)[1]) == 2


# -- fitted methods -------------------------------------------------------------------------------

def _toy(n: int, split: str, size: int = 16):
    return toy_dataset(n=n, size=size, num_classes=3, split=split)


def test_sgm_classifiers_match_the_metric_module(tmp_path):
    train, test = _toy(72, "train"), _toy(24, "test")
    m = SGM(device="cpu", epochs=1, image_size=16, n_per_class=6, eval_batch_size=128, knn_k=5).fit(train)
    gallery = m.embed(train)
    assert np.allclose(m.gallery_emb_.numpy(), gallery, atol=1e-6)
    emb = m.embed(test)
    assert np.array_equal(m.predict_proba(test), M.knn_predict_proba(gallery, train.labels, emb, k=5, num_classes=3)
                          .astype(np.float32))
    m.classifier = "gaussian"
    means = np.stack([gallery[train.labels == c].mean(0) for c in range(3)])
    nearest = ((emb[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    proba = m.predict_proba(test)
    assert np.allclose(proba.sum(1), 1.0, atol=1e-5) and np.array_equal(proba.argmax(1), nearest)
    loaded = Method.load(m.save(tmp_path / "sgm"))
    assert np.array_equal(loaded.gallery_labels_.numpy(), train.labels)
    assert np.allclose(loaded.predict_proba(test), proba, atol=1e-6)
    # Recall@K / Acc@K of these embeddings, the metric module against a brute-force loop
    recall, acc = M.retrieval_metrics(emb, test.labels, ks=(1, 2, 4))
    d = ((emb[:, None, :] - emb[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    order = np.argsort(d, axis=1, kind="stable")
    for k in (1, 2, 4):
        same = test.labels[order[:, :k]] == test.labels[:, None]
        assert recall[k] == pytest.approx(same.any(1).mean()) and acc[k] == pytest.approx(same.mean())
    extra = m.extra_results(tmp_path / "extra", train, test)
    knn5 = M.knn_predict(gallery, train.labels, emb, k=5, tie_break="lowest_label")
    assert extra["knn_f1@5"] == pytest.approx(M.sgm_f1(test.labels, knn5, 3))
    assert extra["ncm_acc"] == pytest.approx(float((nearest == test.labels).mean()))


def test_dgms_splits_classes_and_scores_subclasses_against_a_known_factor(tmp_path):
    train, test = _toy(96, "train"), _toy(24, "test")
    for data in (train, test):   # a made-up sub-class factor, as the synthetic dataset's "variant"
        data.factors = pd.DataFrame({"variant": np.arange(len(data)) % 2,
                                     "variant_name": np.where(np.arange(len(data)) % 2, "b", "a")})
    m = DGMS(device="cpu", epochs=3, image_size=16, n_per_class=6, eval_batch_size=128, levels=3, mc=10,
             gmm_covariance="diag").fit(train)
    assert len(m.parent_) == 9 and np.array_equal(np.bincount(m.parent_.numpy()), [3, 3, 3])
    assert np.all(m.parent_.numpy()[m.subclass_labels_.numpy()] == train.labels)
    extra = m.extra_results(tmp_path, train, test)
    assert extra["dgms_subclasses"] == 9.0
    assert 0.0 <= extra["dgms_variant_nmi_test"] <= 1.0
    assert (tmp_path / "dgms_top16.png").is_file() and (tmp_path / "dgms_embedding_subclasses.png").is_file()
    test_sub = np.load(tmp_path / "test_subclass.npy")
    assert np.all(m.parent_.numpy()[test_sub] == test.labels)
    assert m.predict_proba(test).shape == (24, 3)


def test_init_spread_rescales_the_embedding_layer_to_the_asked_spread_and_leaves_batchnorm_alone():
    from fer_bench.models import build_backbone
    from fer_bench_methods.sgm import EmbeddingNet, scale_to_spread

    torch.manual_seed(0)
    net = EmbeddingNet(build_backbone("smallcnn", pretrained=None, in_size=24), 16)
    x = torch.randn(64, 3, 24, 24) * 3.0
    stats = {k: v.clone() for k, v in net.named_buffers()}
    factor = scale_to_spread(net, x, sigma=0.5, target=16.0)
    assert all(torch.equal(v, stats[k]) for k, v in net.named_buffers())            # running stats restored
    net.train()
    with torch.no_grad():
        z = net(x)
    spread = torch.cdist(z, z).pow(2).mean() / (2 * 0.5 ** 2)
    assert spread.item() == pytest.approx(16.0, rel=1e-4) and factor != pytest.approx(1.0, abs=1e-3)


def test_sgm_with_init_spread_fits_and_reports_its_factor():
    train, test = toy_dataset(n=48, size=24), toy_dataset(n=24, size=24, split="test")
    method = SGM(**SGM.resolve_params("test", None, {"init_spread": 8.0, "device": "cpu"})).fit(train)
    assert method.spread_scale_ > 0 and method.predict(test).shape == (len(test),)
