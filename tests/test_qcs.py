"""QCS / DCS: parity with the official code's reference tensors (../shared/reference/qcs/), shapes, options,
the quadruplet sampler and the method's hooks.

Parity tolerances: float64 to 1e-10 absolute, float32 to 1e-5 relative (of the largest magnitude). The
reference weights load into our modules through ``NAME_MAP`` below (official module path -> ours).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fer_bench_methods.qcs as Q  # registers qcs and dcs
from fer_bench_methods.qcs import blocks as B
from fer_bench.models.backbones import Backbone
from fer_bench.models.three_stage import SmallThreeStage
from fer_bench.train import SAM

REF = Path(os.environ.get("FER_BENCH_REFERENCE", Path(__file__).resolve().parents[2] / "shared" / "reference")) / "qcs"
needs_ref = pytest.mark.skipif(not REF.is_dir(), reason=f"QCS parity against the official code not checked: reference "
                               f"tensors not found in {REF} (set FER_BENCH_REFERENCE to the folder holding qcs/)")

# official state_dict key (regex) -> our key, applied in order
NAME_MAP: list[tuple[str, str]] = [
    (r"^VIT_base\.", "vit_base."),
    (r"^VIT_cross\.", "vit_cross."),
    (r"\.se_block\.linear1\.", ".se.fc1."),
    (r"\.se_block\.linear2\.", ".se.fc2."),
    (r"\.head\.linear\.", ".head."),
    (r"^ir_back\.", "trunk."),
    (r"^conv([123])\.", lambda m: f"front.reduce.{int(m.group(1)) - 1}."),
    (r"^embed_([qk])\.", r"front.embed_\1."),
    (r"^embed_v\.proj\.", "front.embed_v."),
    (r"^cross_attention_([123])\.", lambda m: f"csa.{int(m.group(1)) - 1}."),
]


def ours(key: str) -> str:
    for pattern, repl in NAME_MAP:
        key = re.sub(pattern, repl, key)
    return key


def load(name: str, dtype: str) -> dict:
    return torch.load(REF / f"{name}_{dtype}.pt", weights_only=False, map_location="cpu")


def close(a: torch.Tensor, b: torch.Tensor, dtype: str) -> None:
    a, b = a.detach(), b.detach()
    assert a.shape == b.shape, (a.shape, b.shape)
    err = (a - b).abs().max().item()
    if dtype == "f64":
        assert err <= 1e-10, f"max abs diff {err:.3g} > 1e-10"
    else:
        scale = max(b.abs().max().item(), 1e-30)
        assert err / scale <= 1e-5, f"max relative diff {err / scale:.3g} > 1e-5"


@pytest.fixture(autouse=True)
def _one_thread():
    # small float64 graphs: on the shared 2-core machine, two intra-op threads are several times slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


DTYPES = ["f64", "f32"]
TORCH_DTYPE = {"f64": torch.float64, "f32": torch.float32}


# --------------------------------------------------------------------------------------------------
# Functional maps


@needs_ref
@pytest.mark.parametrize("dtype", DTYPES)
def test_functional_maps_match_official(dtype):
    r = load("functional_maps", dtype)
    qk = [r[f"QK{i}"] for i in range(1, 5)]
    k = torch.tanh(r["theta"])
    close(k, r["k_tanh_theta"], dtype)
    for matrix, name in (("SD", "Attn_QCS_SD"), ("S", "Attn_QCS_S"), ("D", "Attn_QCS_D")):
        maps = B.qcs_weight_maps(*qk, k=k, matrix=matrix)
        for i, m in enumerate(maps, 1):
            close(m, r[f"{name}.cross_map{i}"], dtype)
            assert torch.allclose(m.sum(-1), torch.ones(3, dtype=m.dtype))
    # the batch-global min / max: each sample alone gives the per_sample_B1 maps, and the per-sample
    # option reproduces those in one batched call
    per_sample = B.qcs_weight_maps(*qk, k=k, reduce="sample")
    for i in range(1, 5):
        alone = torch.cat([B.qcs_weight_maps(*(q[b:b + 1] for q in qk), k=k)[i - 1] for b in range(3)])
        close(alone, r[f"Attn_QCS_SD.cross_map{i}.per_sample_B1"], dtype)
        close(per_sample[i - 1], r[f"Attn_QCS_SD.cross_map{i}.per_sample_B1"], dtype)
    assert (r["Attn_QCS_SD.cross_map1"] - r["Attn_QCS_SD.cross_map1.per_sample_B1"]).abs().max() > 1e-3
    m1, m2 = B.dcs_weight_maps(qk[0], qk[1])
    close(m1, r["Attn_DCS_S.cross_map1"], dtype)
    close(m2, r["Attn_DCS_S.cross_map2"], dtype)
    i1, i2 = B.sdpa_maps(qk[0], qk[1])
    close(i1, r["Attn_HW.I1"], dtype)
    close(i2, r["Attn_HW.I2"], dtype)
    close(torch.cdist(qk[1], qk[0]), r["cdist_QK2_QK1.default_mode"], dtype)


# --------------------------------------------------------------------------------------------------
# CSA modules


@needs_ref
@pytest.mark.parametrize("dtype", DTYPES)
def test_qcs_module_matches_official(dtype):
    r = load("csa_qcs", dtype)
    sd = r["state_dict"]
    module = B.CrossSimilarityAttention(64, branches=4).to(TORCH_DTYPE[dtype])
    module.load_state_dict({ours(k): v for k, v in sd.items()})
    xs = [r[f"in.{b}"].clone().requires_grad_(b == "x_a") for b in ("x_a", "x_p", "x_n", "x_n2")]
    outs, maps, k = module(*xs)
    for b, o in zip(("x_a", "x_p", "x_n", "x_n2"), outs):
        close(o, r[f"out.{b}"], dtype)
    close(k, r["out.k"], dtype)
    for i, m in enumerate(maps, 1):
        close(m, r[f"mid.cross_map{i}"], dtype)
    qk = [module.proj(module.norm1(x))[..., :64] for x in xs]
    for i, q in enumerate(qk, 1):
        close(q, r[f"mid.QK{i}"], dtype)
    loss = sum((o * w).sum() for o, w in zip(outs, r["grad.loss_weights"]))
    close(loss, r["grad.loss"], dtype)
    loss.backward()
    close(module.theta.grad, r["grad.theta"], dtype)
    close(module.proj.weight.grad, r["grad.proj.weight"], dtype)
    close(xs[0].grad, r["grad.in.x_a"], dtype)


@needs_ref
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant,residual", [("resid_on_normed", "normed"), ("resid_on_raw", "prenorm")])
def test_dcs_modules_match_official(dtype, variant, residual):
    r = load(f"csa_dcs_{variant}", dtype)
    sd = r["state_dict"]
    module = B.CrossSimilarityAttention(64, branches=2, residual=residual).to(TORCH_DTYPE[dtype])
    module.load_state_dict({ours(k): v for k, v in sd.items()})
    (a, p), maps, k = module(r["in.x_a"], r["in.x_p"])
    assert k is None and not hasattr(module, "theta")
    close(a, r["out.attn_a"], dtype)
    close(p, r["out.attn_p"], dtype)
    close(maps[0], r["mid.cross_map1"], dtype)
    close(maps[1], r["mid.cross_map2"], dtype)
    close(module.proj(module.norm1(r["in.x_a"]))[..., :64], r["mid.K1"], dtype)
    close(module.proj(module.norm1(r["in.x_p"]))[..., :64], r["mid.Q2"], dtype)


# --------------------------------------------------------------------------------------------------
# The shrunken end-to-end model


class TinyTrunk(Backbone):
    """The reference's stand-in for IR-50: c1 Conv(3->8, s1), c2 Conv(8->16, s2), c3 Conv(16->32, s2)."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 8, 3, 1, 1), nn.Conv2d(8, 16, 3, 2, 1), nn.Conv2d(16, 32, 3, 2, 1)
        self.out_dim = self.map_channels = 32

    def forward_stages(self, x):
        f1 = self.c1(x)
        f2 = self.c2(f1)
        return [f1, f2, self.c3(f2)]

    def forward_features(self, x):
        return self.forward_stages(x)[-1]


