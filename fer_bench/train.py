"""The one training loop every torch method uses (DESIGN.md section 4).

``Trainer(method).fit(train, val)`` runs epochs of ``method.on_epoch_start`` -> ``method.sampler`` ->
``method.make_batch`` -> ``method.loss`` -> optimizer step -> ``method.on_epoch_end``, with:

- optimizers adam, adamw, sgd and sam (Sharpness-Aware Minimisation, Foret et al. ICLR 2021, wrapping
  a base optimizer: ascend to w + rho g/||g||, take the gradient there, step from w);
- schedulers none, exponential, step and cosine, stepped once per epoch;
- AMP on CUDA (float16 with loss scaling; bfloat16 without scaling under SAM's two passes);
- seeded generators only: epoch e draws its batch order and augmentation from
  ``torch.Generator().manual_seed(seed * 1_000_003 + e)``, and the global RNG that dropout uses is
  re-seeded the same way inside ``torch.random.fork_rng`` (restored on exit), so an epoch is a pure
  function of (weights at its start, seed, epoch) and resume is exact;
- a guard that raises :class:`Diverged` naming epoch and step when the loss is NaN or inf;
- atomic checkpoints (``last.pt`` in the method's work directory, ``fer_bench.fileio.atomic_path``)
  and resume from them;
- the cell's budget and cost (steps, anchor images, forward images, wall and CPU seconds, summed over
  resumed attempts) and its learning curve: training loss and validation accuracy / mean class accuracy
  at ``EVAL_POINTS`` evenly spaced steps, carried through checkpoints;
- model selection on validation data only (``select='best_val'``) among those evaluations, the rule recorded.

The trainer knows nothing about the model: it reads the method's hooks and hyperparameters.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np
import torch
from tqdm.auto import tqdm

from fer_bench.fileio import atomic_path

if TYPE_CHECKING:
    from fer_bench.data import FERDataset
    from fer_bench.method import TorchMethod

log = logging.getLogger(__name__)

CHECKPOINT = "last.pt"
# what a checkpoint carries besides the weights and optimizer: counters, costs, curve and selection
RESUMED = ("epoch", "step", "anchors", "forward", "seconds", "cpu_seconds", "best_score", "best_epoch", "best_step",
           "best_state", "history", "curve", "window")


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""

    def __init__(self, epoch: int, step: int, value: float):
        self.epoch, self.step, self.value = epoch, step, value
        super().__init__(f"diverged at epoch {epoch} step {step}: loss is {value}; "
                         f"lower the learning rate (--set METHOD.lr=...) or enable grad_clip.")


# --------------------------------------------------------------------------------------------------
# Optimizers


class SAM(torch.optim.Optimizer):
    """Sharpness-Aware Minimisation around a base optimizer (two passes per step).

    ``first_step`` moves every parameter to w + rho * g / ||g|| (the global L2 norm over all
    gradients) and remembers the move; ``second_step`` moves back to w and lets the base optimizer
    step with the gradient taken at the perturbed point.
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], base: Callable[..., torch.optim.Optimizer],
                 rho: float = 0.05, **base_kwargs: Any):
        if rho <= 0:
            raise ValueError(f"SAM's rho must be > 0. Got {rho} instead.")
        super().__init__(params, dict(rho=rho, **base_kwargs))
        self.base = base(self.param_groups, **base_kwargs)
        self.param_groups = self.base.param_groups  # one set of groups: schedulers see the base lr
        self.defaults.update(self.base.defaults)

    @torch.no_grad()
    def first_step(self) -> None:
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.norm(torch.stack([g.norm(2) for g in grads]), 2) if grads else torch.tensor(0.0)
        for group in self.param_groups:
            scale = group["rho"] / (norm + 1e-12)
            for p in group["params"]:
                if p.grad is None:
                    continue
                e_w = p.grad * scale.to(p)
                p.add_(e_w)
                self.state[p]["e_w"] = e_w

    @torch.no_grad()
    def second_step(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None or "e_w" not in self.state[p]:
                    continue
                p.sub_(self.state[p].pop("e_w"))
        self.base.step()

    def step(self, closure: Callable[[], torch.Tensor] | None = None):  # type: ignore[override]
        """Both passes; ``closure`` must zero the gradients, compute the loss and call backward."""
        if closure is None:
            raise RuntimeError("SAM.step needs a closure (the trainer calls first_step/second_step itself).")
        self.first_step()
        with torch.enable_grad():
            loss = closure()
        self.second_step()
        return loss

    def state_dict(self) -> dict[str, Any]:  # the base optimizer's state is the state worth keeping
        return self.base.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base.load_state_dict(state_dict)
        self.param_groups = self.base.param_groups


def make_optimizer(name: str, params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float = 0.0,
                   momentum: float = 0.9, sam_rho: float = 0.05, sam_base: str = "sgd") -> torch.optim.Optimizer:
    """adam | adamw | sgd | sam (around ``sam_base``)."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "sam":
        if sam_base == "sgd":
            return SAM(params, torch.optim.SGD, rho=sam_rho, lr=lr, momentum=momentum, weight_decay=weight_decay)
        if sam_base == "adam":
            return SAM(params, torch.optim.Adam, rho=sam_rho, lr=lr, weight_decay=weight_decay)
        raise ValueError(f"sam_base {sam_base!r} is not allowed; use 'sgd' or 'adam'.")
    raise ValueError(f"optimizer {name!r} is not allowed; use adam, adamw, sgd or sam.")


def make_scheduler(name: str, optimizer: torch.optim.Optimizer, epochs: int, gamma: float = 0.9,
                   step_size: int = 10) -> torch.optim.lr_scheduler.LRScheduler | None:
    """none | exponential | step | cosine, stepped once per epoch."""
    opt = optimizer.base if isinstance(optimizer, SAM) else optimizer
    if name == "none":
        return None
    if name == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(opt, gamma=gamma)
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=step_size, gamma=gamma)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    raise ValueError(f"scheduler {name!r} is not allowed; use none, exponential, step or cosine.")


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of one epoch's draws: a pure function of (seed, epoch)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


# --------------------------------------------------------------------------------------------------
# The loop

EVAL_POINTS = 10   # validation evaluations per fit (at evenly spaced steps; the last one at the final step)


def evaluation_steps(total_steps: int, points: int = EVAL_POINTS) -> set[int]:
    """The global steps (1-based) after which the loop evaluates: ``points`` evenly spaced, the last one
    at ``total_steps`` (every step when there are fewer steps than points)."""
    if total_steps <= 0:
        return set()
    return {max(1, round(k * total_steps / points)) for k in range(1, points + 1)} | {total_steps}


def batch_images(batch: dict[str, Any]) -> int:
    """Images in ``batch['x']``, whatever its layout: (B, 3, S, S) or (B, K, 3, S, S) for K branches."""
    x = batch["x"]
    return int(x.numel() // max(1, x.shape[-3] * x.shape[-2] * x.shape[-1]))


class Trainer:
    """Trains ``method.model_`` with ``method.loss``; see the module docstring.

    Besides the weights, ``fit`` returns the cell's cost and learning curve (DESIGN.md section 9):
    ``train_steps``, ``train_anchor_images`` (``method.batch_anchors`` summed: the images whose label the
    loss is about, one per QCS quadruplet or triplet), ``train_forward_images`` (every image through the
    network, all branches, both of SAM's passes), ``train_seconds`` / ``train_cpu_seconds`` (wall and
    process CPU time, summed over resumed attempts) and ``curve``: the training loss and, with a
    validation split, the validation accuracy and mean class accuracy at ``EVAL_POINTS`` evenly spaced
    steps. ``select='best_val'`` keeps the weights of the best of those evaluations.
    """

    def __init__(self, method: "TorchMethod"):
        self.m = method
        self.device = method.device_
        self.workdir = Path(method.workdir) if getattr(method, "workdir", None) else None
        self.progress = getattr(method, "progress", None)

    def fit(self, train: "FERDataset", val: "FERDataset | None") -> dict[str, Any]:
        m = self.m
        model = m.model_
        optimizer = make_optimizer(m.optimizer, [p for p in model.parameters() if p.requires_grad], m.lr,
                                   m.weight_decay, m.momentum, m.sam_rho, m.sam_base)
        scheduler = make_scheduler(m.scheduler, optimizer, m.epochs, m.gamma, m.step_size)
        sam = isinstance(optimizer, SAM)
        amp = m.amp and self.device.type == "cuda"
        amp_dtype = torch.bfloat16 if sam and torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float16
        if sam and amp_dtype == torch.float16:
            amp = False  # loss scaling across SAM's two passes is not supported: train in float32
        scaler = torch.amp.GradScaler("cuda", enabled=amp and amp_dtype == torch.float16)

        state: dict[str, Any] = {"epoch": 0, "step": 0, "anchors": 0, "forward": 0, "seconds": 0.0, "cpu_seconds": 0.0,
                                 "best_score": -math.inf, "best_epoch": 0, "best_step": 0, "best_state": None,
                                 "history": [], "curve": [], "window": [0.0, 0]}
        key = self._config_key(train)
        resumed = self._resume(key, model, optimizer, scheduler, scaler, state)
        steps_per_epoch = sum(1 for _ in m.sampler(train, epoch_generator(m.seed, 0)))
        evaluate_at = evaluation_steps(steps_per_epoch * m.epochs)
        bar = tqdm(total=(m.epochs - state["epoch"]) * steps_per_epoch, desc=m.display_name(), unit="step", leave=False,
                   disable=not (self.progress if self.progress is not None else sys.stderr.isatty()))
        wall, cpu = time.perf_counter(), time.process_time()
        cuda = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            for epoch in range(state["epoch"], m.epochs):
                torch.manual_seed(m.seed * 1_000_003 + epoch)  # dropout etc.; scoped by fork_rng
                generator = epoch_generator(m.seed, epoch)
                m.on_epoch_start(epoch)
                model.train()
                total, count = 0.0, 0
                for step, index in enumerate(m.sampler(train, generator)):
                    batch = m.make_batch(index, generator)

                    def compute() -> torch.Tensor:
                        with torch.autocast(self.device.type, dtype=amp_dtype, enabled=amp):
                            return m.loss(batch)

                    optimizer.zero_grad(set_to_none=True)
                    loss = compute()
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        raise Diverged(epoch, step, value)
                    scaler.scale(loss).backward()
                    if sam:
                        optimizer.first_step()
                        optimizer.zero_grad(set_to_none=True)
                        compute().backward()
                        self._clip(model, optimizer, scaler)
                        optimizer.second_step()
                    else:
                        self._clip(model, optimizer, scaler)
                        scaler.step(optimizer)
                        scaler.update()
                    anchors = int(m.batch_anchors(batch))
                    total += value * anchors
                    count += anchors
                    state["step"] += 1
                    state["anchors"] += anchors
                    state["forward"] += batch_images(batch) * (2 if sam else 1)
                    state["window"][0] += value * anchors
                    state["window"][1] += anchors
                    bar.update(1)
                    if state["step"] in evaluate_at:
                        self._evaluate(val, state, epoch + (step + 1) / max(steps_per_epoch, 1))
                if scheduler is not None:
                    scheduler.step()
                m.on_epoch_end(epoch)
                record = {"epoch": epoch + 1, "train_loss": total / max(count, 1), "step": state["step"],
                          "anchor_images": state["anchors"]}
                bar.set_postfix(loss=f"{record['train_loss']:.4f}")
                state["history"].append(record)
                state["epoch"] = epoch + 1
                now_wall, now_cpu = time.perf_counter(), time.process_time()
                state["seconds"] += now_wall - wall
                state["cpu_seconds"] += now_cpu - cpu
                wall, cpu = now_wall, now_cpu
                self._save(key, model, optimizer, scheduler, scaler, state)
        bar.close()
        if not state["curve"] or state["curve"][-1]["step"] != state["step"]:
            self._evaluate(val, state, float(state["epoch"]))  # the final point (resumed from the last epoch)
        if m.select == "best_val" and state["best_state"] is not None:
            model.load_state_dict(state["best_state"])
        seconds = state["seconds"]
        return {"history": state["history"], "curve": state["curve"], "best_epoch": state["best_epoch"],
                "best_step": state["best_step"], "best_val": state["best_score"], "resumed_from_epoch": resumed,
                "train_seconds": seconds, "train_cpu_seconds": state["cpu_seconds"], "train_steps": state["step"],
                "train_anchor_images": state["anchors"], "train_forward_images": state["forward"],
                "train_images_per_s": state["forward"] / seconds if seconds > 0 else float("nan")}

    def _evaluate(self, val: "FERDataset | None", state: dict[str, Any], epoch: float) -> None:
        """One point of the learning curve: training loss since the last point, and on ``val`` the accuracy,
        mean class accuracy and the method's selection score (kept as the best when it improves)."""
        m, model = self.m, self.m.model_
        window = state["window"]
        point = {"step": state["step"], "epoch": round(epoch, 4), "anchor_images": state["anchors"],
                 "train_loss": window[0] / window[1] if window[1] else float("nan")}
        state["window"] = [0.0, 0]
        if val is not None:
            from fer_bench.metrics import accuracy, mean_class_accuracy
            pred = np.asarray(m.validation_predictions(val))
            point["val_accuracy"] = accuracy(val.labels, pred)
            point["val_mean_class_accuracy"] = mean_class_accuracy(val.labels, pred)
            score = float(m.validation_score(val, pred))
            point["val_score"] = score
            model.train()
            if m.select == "best_val" and score > state["best_score"]:
                state.update(best_score=score, best_epoch=epoch, best_step=state["step"],
                             best_state=copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()}))
        state["curve"].append(point)

    def _clip(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
        if self.m.grad_clip is not None:
            if scaler.is_enabled():
                scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.m.grad_clip)

    # -- checkpoints ---------------------------------------------------------------------------------
    def _config_key(self, train: "FERDataset") -> str:
        payload = json.dumps({"params": self.m.get_params(), "method": self.m.display_name(),
                              "train": train.fingerprint}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()

    def _save(self, key: str, model, optimizer, scheduler, scaler, state: dict[str, Any]) -> None:
        if self.workdir is None:
            return
        blob = {"key": key, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "scaler": scaler.state_dict(), "method": self.m.training_state(),
                **{k: state[k] for k in RESUMED}}
        with atomic_path(self.workdir / CHECKPOINT) as tmp:
            torch.save(blob, tmp)

    def _resume(self, key: str, model, optimizer, scheduler, scaler, state: dict[str, Any]) -> int:
        path = self.workdir / CHECKPOINT if self.workdir is not None else None
        if path is None or not path.is_file():
            return 0
        try:
            blob = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as exc:  # a torn or foreign file: start over, say so
            log.warning("ignoring unreadable checkpoint %s (%s); training from scratch", path, exc)
            return 0
        if blob.get("key") != key:
            log.warning("checkpoint %s belongs to another configuration or dataset; training from scratch", path)
            return 0
        model.load_state_dict(blob["model"])
        optimizer.load_state_dict(blob["optimizer"])
        if scheduler is not None and blob["scheduler"] is not None:
            scheduler.load_state_dict(blob["scheduler"])
        scaler.load_state_dict(blob["scaler"])
        state.update({k: blob[k] for k in RESUMED if k in blob})
        self.m.load_training_state(blob.get("method") or {})
        log.info("resumed %s from %s at epoch %d", self.m.display_name(), path, state["epoch"])
        return int(state["epoch"])

