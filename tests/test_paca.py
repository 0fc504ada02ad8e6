"""Patch-to-cluster attention (methods/paca/): shapes, masking of empty clusters, equivalence to
patch-to-patch attention when every patch is its own cluster, cache reuse across fits, gradients reaching
every parameter with the mean readout (and none reaching the pixels with the static class-token readout)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fer_bench_methods.paca as P  # registers paca, paca_learned, vit
from fer_bench import clustering as PC
from fer_bench.method import ParameterError


def net(mode, clusters=4, cluster_norm=True, static_dim=None, seed=0):
    torch.manual_seed(seed)
    return P.PaCaViT(num_classes=3, image_size=16, patch_size=4, dim=16, depth=2, heads=2, mlp_ratio=2.0,
                     dropout=0.0, mode=mode, clusters=clusters, static_dim=static_dim,
                     cluster_norm=cluster_norm).eval()


def test_attention_shapes_and_masked_keys_are_ignored():
    torch.manual_seed(0)
    attn = P.PatchToClusterAttention(dim=16, heads=4).eval()
    x, kv = torch.randn(2, 17, 16), torch.randn(2, 5, 16)                 # 17 queries, 5 cluster tokens
    mask = torch.tensor([[True, True, False, True, False], [True] * 5])
    out = attn(x, kv, mask)
    assert out.shape == (2, 17, 16)
    kv2 = kv.clone()
    kv2[0, 2] = 1e3                                                       # change a masked cluster token only
    kv2[0, 4] = -7.0
    assert torch.allclose(attn(x, kv2, mask), out, atol=1e-6)
    kv2[0, 1] += 1.0                                                      # an unmasked one does matter
    assert not torch.allclose(attn(x, kv2, mask)[0], out[0])


def test_attention_weights_are_softmax_over_clusters():
    torch.manual_seed(1)
    attn = P.PatchToClusterAttention(dim=8, heads=1).eval()
    x, kv = torch.randn(1, 3, 8), torch.randn(1, 2, 8)
    q, k, v = attn.q(x), attn.k(kv), attn.v(kv)
    weights = torch.softmax(q @ k.transpose(1, 2) / np.sqrt(8), dim=-1)   # the paper's A = softmax(QK^T / sqrt(C))
    assert torch.allclose(attn(x, kv), attn.proj(weights @ v), atol=1e-5)


def test_every_patch_its_own_cluster_equals_patch_to_patch_attention():
    n = (16 // 4) ** 2
    vit = net("none", clusters=n)
    paca = net("pooled", clusters=n, cluster_norm=False)
    paca.load_state_dict(vit.state_dict())                                # same parameters, names and shapes
    x = torch.randn(3, 3, 16, 16)
    identity = torch.arange(n).expand(3, n)                               # (B, N): patch i -> cluster i
    assert torch.allclose(paca(x, identity), vit(x), atol=1e-5)
    shuffled = torch.stack([torch.randperm(n) for _ in range(3)])         # cluster ids are only labels
    assert torch.allclose(paca(x, shuffled), vit(x), atol=1e-5)
    merged = identity.clone()
    merged[:, 1] = 0                                                      # two patches in one cluster: not equal
    assert not torch.allclose(paca(x, merged), vit(x), atol=1e-4)


def test_empty_clusters_are_masked_in_the_model():
    model = net("static", clusters=4, static_dim=6)
    x = torch.randn(2, 3, 16, 16)
    assign = torch.zeros(2, 16, dtype=torch.long)
    assign[:, 8:] = 2                                                     # clusters 1 and 3 are empty
    centroids = torch.randn(2, 4, 6)
    out = model(x, assign, centroids)
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    moved = centroids.clone()
    moved[:, [1, 3]] = 50.0                                               # whatever an empty cluster holds
    assert torch.allclose(model(x, assign, moved), out, atol=1e-5)
    z, valid = P.assignment_pooling(assign, 4)
    assert z.shape == (2, 4, 16) and valid.tolist() == [[True, False, True, False]] * 2
    assert torch.allclose(z.sum(-1), valid.float())


def test_learned_clustering_is_a_softmax_over_patches():
    for kind in ("conv", "linear"):
        head = P.LearnedClustering(dim=16, m=3, grid=4, kind=kind)
        z = head(torch.randn(2, 16, 16))                                  # (B, N, C) -> (B, M, N)
        assert z.shape == (2, 3, 16) and torch.allclose(z.sum(-1), torch.ones(2, 3), atol=1e-6)
    assert net("learned", clusters=3)(torch.randn(2, 3, 16, 16)).shape == (2, 3)


def test_second_fit_reuses_cached_embeddings_and_assignments(toy, monkeypatch):
    train, test = toy
    params = P.PaCa.resolve_params("test", overrides={"device": "cpu", "clustering": "agglomerative",
                                                      "cluster_tokens": "pooled"})
    first = P.PaCa(**params).fit(train)
    assert first.cluster_stats_["train"]["cached"] is False
    proba = first.predict_proba(test)

    def boom(*args, **kwargs):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(PC, "cluster_patches", boom)
    monkeypatch.setattr(PC, "_compute_embeddings", boom)
    second = P.PaCa(**params).fit(train)
    assert second.cluster_stats_["train"]["cached"] is True
    assert np.array_equal(second.predict_proba(test), proba)             # test images: cached by content digest


def test_torch_backend_and_bad_geometry_are_checked(toy):
    train, _ = toy
    base = P.PaCa.resolve_params("test", overrides={"device": "cpu"})
    with pytest.raises(ParameterError, match="multiple of 'patch_size'"):
        P.PaCa(**{**base, "patch_size": 5}).fit(train)
    with pytest.raises(ParameterError, match="k-means only"):
        P.PaCa(**{**base, "clustering": "spectral", "cluster_backend": "torch"}).fit(train)
    fitted = P.PaCa(**{**base, "cluster_backend": "torch"}).fit(train)
    assert fitted.cluster_stats_["train"]["backend"] == "torch"


MODES = [("static", 6), ("pooled", None), ("learned", None), ("none", None)]   # (mode, static_dim)


def one_step_grads(mode, static_dim, readout="mean", seed=0, patch_embed="linear"):
    """One cross-entropy forward / backward on a small seeded random batch; the network and its grads."""
    torch.manual_seed(seed)
    model = P.PaCaViT(num_classes=3, image_size=16, patch_size=4, dim=16, depth=2, heads=2, mlp_ratio=2.0,
                      dropout=0.0, mode=mode, clusters=4, static_dim=static_dim, readout=readout,
                      patch_embed=patch_embed).train()
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 1])
    assign = torch.randint(0, 4, (4, 16))                                 # (B, N)
    centroids = torch.randn(4, 4, static_dim) if static_dim else None     # (B, M, D_e)
    F.cross_entropy(model(x, assign, centroids), y).backward()
    return model


@pytest.mark.parametrize("patch_embed", ["linear", "conv"])
@pytest.mark.parametrize("mode,static_dim", MODES)
def test_every_parameter_gets_a_gradient_with_the_mean_readout(mode, static_dim, patch_embed):
    model = one_step_grads(mode, static_dim, patch_embed=patch_embed)
    dead = [name for name, p in model.named_parameters()
            if p.requires_grad and (p.grad is None or not p.grad.abs().gt(0).any())]
    assert dead == []
    assert any(p.grad.abs().sum() > 0 for p in model.patch_embed.parameters())


def test_conv_stem_gives_one_token_per_patch_cell_in_grid_order():
    """Token i of the conv stem depends on pixels of patch cell i (row-major, as cut_patches) and its
    neighbours only, so the cached per-patch cluster assignments still name the right tokens."""
    torch.manual_seed(0)
    stem = P.ConvStem(patch=4, dim=16).eval()
    x = torch.randn(1, 3, 16, 16, requires_grad=True)
    tokens = stem(x)
    assert tokens.shape == (1, 16, 16)
    cell = 6                                                             # grid row 1, column 2
    tokens[0, cell].sum().backward()
    touched = x.grad.abs().sum(1)[0].reshape(4, 4, 4, 4).permute(0, 2, 1, 3).sum((2, 3))  # (grid, grid)
    assert touched[1, 2] > 0
    assert touched[3, 0] == 0 and touched[0, 0] == 0                     # far cells do not reach it
    with pytest.raises(ValueError, match="power of two"):
        P.ConvStem(patch=6, dim=16)


def test_quick_profile_uses_the_conv_stem_and_the_paper_profile_the_studys_linear_projection(toy):
    for cls in (P.PaCa, P.PaCaLearned, P.ViT):
        assert cls.resolve_params("quick")["patch_embed"] == "conv"
        assert cls.resolve_params("paper")["patch_embed"] == "linear"
    train, _ = toy
    base = P.PaCa.resolve_params("test", overrides={"device": "cpu", "patch_embed": "conv", "patch_size": 6,
                                                    "image_size": 24})
    with pytest.raises(ParameterError, match="power of two"):
        P.PaCa(**base).fit(train)


def test_cls_readout_in_static_mode_never_sees_the_pixels():
    """The old default: the class token attends to itself and the frozen centroids only."""
    model = one_step_grads("static", 6, readout="cls")
    assert model.patch_embed.weight.grad is not None and torch.equal(model.patch_embed.weight.grad,
                                                                     torch.zeros_like(model.patch_embed.weight))
    model.eval()
    assign, centroids = torch.randint(0, 4, (2, 16)), torch.randn(2, 4, 6)
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(model(x, assign, centroids), model(torch.randn(2, 3, 16, 16), assign, centroids))


def test_mean_readout_in_static_mode_depends_on_the_pixels():
    model = one_step_grads("static", 6).eval()
    assign, centroids = torch.randint(0, 4, (2, 16)), torch.randn(2, 4, 6)
    x = torch.randn(2, 3, 16, 16)
    out = model(x, assign, centroids)
    assert not torch.allclose(model(torch.randn(2, 3, 16, 16), assign, centroids), out, atol=1e-4)


def test_readout_parameter_reaches_the_network():
    for readout in ("mean", "cls"):
        params = P.PaCa.resolve_params("test", overrides={"device": "cpu", "readout": readout})
        assert params["readout"] == readout
        assert P.PaCa(**params).build(3).readout == readout
    assert P.PaCa.resolve_params("paper")["readout"] == "mean"
    with pytest.raises(ParameterError):
        P.PaCa(**P.PaCa.resolve_params("test", overrides={"readout": "avg"}))


def test_bad_settings_fail_before_any_embedding_or_clustering(toy, monkeypatch):
    train, _ = toy

    def boom(*args, **kwargs):
        raise AssertionError("expensive work started before the settings were checked")

    monkeypatch.setattr(PC, "patch_embeddings", boom)
    monkeypatch.setattr(PC, "cached_assignments", boom)
    base = P.PaCa.resolve_params("test", overrides={"device": "cpu"})
    with pytest.raises(ParameterError, match="multiple of 'patch_size'"):
        P.PaCa(**{**base, "patch_size": 5}).fit(train)
    with pytest.raises(ParameterError, match="k-means only"):
        P.PaCa(**{**base, "clustering": "spectral", "cluster_backend": "torch"}).fit(train)