def mini_model(r: dict, dtype: str) -> B.QCSNetwork:
    net = B.QCSNetwork(TinyTrunk(), 56, 7, dim=64, branches=4, depth_base=2, depth_cross=1).to(TORCH_DTYPE[dtype])
    mapped = {ours(k): v for k, v in r["state_dict_used"].items()}
    result = net.load_state_dict(mapped, strict=True)               # every reference tensor has a place, and back
    assert not result.missing_keys and not result.unexpected_keys
    return net


def qcs_loss(net, r):
    xs = [r[f"in.{b}"] for b in ("x_a", "x_p", "x_n", "x_n2")]
    base, cross = net.train_forward(xs)
    y, yn = r["in.label"], r["in.neg_label"]
    labels = [y, y, yn, yn]
    loss = sum(F.cross_entropy(l, t) for l, t in zip(base + cross, labels + labels)) / 8
    return loss, base, cross


@needs_ref
@pytest.mark.parametrize("dtype", DTYPES)
def test_mini_model_matches_official(dtype):
    r = load("mini_qcs_model", dtype)
    net = mini_model(r, dtype)
    net.train()
    xs = [r[f"in.{b}"] for b in ("x_a", "x_p", "x_n", "x_n2")]
    for x, t_in, t_out in zip(xs, r["mid.VIT_base.tokens_in"], r["mid.VIT_base.tokens_out"]):
        close(net.tokens(x), t_in, dtype)
        close(net.vit_base(t_in)[1], t_out, dtype)
    for s in range(3):
        outs, _, k = net.csa[s](*(t[:, 49 * s:49 * (s + 1)] for t in r["mid.VIT_base.tokens_out"]))
        ref = r[f"mid.cross_attention_{s + 1}.out"]
        for o, ro in zip(outs, ref[:4]):
            close(o, ro, dtype)
        close(k, ref[4], dtype)
    loss, base, cross = qcs_loss(net, r)
    for b, lb, lc in zip(("a", "p", "n", "n2"), base, cross):
        close(lb, r[f"out.base_{b}"], dtype)
        close(lc, r[f"out.cross_{b}"], dtype)
    close(loss, r["out.loss_mean_of_8_CE"], dtype)
    net.eval()
    close(net(xs[0]), r["out.inference_logits_anchor_only"], dtype)


