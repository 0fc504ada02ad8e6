"""Siamese 2-D contrastive network: the loss against a hand-computed oracle, the two-stage freeze, a tiny fit."""
import itertools
import math

import numpy as np
import pytest
import torch

import fer_bench_methods.siamese  # noqa: F401  (registers "siamese")
from fer_bench.checks import toy_dataset
from fer_bench.method import ParameterError
from fer_bench.registry import get_method
from fer_bench_methods.siamese import all_pairs_loss, contrastive_loss


def _grads(g1, g2, same, margin=1.0):
    a = torch.tensor(g1, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(g2, dtype=torch.float64, requires_grad=True)
    loss = contrastive_loss(a, b, torch.tensor(same), margin)
    loss.backward()
    return float(loss.detach()), a.grad.numpy(), b.grad.numpy()


def test_loss_oracle_values_and_gradients():
    # four pairs, g1 at the origin: same near (D=0.5), different inside the margin (D=0.5),
    # different outside the margin (D=2), same far (D=2). Hand-computed per pair:
    #   same:      L = 1/2 D^2                 dL/dg1 = (g1 - g2)
    #   different: L = 1/2 (m - D)^2 if D < m  dL/dg1 = -(m - D) (g1 - g2) / D, else 0
    g1 = [[0.0, 0.0]] * 4
    g2 = [[0.3, 0.4], [0.3, 0.4], [1.2, 1.6], [1.2, 1.6]]
    same = [True, False, False, True]
    loss, d1, d2 = _grads(g1, g2, same)
    per_pair = [0.5 * 0.25, 0.5 * 0.5 ** 2, 0.0, 0.5 * 4.0]
    assert loss == pytest.approx(sum(per_pair) / 4)                      # averaged over pairs (Caffe: sum / 2N)
    expected = np.array([[-0.3, -0.4], [0.5 * 0.3 / 0.5, 0.5 * 0.4 / 0.5], [0.0, 0.0], [-1.2, -1.6]]) / 4
    assert d1 == pytest.approx(expected, abs=1e-9)
    assert d2 == pytest.approx(-expected, abs=1e-9)                     # equal and opposite
    # the margin scales the hinge: m = 3 puts the far different pair inside it
    loss3, g3, _ = _grads([[0.0, 0.0]], [[1.2, 1.6]], [False], margin=3.0)
    assert loss3 == pytest.approx(0.5 * 1.0 ** 2) and g3[0] == pytest.approx([1.0 * 1.2 / 2, 1.0 * 1.6 / 2])


def test_loss_gradient_finite_at_zero_distance():
    loss, d1, _ = _grads([[1.0, 1.0]], [[1.0, 1.0]], [False])
    assert loss == pytest.approx(0.5, abs=1e-5) and np.all(np.isfinite(d1))


def test_all_pairs_loss_equals_a_python_loop():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(9, 2, generator=gen, dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 2, 1, 0, 2, 2, 1])
    terms = []
    for i, j in itertools.combinations(range(9), 2):
        d = math.dist(z[i].tolist(), z[j].tolist())
        terms.append(0.5 * d * d if y[i] == y[j] else 0.5 * max(0.0, 1.0 - d) ** 2)
    assert float(all_pairs_loss(z, y)) == pytest.approx(sum(terms) / len(terms))


def test_frozen_stage_leaves_the_trunk_without_gradient():
    cls = get_method("siamese")
    m = cls(**{**cls.resolve_params("test"), "device": "cpu"})
    net = m.build(3)
    x = torch.randn(4, 3, 32, 32)
    net.train()
    net(x).sum().backward()
    assert all(p.grad is None for p in net.trunk.parameters())            # stage 1: SGD skips them
    assert all(p.grad is not None for p in net.head.parameters())
    assert all(p.requires_grad for p in net.parameters())                 # the optimiser holds them all
    net.finetune.fill_(True)
    net(x).sum().backward()
    assert all(p.grad is not None for p in net.trunk.parameters())        # stage 2: fine-tuned
    assert "finetune" in net.state_dict()                                  # checkpointed with the weights


