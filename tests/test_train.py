"""The one training loop: SAM's two passes, the NaN guard, exact resume, validation-only selection."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fer_bench.method import Param, TorchMethod
from fer_bench.train import SAM, Diverged, make_optimizer


class Tiny(TorchMethod):
    """Flatten -> dropout -> linear: small enough to check updates by hand."""

    params = {"nan_at_step": Param(-1, int)}
    stop_after_epoch = -1  # not a parameter: an interruption from outside, like a kill
    profiles = {"test": {}, "quick": {}, "paper": {}}

    def build(self, num_classes):
        return nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(3 * 8 * 8, num_classes))

    def features(self, x):
        return self.model_[0](x)

    def loss(self, batch):
        self.batches = getattr(self, "batches", []) + [batch]
        loss = F.cross_entropy(self.model_(batch["x"]), batch["y"])
        if len(self.batches) - 1 == self.nan_at_step:
            return loss * float("nan")
        return loss

    def on_epoch_end(self, epoch):
        if epoch == self.stop_after_epoch:
            raise KeyboardInterrupt("simulated interruption")


BASE = dict(image_size=8, batch_size=32, epochs=3, device="cpu", augment="standard", lr=0.05)


def _weights(method):
    return {k: v.clone() for k, v in method.model_.state_dict().items()}


def test_sam_optimizer_step_equals_hand_computed_two_passes():
    torch.manual_seed(0)
    x, y = torch.randn(16, 3), torch.randn(16)
    w0 = torch.randn(3)
    rho, lr = 0.1, 0.5

    def grad_at(w):  # gradient of mean((x w - y)^2), by hand
        return 2.0 / len(x) * x.T @ (x @ w - y)

    g0 = grad_at(w0)
    expected = w0 - lr * grad_at(w0 + rho * g0 / g0.norm())

    w = nn.Parameter(w0.clone())
    opt = make_optimizer("sam", [w], lr=lr, momentum=0.0, sam_rho=rho)
    assert isinstance(opt, SAM)
    ((x @ w - y) ** 2).mean().backward()
    opt.first_step()
    assert torch.allclose(w.detach(), w0 + rho * g0 / g0.norm(), atol=1e-6)
    opt.zero_grad()
    ((x @ w - y) ** 2).mean().backward()
    opt.second_step()
    assert torch.allclose(w.detach(), expected, atol=1e-6)


def test_trainer_does_sams_two_passes(toy):
    train, _ = toy
    params = dict(BASE, optimizer="sam", sam_rho=0.05, momentum=0.0, epochs=1, batch_size=96, augment="none")
    m = Tiny(**params)
    m.classes_, m.num_classes_ = train.classes, 3
    torch.manual_seed(m.seed)
    model = m.build(3)
    w0 = copy.deepcopy(model.state_dict())
    m.fit(train)
    batch = m.batches[0]
    assert len(m.batches) == 2 and torch.equal(m.batches[1]["x"], batch["x"])  # same batch, two passes
    # Oracle: plain autograd at w0 and at the perturbed point, with dropout seeded as the trainer seeds it.
    ref = m.build(3)
    ref.load_state_dict(w0)
    ref.train()
    params_ = list(ref.parameters())
    with torch.random.fork_rng():
        torch.manual_seed(m.seed * 1_000_003)
        g = torch.autograd.grad(F.cross_entropy(ref(batch["x"]), batch["y"]), params_)
        norm = torch.norm(torch.stack([t.norm() for t in g]))
        with torch.no_grad():
            for p, t in zip(params_, g):
                p.add_(0.05 * t / norm)
        g2 = torch.autograd.grad(F.cross_entropy(ref(batch["x"]), batch["y"]), params_)
    expected = [p0 - m.lr * t for p0, t in zip([w0[k] for k in ("2.weight", "2.bias")], g2)]
    got = [m.model_.state_dict()[k] for k in ("2.weight", "2.bias")]
    for e, o in zip(expected, got):
        assert torch.allclose(e, o, atol=1e-5)


def test_nan_guard_stops_with_epoch_and_step(toy):
    train, _ = toy
    with pytest.raises(Diverged, match=r"diverged at epoch 0 step 2: loss is nan"):
        Tiny(**BASE, nan_at_step=2).fit(train)


def test_resume_after_interruption_reaches_the_same_weights(toy, tmp_path):
    train, test = toy
    full = Tiny(**BASE)
    full.workdir = str(tmp_path / "full")
    full.fit(train)

    interrupted = Tiny(**BASE)
    interrupted.stop_after_epoch = 1
    interrupted.workdir = str(tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(train)
    resumed = Tiny(**BASE)  # same configuration: the checkpoint matches
    resumed.workdir = str(tmp_path / "resumed")
    resumed.fit(train)
    assert resumed.train_info_["resumed_from_epoch"] == 1
    for key, value in _weights(full).items():
        assert torch.equal(value, _weights(resumed)[key]), key
    assert np.array_equal(full.predict_proba(test), resumed.predict_proba(test))


def test_checkpoint_and_saved_method_leave_no_temporary_file(toy, tmp_path):
    train, _ = toy
    m = Tiny(**{**BASE, "epochs": 2})
    m.workdir = str(tmp_path / "work")
    m.fit(train).save(tmp_path / "saved")
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["last.pt"]
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == ["params.json", "state.pt"]


def test_the_training_image_pass_is_eval_mode_without_augmentation_and_restores_the_mode(toy):
    train, _ = toy
    m = Tiny(**{**BASE, "eval_batch_size": 7})          # 96 images: 13 full batches and one of 5
    m.start_fit(train)
    x = (m.prepare_images(train.images).float() / 255.0 - m.mean_) / m.std_     # (96, 3, 8, 8), not augmented
    m.model_.eval()
    expected = m.model_(x).detach()                     # dropout off
    m.model_.train()
    out = m.map_training_images(m.model_)
    assert m.model_.training and out.shape == (len(train), 3)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    rows = torch.tensor([95, 0, 40, 41])
    torch.testing.assert_close(m.map_training_images(m.model_, index=rows), expected[rows], rtol=0, atol=1e-6)
    torch.testing.assert_close(m.map_training_images(), x.flatten(1))          # default: features (Flatten here)


def test_checkpoint_of_another_configuration_is_not_resumed(toy, tmp_path):
    train, _ = toy
    a = Tiny(**{**BASE, "epochs": 1})
    a.workdir = str(tmp_path)
    a.fit(train)
    b = Tiny(**{**BASE, "lr": 0.01})
    b.workdir = str(tmp_path)
    b.fit(train)
    assert b.train_info_["resumed_from_epoch"] == 0


def test_best_val_selection_uses_a_holdout_and_records_the_rule(toy):
    train, _ = toy
    m = Tiny(**BASE, select="best_val", val_fraction=0.25).fit(train)
    assert "hold-out" in m.selection_rule_ and "subject-disjoint" in m.selection_rule_
    assert m.selection_.startswith("best validation score at step")
    curve = m.train_info_["curve"]
    assert all("val_accuracy" in point for point in curve)
    best = max(curve, key=lambda point: point["val_score"])      # the first of equal scores, as the loop keeps it
    assert m.train_info_["best_step"] == best["step"] and m.train_info_["best_val"] == best["val_score"]


def test_learning_curve_has_ten_evaluations_and_the_budget_is_counted(toy):
    train, test = toy
    m = Tiny(**{**BASE, "epochs": 4}).fit(train, test)
    info = m.train_info_
    steps_per_epoch = -(-len(train) // BASE["batch_size"])
    assert info["train_steps"] == 4 * steps_per_epoch
    assert info["train_anchor_images"] == 4 * len(train) == info["train_forward_images"]
    curve = info["curve"]
    assert len(curve) >= 10 and curve[-1]["step"] == info["train_steps"]
    assert [p["step"] for p in curve] == sorted({p["step"] for p in curve})
    assert curve[-1]["anchor_images"] == info["train_anchor_images"]
    assert all({"val_accuracy", "val_mean_class_accuracy", "train_loss"} <= set(p) for p in curve)
    final = float((m.predict(test) == test.labels).mean())
    assert curve[-1]["val_accuracy"] == pytest.approx(final)     # the last point is the final model
    assert info["train_cpu_seconds"] > 0 and info["train_seconds"] > 0


def test_sam_counts_both_passes_as_forward_images(toy):
    train, _ = toy
    info = Tiny(**{**BASE, "optimizer": "sam", "epochs": 1}).fit(train).train_info_
    assert info["train_forward_images"] == 2 * info["train_anchor_images"] == 2 * len(train)


def _fitted_in(workdir, train, val) -> Tiny:
    """A Tiny of the BASE configuration fitted with its checkpoints in ``workdir`` (resuming what is there)."""
    method = Tiny(**BASE)
    method.workdir = str(workdir)
    return method.fit(train, val)


def test_resumed_fit_keeps_its_curve_and_counts_every_attempt(toy, tmp_path):
    train, test = toy
    full = _fitted_in(tmp_path / "full", train, test)
    interrupted = Tiny(**BASE)
    interrupted.stop_after_epoch = 1
    interrupted.workdir = str(tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(train, test)
    resumed = _fitted_in(tmp_path / "resumed", train, test)
    a, b = full.train_info_, resumed.train_info_
    assert b["resumed_from_epoch"] == 1                          # epoch 1 was interrupted before its checkpoint
    for key in ("train_steps", "train_anchor_images", "train_forward_images"):
        assert a[key] == b[key], key
    assert [p["step"] for p in a["curve"]] == [p["step"] for p in b["curve"]]
    assert [p["val_accuracy"] for p in a["curve"]] == [p["val_accuracy"] for p in b["curve"]]


def test_a_fit_resumed_from_its_final_checkpoint_reports_the_first_attempts_time(toy, tmp_path):
    """#19 item 5: train_seconds was ~0.0001 s for a cell resumed from its final checkpoint."""
    train, test = toy
    first = _fitted_in(tmp_path / "cell", train, test)
    again = _fitted_in(tmp_path / "cell", train, test)
    assert again.train_info_["resumed_from_epoch"] == BASE["epochs"]
    for key in ("train_seconds", "train_cpu_seconds"):
        assert again.train_info_[key] == first.train_info_[key] > 0, key


def test_same_seed_same_weights_different_seed_different(toy):
    train, _ = toy
    a, b, c = Tiny(**BASE).fit(train), Tiny(**BASE).fit(train), Tiny(**BASE, seed=1).fit(train)
    assert all(torch.equal(v, _weights(b)[k]) for k, v in _weights(a).items())
    assert not all(torch.equal(v, _weights(c)[k]) for k, v in _weights(a).items())