@needs_ref
def test_mini_model_sam_adam_step_matches_official():
    r = load("mini_qcs_model", "f64")
    net = mini_model(r, "f64")
    net.train()
    opt = SAM([p for p in net.parameters()], torch.optim.Adam, rho=r["sam_step.rho"], lr=r["sam_step.lr"])
    opt.zero_grad()
    first = qcs_loss(net, r)[0]
    first.backward()
    opt.first_step()
    opt.zero_grad()
    second = qcs_loss(net, r)[0]
    second.backward()
    opt.second_step()
    close(first, r["sam_step.loss_first"], "f64")
    close(second, r["sam_step.loss_second_at_perturbed_w"], "f64")
    after = net.state_dict()
    for key, value in r["sam_step.state_dict_used_after"].items():
        close(after[ours(key)], value, "f64")


# --------------------------------------------------------------------------------------------------
# Shapes, options, sampler, method hooks


def tiny_net(**options) -> B.QCSNetwork:
    torch.manual_seed(0)
    trunk = SmallThreeStage((4, 4, 8))
    return B.QCSNetwork(trunk, 24, 3, dim=16, **options)


@pytest.mark.parametrize("options", [
    {},
    {"gate": "pool"},
    {"residual": "prenorm"},
    {"reduce": "sample"},
    {"attention": "sdpa"},
    {"matrix": "S"},
    {"matrix": "D"},
    {"connection": "add_gap"},
    {"connection": "bilinear"},
    {"connection": "none"},
    {"connection": "off"},
    {"branches": 2},
    {"branches": 2, "attention": "sdpa", "connection": "add_gap"},
])
def test_network_options_shapes_and_gradients(options):
    net = tiny_net(**options)
    k = options.get("branches", 4)
    xs = [torch.randn(3, 3, 24, 24) for _ in range(k)]
    base, cross = net.train_forward(xs)
    assert net.grid == 2 and len(base) == k and all(b.shape == (3, 3) for b in base)
    assert len(cross) == (0 if options.get("connection") == "off" else k)
    loss = sum(F.cross_entropy(l, torch.zeros(3, dtype=torch.long)) for l in base + cross)
    loss.backward()
    if options.get("connection", "vit") != "off" and k == 4 and options.get("attention") != "sdpa" \
            and options.get("matrix", "SD") == "SD":
        assert net.csa[0].theta.grad is not None and net.csa[0].theta.grad.abs() > 0
    net.eval()
    assert net(xs[0]).shape == (3, 3) and net.features(xs[0]).shape == (3, 16)