def test_fit_two_stages_snapshots_and_figures(tmp_path):
    cls = get_method("siamese")
    train, test = toy_dataset(), toy_dataset(n=30, split="test")
    m = cls(**{**cls.resolve_params("test"), "device": "cpu", "epochs": 3, "freeze_epochs": 2}).fit(train)
    trunk = m.model_.trunk[0].weight.detach().clone()
    assert bool(m.model_.finetune)
    assert m.embed(test).shape == (30, 2)
    labels = [s[0] for s in m.snapshots_]
    assert labels[0] == "start" and "epoch 2 (end of frozen stage)" in labels
    out = m.extra_results(tmp_path, train, test)
    assert out["siamese_same_pair_fraction"] == pytest.approx(1 / 3, abs=0.05)  # natural ratio, 3 balanced classes
    assert {p.name for p in tmp_path.iterdir()} >= {"siamese_training_snapshots.png", "siamese_test_2d.png",
                                                     "siamese_train_2d.png", "siamese_snapshots.npz"}
    # nearest-centroid prediction in the 2-D space
    emb = m.embed(test)
    gallery, labels = m.gallery_emb_.numpy(), m.gallery_labels_.numpy()
    centroids = np.stack([gallery[labels == c].mean(0) for c in range(3)])   # the training-class centroids
    nearest = np.linalg.norm(emb[:, None] - centroids[None], axis=-1).argmin(1)
    assert np.array_equal(m.predict(test), nearest)
    assert torch.equal(trunk, m.model_.trunk[0].weight)


def test_frozen_only_run_keeps_the_trunk_fixed():
    cls = get_method("siamese")
    m = cls(**{**cls.resolve_params("test"), "device": "cpu", "epochs": 1, "freeze_epochs": 1})
    torch.manual_seed(0)
    before = m.build(3).trunk[0].weight.detach().clone()   # build() under seed 0, as fit does
    m.fit(toy_dataset())
    assert torch.equal(before, m.model_.trunk[0].weight.detach())


def test_sampled_pairs_follow_the_same_fraction_and_knn_option():
    cls = get_method("siamese")
    params = {**cls.resolve_params("test"), "device": "cpu", "pairs": "sampled", "same_fraction": 1.0,
              "classifier": "knn", "knn_k": 3, "epochs": 1}
    m = cls(**params).fit(toy_dataset())
    assert m.pair_counts_[0] == m.pair_counts_[1] > 0
    proba = m.predict_proba(toy_dataset(n=12, split="test"))
    assert proba.shape == (12, 3) and np.allclose(proba.sum(1), 1.0)


def test_bad_combinations_are_rejected():
    cls = get_method("siamese")
    base = {**cls.resolve_params("test"), "device": "cpu"}
    with pytest.raises(ParameterError, match="freeze_epochs"):
        cls(**{**base, "freeze_epochs": 5, "epochs": 2}).fit(toy_dataset())
    with pytest.raises(ParameterError, match="same_fraction"):
        cls(**{**base, "same_fraction": 0.5}).fit(toy_dataset())
    with pytest.raises(ParameterError, match="pairs"):
        cls(**{**base, "pairs": "triplets"})


def test_batchnorm_trunk_keeps_scale_and_shift_frozen_in_stage_one():
    cls = get_method("siamese")
    m = cls(**{**cls.resolve_params("test"), "device": "cpu", "epochs": 1, "freeze_epochs": 1})
    torch.manual_seed(0)
    fresh = m.build(3)
    norms = [layer for layer in fresh.trunk if isinstance(layer, torch.nn.BatchNorm2d)]
    assert len(norms) == 3                                                   # one per convolution
    m.fit(toy_dataset())
    trained = [layer for layer in m.model_.trunk if isinstance(layer, torch.nn.BatchNorm2d)]
    for before, after in zip(norms, trained):
        assert torch.equal(before.weight, after.weight) and torch.equal(before.bias, after.bias)
        assert not torch.equal(before.running_mean, after.running_mean)   # statistics still follow the data


def test_batchnorm_is_refused_on_the_alexnet_trunk():
    cls = get_method("siamese")
    m = cls(**{**cls.resolve_params("test"), "device": "cpu", "trunk": "alexnet3", "batchnorm": True})
    with pytest.raises(ParameterError, match="batchnorm"):
        m.build(3)


def test_head_init_is_xavier_by_default_and_pytorchs_in_the_quick_profile():
    cls = get_method("siamese")
    assert cls.resolve_params("paper")["head_init"] == "xavier"
    assert cls.resolve_params("quick")["head_init"] == "torch"
    base = cls.resolve_params("test", overrides={"device": "cpu"})
    xavier = cls(**{**base, "head_init": "xavier"}).build(3)
    torch_default = cls(**{**base, "head_init": "torch"}).build(3)
    fc4_x, fc4_t = xavier.head[0], torch_default.head[0]
    assert torch.count_nonzero(fc4_x.bias) == 0 and torch.count_nonzero(fc4_t.bias) > 0
    bound = math.sqrt(6.0 / (fc4_x.in_features + fc4_x.out_features))              # Xavier uniform's bound
    assert fc4_t.weight.abs().max() <= 1.0 / math.sqrt(fc4_t.in_features) + 1e-6   # PyTorch: U(+-1/sqrt(in))
    assert fc4_x.weight.abs().max() <= bound + 1e-6