def test_batch_global_minmax_couples_samples_and_per_sample_does_not():
    torch.manual_seed(1)
    qk = [torch.randn(4, 9, 8, dtype=torch.float64) for _ in range(4)]
    k = torch.tensor(0.2, dtype=torch.float64)
    together = B.qcs_weight_maps(*qk, k=k)[0]
    alone = torch.cat([B.qcs_weight_maps(*(q[i:i + 1] for q in qk), k=k)[0] for i in range(4)])
    per_sample = B.qcs_weight_maps(*qk, k=k, reduce="sample")[0]
    assert not torch.allclose(together, alone)
    assert torch.allclose(per_sample, alone, atol=1e-12)


def test_pool_gate_is_the_paper_matrix_product():
    torch.manual_seed(2)
    m = B.CrossSimilarityAttention(8, branches=2, gate="pool").double()
    xa, xp = torch.randn(2, 9, 8, dtype=torch.float64), torch.randn(2, 9, 8, dtype=torch.float64)
    (ya, _), maps, _ = m(xa, xp)
    xn = m.norm1(xa)
    v = m.proj(xn)[..., 8:]
    pooled = torch.einsum("bn,bnc->bc", maps[0], v)                  # softmax(S)^T V
    y = m.norm2(xn + pooled[:, None])
    assert torch.allclose(ya, y + m.mlp(y), atol=1e-12)


def test_quadruplet_sampler_draws_valid_tuples():
    labels = torch.tensor([0] * 10 + [1] * 3 + [2] * 1 + [3] * 6)
    s = Q.QuadrupletSampler(labels)
    g = torch.Generator().manual_seed(0)
    anchors = torch.arange(len(labels)).repeat(50)
    pos = s.same_class(anchors, g)
    assert torch.equal(labels[pos], labels[anchors])
    alone = labels[anchors] == 2
    assert torch.equal(pos[alone], anchors[alone]) and bool((pos[~alone] != anchors[~alone]).all())
    for mode in ("image", "class"):
        neg = s.negative(anchors, g, mode)
        n2 = s.same_class(neg, g)
        assert bool((labels[neg] != labels[anchors]).all()) and torch.equal(labels[n2], labels[neg])
        assert bool((n2[labels[neg] != 2] != neg[labels[neg] != 2]).all())
        share = torch.bincount(labels[neg[labels[anchors] == 0]], minlength=4)[1:].double()
        share = share / share.sum()
        expected = torch.tensor([3.0, 1.0, 6.0]) / 10 if mode == "image" else torch.full((3,), 1 / 3)
        assert torch.allclose(share, expected.double(), atol=0.08), (mode, share)
    with pytest.raises(ValueError, match="two classes"):
        Q.QuadrupletSampler(torch.zeros(5, dtype=torch.long)).negative(torch.arange(5), g, "image")


def _method(name: str, toy_train, **over):
    cls = {"qcs": Q.QCS, "dcs": Q.DCS}[name]
    method = cls(**{**cls.resolve_params("test"), "device": "cpu", **over})
    method.device_ = torch.device("cpu")
    method.mean_ = torch.zeros(1, 3, 1, 1)
    method.std_ = torch.ones(1, 3, 1, 1)
    method.augmenter_ = None
    method.num_classes_ = toy_train.num_classes
    method._load_training_data(toy_train)
    return method


@pytest.mark.parametrize("name,k", [("qcs", 4), ("dcs", 2)])
def test_sampler_and_make_batch_shapes(toy, name, k):
    train, _ = toy
    method = _method(name, train, batch_size=10)
    batches = list(method.sampler(train, torch.Generator().manual_seed(0)))
    assert all(b.shape[1] == k for b in batches) and sum(len(b) for b in batches) == len(train)
    batch = method.make_batch(batches[0], torch.Generator().manual_seed(0))
    assert batch["x"].shape == (10, k, 3, 24, 24) and batch["labels"].shape == (10, k)
    assert torch.equal(batch["labels"][:, 0], batch["labels"][:, 1])
    assert torch.equal(batch["x"][3, 1], method.fetch(batches[0][3, 1:2], None, augment=False)[0])
    if k == 4:
        assert bool((batch["labels"][:, 2] != batch["labels"][:, 0]).all())
    balanced = _method(name, train, anchor_sampling="balanced", epoch_fraction=0.5, batch_size=8)
    assert sum(len(b) for b in balanced.sampler(train, torch.Generator().manual_seed(0))) == 48


def test_fit_drops_the_cross_modules_and_inference_is_the_base_network(toy, tmp_path):
    train, test = toy
    method = Q.QCS(**{**Q.QCS.resolve_params("test"), "device": "cpu", "distill": "kl", "select": "best_val"})
    method.workdir = str(tmp_path / "ckpt")
    method.fit(train)
    net = method.model_
    assert not any(hasattr(net, p) for p in Q._CROSS_PARTS) and net.connection == "off"
    assert method.train_params_ > sum(p.numel() for p in net.parameters())
    extra = method.extra_results(tmp_path, train, test)
    assert set(extra) >= {"train_params", "tanh_theta_scale1", "accuracy_last_epoch"}
    loaded = Q.QCS.load(method.save(tmp_path / "saved"))
    assert not any(hasattr(loaded.model_, p) for p in Q._CROSS_PARTS)
    assert np.allclose(loaded.predict_proba(test), method.predict_proba(test), atol=1e-6)


def test_bad_width_is_one_sentence(toy):
    train, _ = toy
    with pytest.raises(Exception, match="multiple of heads"):
        Q.QCS(**{**Q.QCS.resolve_params("test"), "device": "cpu", "embed_dim": 20}).fit(train)


def test_paper_profile_per_dataset():
    raf = Q.QCS.resolve_params("paper", "rafdb")
    assert (raf["epochs"], raf["batch_size"], raf["lr"], raf["backbone"], raf["trunk_input"]) == (200, 24, 3e-6, "ir50_s3", 112)
    aff = Q.QCS.resolve_params("paper", "affectnet8")
    assert aff["negative"] == "class" and aff["anchor_sampling"] == "balanced" and abs(aff["epoch_fraction"] - 1 / 12) < 1e-12
    dcs = Q.DCS.resolve_params("paper", "ferplus")
    assert (dcs["lr"], dcs["residual"], dcs["drop_cross"]) == (8e-6, "prenorm", 0.2)
