"""The method contract (DESIGN.md section 3): ``Method`` and ``TorchMethod``.

In the spirit of scikit-learn estimators: the constructor only stores declared parameters (checked
once, in one voice), ``fit`` returns ``self``, fitted state ends in ``_``, ``predict`` derives from
``predict_proba`` in the base class. ``TorchMethod`` owns the one training loop
(:mod:`fer_bench.train`); a plugin writes only its maths: ``build``, ``loss`` and, where needed,
``sampler``, ``make_batch``, ``on_epoch_end``, ``features`` and ``logits``.

Profiles: every method declares ``test`` (seconds on CPU), ``quick`` (the default, minutes on a
2-core CPU) and ``paper`` (the paper's hyperparameters, per dataset where the paper differs, under
the key ``"datasets"``). ``resolve_params`` applies declared defaults, then the profile, then the
per-dataset paper values, then ``--set`` overrides.
"""
from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import fer_bench
from fer_bench.data import FERDataset, stratified_holdout
from fer_bench.evaluation import MetricSpec
from fer_bench.fileio import atomic_path, atomic_write_text
from fer_bench.params import InvalidValue, Param, ParameterError, check_values, choice, log_uniform  # noqa: F401
from fer_bench.params import parse_scalar  # noqa: F401
from fer_bench.models import IMAGENET_MEAN, IMAGENET_STD
from fer_bench.models.backbones import resize_images
from fer_bench.models.pretrained import check_pretrained, weights_records
from fer_bench.registry import get_method
from fer_bench.train import Trainer

log = logging.getLogger(__name__)

PROFILES = ("test", "quick", "paper")
# The training loop's shared tuning space (fer-bench tune): every torch method searches these the same way.
SCHEDULERS = ("none", "exponential", "step", "cosine")
LR_SPACE = log_uniform(1e-4, 1e-2)
WEIGHT_DECAY_SPACE = choice(0.0, 1e-5, 1e-4, 1e-3)
SCHEDULE_SPACE = choice("none", "cosine", "exponential")
AUGMENT_CHOICES = ("none", "light", "standard")   # the presets of fer_bench.data.augment
AUGMENT_SPACE = choice("none", "light")

# The quick profile's training budget, stated once and the same for every method (DESIGN.md section 9):
# QUICK_EPOCHS passes of anchors over the training set (anchor images = QUICK_EPOCHS x training-set size),
# QUICK_BATCH anchors per step. ``--budget epochs=N`` changes the first for every method of a run.
QUICK_EPOCHS = 10
QUICK_BATCH = 128
# The quick profile's initialisation, the same for every method (#17): fer-bench's face-pretrained trunks
# (``fer_bench.models.pretrained``; identity classification of synthetic faces, no expression information),
# the analogue of the MS-Celeb / ImageNet weights every seed paper starts from. ``--set '*.pretrained=none'``
# gives the scratch regime.
QUICK_INIT = "synthetic-faces"
# The quick profile's augmentation, the same for every method (#17): none. At this budget (550 steps) light
# augmentation held methods back (seed 0, test accuracy, light -> none: sgm 62.1 -> 65.5, dcs's base network
# 57.7 -> 60.7, baseline 81.7 -> 82.1; triplet 72.1 -> 68.8, inside its spread over seeds of 3.7; siamese's Q6),
# and PaCa's static clustering cannot augment at all (cached per-image assignments), so "light for those that can"
# was a difference between methods nobody had chosen. Equal-effort searches may pick light (AUGMENT_SPACE).
QUICK_AUGMENT = "none"


class NotFittedError(RuntimeError):
    """A method was used before ``fit``."""


def parse_overrides(items: Iterable[str], method_names: Iterable[str]) -> dict[str, dict[str, str]]:
    """``["qcs.lr=1e-5", "baseline.epochs=3"]`` -> ``{"qcs": {"lr": "1e-5"}, ...}`` (values stay text).

    ``method`` must be one of ``method_names`` (or ``*`` for every method); values are parsed and
    checked later against each method's declared parameters.
    """
    names = set(method_names)
    out: dict[str, dict[str, str]] = {}
    for item in items:
        target, eq, value = item.partition("=")
        method, dot, param = target.partition(".")
        if not eq or not dot or not method or not param:
            raise ParameterError(f"--set {item!r} is not of the form method.param=value; write e.g. --set baseline.lr=1e-3.")
        if method != "*" and method not in names:
            raise ParameterError(f"--set {item!r} names method {method!r}, which is not in this run "
                                 f"({', '.join(sorted(names))}); use one of those or '*'.")
        out.setdefault(method, {})[param.strip()] = value.strip()
    return out


# --------------------------------------------------------------------------------------------------
# The contract


class Method:
    """Base class of every fer-bench method.

    Subclasses declare ``params`` (merged with their bases') and ``profiles``, and implement
    ``_fit``, ``_predict_proba`` and ``_embed``. The base class owns input checks, the label space,
    the seed, output shapes and persistence.
    """

    params: ClassVar[dict[str, Param]] = {
        "seed": Param(0, int, low=0, doc="seed of every random draw of this method"),
        "device": Param("auto", str, doc="'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'"),
    }
    profiles: ClassVar[dict[str, dict[str, Any]]] = {"test": {}, "quick": {}, "paper": {}}
    registered_name: ClassVar[str] = ""
    learns: ClassVar[bool] = True   # False only for reference floors (majority): exempt from "beats the majority"
    # the figures ``extra_results`` may return (fer_bench.evaluation); a subclass adds to its bases' list
    extra_metrics: ClassVar[tuple[MetricSpec, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        merged: dict[str, Param] = {}
        for base in reversed(cls.__mro__):
            merged.update(base.__dict__.get("params", {}))
        cls.params = merged
        declared: dict[str, MetricSpec] = {}
        for base in reversed(cls.__mro__):
            declared.update({spec.name: spec for spec in base.__dict__.get("extra_metrics", ())})
        cls.extra_metrics = tuple(declared.values())
        for profile in PROFILES:
            cls.profiles.setdefault(profile, {})

    def __init__(self, **params: Any) -> None:
        for name, value in check_values(self.params, params, self.display_name()).items():
            setattr(self, name, value)

    # -- configuration -----------------------------------------------------------------------------
    @classmethod
    def display_name(cls) -> str:
        return cls.registered_name or cls.__name__

    def get_params(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.params}

    def set_params(self, **params: Any) -> "Method":
        new = {**self.get_params(), **params}
        self.__init__(**new)  # type: ignore[misc]
        return self

    def clone(self) -> "Method":
        """A new, unfitted method with the same parameters."""
        return type(self)(**copy.deepcopy(self.get_params()))

    @classmethod
    def resolve_params(cls, profile: str = "quick", dataset: str | None = None,
                       overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Declared defaults <- profile <- paper per-dataset values <- per-initialisation values <- overrides,
        checked. A profile's ``inits`` table ({weights name: values}) applies when the resolved ``pretrained``
        is that name: hyperparameters chosen for fine-tuning those weights, which the random-init regime
        (``pretrained=None``) of the same profile does not get."""
        if profile not in PROFILES:
            raise ParameterError(f"Unknown profile {profile!r}; allowed: {', '.join(PROFILES)}.")
        table = dict(cls.profiles.get(profile, {}))
        per_dataset, per_init = table.pop("datasets", {}), table.pop("inits", {})
        values = {name: spec.default for name, spec in cls.params.items()}
        values.update(table)
        if dataset is not None:
            values.update(per_dataset.get(dataset, {}))
        if per_init:
            init = cls.params["pretrained"].check({**values, **(overrides or {})}.get("pretrained"))
            values.update(per_init.get(init, {}))
        values.update(overrides or {})
        return cls(**values).get_params()  # validates, coerces strings

    # -- the contract -------------------------------------------------------------------------------
    def fit(self, train: FERDataset, val: FERDataset | None = None) -> "Method":
        _check_dataset(train, "train", self.display_name())
        if val is not None:
            _check_dataset(val, "val", self.display_name())
            if tuple(val.classes) != tuple(train.classes):
                raise ValueError(f"{self.display_name()}: val classes {val.classes} differ from train classes {train.classes}.")
        self.classes_ = tuple(train.classes)
        self.num_classes_ = len(self.classes_)
        self._fit(train, val)
        self.is_fitted_ = True
        return self

    def predict_proba(self, data: FERDataset | np.ndarray) -> np.ndarray:
        images = self._check_input(data)
        proba = np.asarray(self._predict_proba(images), dtype=np.float32)
        if proba.shape != (len(images), self.num_classes_):
            raise RuntimeError(f"{self.display_name()}._predict_proba returned shape {proba.shape}, "
                               f"expected {(len(images), self.num_classes_)}.")
        return proba

    def predict(self, data: FERDataset | np.ndarray) -> np.ndarray:
        """Indices into the training ``classes``: the arg-max of ``predict_proba``."""
        return self.predict_proba(data).argmax(axis=1).astype(np.int64)

    def embed(self, data: FERDataset | np.ndarray) -> np.ndarray:
        """The representation the paper studies, float32 (N, D)."""
        images = self._check_input(data)
        emb = np.ascontiguousarray(self._embed(images), dtype=np.float32)
        if emb.ndim != 2 or len(emb) != len(images):
            raise RuntimeError(f"{self.display_name()}._embed returned shape {emb.shape}, expected (N, D).")
        return emb

    # -- to implement -------------------------------------------------------------------------------
    def _fit(self, train: FERDataset, val: FERDataset | None) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement _fit (the Method contract).")

    def _predict_proba(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} must implement _predict_proba (the Method contract).")

    def _embed(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} must implement _embed (the Method contract).")

    def extra_results(self, out_dir: Path, train: FERDataset, test: FERDataset) -> dict[str, float]:
        """Method-specific results after evaluation: extra metrics (returned) and figures or arrays
        (written under ``out_dir``). Default: none. ``train.meta['clean_labels']`` holds the clean
        labels when the runner injected label noise."""
        return {}

    def weights_used(self) -> list[dict[str, str]]:
        """The pretrained weights the fitted method started from: ``{"name", "trunk", "sha256"}`` per part
        (recorded in each cell's info and the run manifest). Default: none."""
        return []

    def _get_state(self) -> dict[str, Any]:
        """Fitted state as a dict of tensors / numbers / lists (saved with weights_only=True)."""
        return {}

    def _set_state(self, state: dict[str, Any]) -> None:
        pass

    # -- persistence --------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write ``params.json`` and ``state.pt`` into ``directory``."""
        self._require_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"method": self.display_name(), "class": f"{type(self).__module__}.{type(self).__qualname__}",
                "params": self.get_params(), "classes": list(self.classes_), "fer_bench": fer_bench.__version__}
        atomic_write_text(directory / "params.json", json.dumps(meta, indent=2, sort_keys=True))
        state = {"classes": torch.tensor(self.classes_), **self._get_state()}
        with atomic_path(directory / "state.pt") as tmp:
            torch.save(state, tmp)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "Method":
        """Read a method written by ``save``; tensors are read with ``weights_only=True``."""
        directory = Path(directory)
        if not (directory / "params.json").is_file() or not (directory / "state.pt").is_file():
            raise FileNotFoundError(f"{str(directory)!r} holds no saved method (params.json and state.pt); "
                                    f"pass a folder written by Method.save.")
        meta = json.loads((directory / "params.json").read_text())
        target = cls
        if cls is Method or cls is TorchMethod:
            target = get_method(meta["method"])
        method = target(**meta["params"])
        state = torch.load(directory / "state.pt", map_location="cpu", weights_only=True)
        method.classes_ = tuple(int(c) for c in state.pop("classes").tolist())
        method.num_classes_ = len(method.classes_)
        method._set_state(state)
        method.is_fitted_ = True
        return method

    # -- helpers ------------------------------------------------------------------------------------
    def _require_fitted(self) -> None:
        if not getattr(self, "is_fitted_", False):
            raise NotFittedError(f"This {self.display_name()} instance is not fitted yet; call fit(train) first.")

    def _check_input(self, data: FERDataset | np.ndarray) -> np.ndarray:
        self._require_fitted()
        images = data.images if isinstance(data, FERDataset) else np.asarray(data)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"{self.display_name()} expects uint8 images (N, H, W, 3) or a FERDataset; "
                             f"got {images.dtype} {images.shape}.")
        return images

    def __repr__(self) -> str:
        changed = {k: v for k, v in self.get_params().items() if v != self.params[k].default}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in changed.items())})"


def _check_dataset(data: FERDataset, role: str, who: str) -> None:
    if not isinstance(data, FERDataset):
        raise TypeError(f"{who}.fit expects FERDataset objects for {role}; got {type(data).__name__}.")
    if len(data) == 0:
        raise ValueError(f"{who}.fit got an empty {role} split ({data.name}/{data.split}).")


def resolve_device(device: str) -> torch.device:
    """'auto' -> CUDA when present, else CPU; anything else is passed to torch.device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ParameterError(f"device {device!r} is not a torch device; use 'auto', 'cpu', 'cuda' or 'cuda:N'.") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ParameterError(f"device {device!r} was asked for but CUDA is not available here; use --device cpu or auto.")
    return resolved


# --------------------------------------------------------------------------------------------------
# Torch methods


class TorchMethod(Method):
    """A method trained by the one training loop. Plugins implement ``build`` and ``loss``.

    Optional hooks, in the order the loop calls them: ``on_fit_start(train)`` (after the training data
    is loaded and the network built: auxiliary stages, per-fit state), then per epoch
    ``on_epoch_start(epoch)``, ``sampler(train, generator)`` (index batches), ``make_batch`` (index ->
    batch dict, with any per-batch extra inputs), ``loss``, ``batch_anchors(batch)`` (the images whose
    label the loss is about, for the budget), ``on_epoch_end(epoch)``; at each evaluation point
    ``validation_predictions(val)`` and ``validation_score(val, pred)``; finally ``after_fit(train)``
    (a gallery, dropping training-only parts). ``training_state`` / ``load_training_state`` carry state
    that is not in the weights (e.g. sub-class labels) through checkpoints. ``features(x)`` is the
    embedding, ``logits(x)`` the class scores, ``frozen_parameters()`` names parameters that are meant
    to get no gradient. No plugin needs to override the private ``_fit``.
    """

    params: ClassVar[dict[str, Param]] = {
        "backbone": Param("smallcnn", str, doc="backbone name (fer_bench.models.BACKBONES)"),
        "pretrained": Param(None, str, none_ok=True, validate=check_pretrained,
                            doc="None (random init), 'synthetic-faces' (fer-bench's face-pretrained trunks), "
                                "'imagenet' or a path to a state_dict file"),
        "image_size": Param(48, int, low=8, high=512),
        "epochs": Param(10, int, low=1),
        "batch_size": Param(128, int, low=1),
        "eval_batch_size": Param(256, int, low=1),
        "optimizer": Param("adam", choices=("adam", "adamw", "sgd", "sam")),
        "sam_base": Param("sgd", choices=("sgd", "adam"), doc="base optimizer wrapped by SAM"),
        "sam_rho": Param(0.05, float, low=0.0, closed="neither"),
        "lr": Param(1e-3, float, low=0.0, closed="neither", search=LR_SPACE),
        "weight_decay": Param(0.0, float, low=0.0, search=WEIGHT_DECAY_SPACE),
        "momentum": Param(0.9, float, low=0.0, high=1.0, closed="left"),
        "scheduler": Param("none", choices=SCHEDULERS, search=SCHEDULE_SPACE),
        "gamma": Param(0.9, float, low=0.0, high=1.0, closed="right"),
        "step_size": Param(10, int, low=1),
        "augment": Param("light", choices=AUGMENT_CHOICES, search=AUGMENT_SPACE),
        "select": Param("last", choices=("last", "best_val"), doc="model selection: last epoch or best validation accuracy"),
        "val_fraction": Param(0.1, float, low=0.0, high=0.5, closed="left",
                              doc="hold-out carved from train when select='best_val' and no val split is given"),
        "amp": Param(True, bool, doc="mixed precision on CUDA (ignored on CPU)"),
        "grad_clip": Param(None, float, low=0.0, closed="neither", none_ok=True),
    }

    workdir: str | None = None   # runtime, not a parameter: where the trainer keeps its checkpoint
    progress: bool | None = None  # runtime: show a progress bar (None: only on a terminal)

    # -- plugin surface ------------------------------------------------------------------------------
    def build(self, num_classes: int) -> nn.Module:
        """Return the network; it becomes ``self.model_``."""
        raise NotImplementedError(f"{type(self).__name__} must implement build(num_classes) (a TorchMethod plugin).")

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scalar training loss of one batch (``batch['x']`` (B,3,S,S), ``batch['y']`` (B,), ...)."""
        raise NotImplementedError(f"{type(self).__name__} must implement loss(batch) (a TorchMethod plugin).")

    def sampler(self, train: FERDataset, generator: torch.Generator) -> Iterator[torch.Tensor]:
        """Index batches of one epoch: a seeded shuffle by default (last partial batch dropped if size 1),
        class-balanced draws when the dataset asks for them (``meta['sampler'] == 'balanced'``, AffectNet)."""
        if train.meta.get("sampler") == "balanced":
            from fer_bench.data.affectnet import balanced_batches
            yield from balanced_batches(train.labels, self.batch_size, generator)
            return
        order = torch.randperm(len(train), generator=generator)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            if len(chunk) > 1 or len(order) == 1:
                yield chunk

    def make_batch(self, index: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Augmented images, labels and (when present) label distributions of ``index``."""
        batch = {"index": index, "x": self.fetch(index, generator), "y": self.train_labels_[index.to(self.train_labels_.device)]}
        if self.train_dist_ is not None:
            batch["dist"] = self.train_dist_[index.to(self.train_dist_.device)]
        return batch

    def on_fit_start(self, train: FERDataset) -> None:
        """Called once per fit after the training data is loaded and ``model_`` built, before the first epoch."""

    def on_epoch_start(self, epoch: int) -> None:
        """Called before epoch ``epoch`` (0-based) draws its batches, also after a resume."""

    def on_epoch_end(self, epoch: int) -> None:
        """Called after epoch ``epoch`` (0-based), before its checkpoint is written."""

    def after_fit(self, train: FERDataset) -> None:
        """Called once after training (and best-validation reload), with the training data still loaded."""

    def batch_anchors(self, batch: dict[str, torch.Tensor]) -> int:
        """Anchors in ``batch``: images whose label the loss is about (one per pair, triplet or quadruplet)."""
        return len(batch["y"])

    def validation_predictions(self, val: FERDataset) -> np.ndarray:
        """(N,) class predictions of the model as it is now, for the learning curve and selection."""
        return self._predict_proba(val.images).argmax(1)

    def validation_score(self, val: FERDataset, pred: np.ndarray) -> float:
        """The model-selection score (higher is better) given ``validation_predictions``: accuracy by default."""
        return float((np.asarray(pred) == val.labels).mean())

    def training_state(self) -> dict[str, Any]:
        """State besides the weights that a resumed fit needs (tensors, numbers, lists); default none."""
        return {}

    def load_training_state(self, state: dict[str, Any]) -> None:
        """Restore what ``training_state`` returned, when resuming from a checkpoint."""

    def weights_used(self) -> list[dict[str, str]]:
        return weights_records(getattr(self, "model_", None))

    def frozen_parameters(self) -> set[str]:
        """Names (as in ``model_.named_parameters()``) of parameters meant to get no gradient in training."""
        return set()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding of normalised images (B,3,S,S) -> (B,D); default: the model's ``features``."""
        return self.model_.features(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (B,C); default: the model's forward."""
        return self.model_(x)

    # -- helpers for plugins -------------------------------------------------------------------------
    def fetch(self, index: torch.Tensor, generator: torch.Generator | None = None, augment: bool = True) -> torch.Tensor:
        """Training images ``index`` as normalised float (B,3,S,S) on the device, augmented when asked."""
        idx = index.to(self.train_images_.device)
        x = self.train_images_[idx].to(self.device_, non_blocking=True).float().div_(255.0)  # (B,3,S,S)
        if augment and self.augmenter_ is not None and generator is not None:
            x = self.augmenter_(x, generator)
        return (x - self.mean_) / self.std_

    def prepare_images(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (N,H,W,3) -> uint8 (N,3,S,S) resized to ``image_size`` (antialiased), kept on CPU."""
        return resize_images(images, self.image_size)

    @torch.no_grad()
    def map_batches(self, images: np.ndarray, fn) -> torch.Tensor:
        """Apply ``fn`` to normalised eval batches of ``images`` in eval mode; concatenated on CPU."""
        self.model_.eval()
        outputs = []
        for start in range(0, len(images), self.eval_batch_size):
            x = self.prepare_images(images[start:start + self.eval_batch_size]).to(self.device_).float().div_(255.0)
            x = (x - self.mean_) / self.std_
            with self._autocast():
                outputs.append(fn(x).float().cpu())
        return torch.cat(outputs) if outputs else torch.empty(0)

    @torch.no_grad()
    def map_training_images(self, fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
                            index: torch.Tensor | None = None,
                            device: str | torch.device | None = None) -> torch.Tensor:
        """``fn`` (default ``features``) of the loaded training images, all or the rows ``index``, as the model is
        now: eval mode, no augmentation, ``eval_batch_size`` images at a time; float, concatenated on ``device``
        (default the method's). The model's train / eval mode is restored. The one pass over the training images
        (gallery, per-epoch label amendment, training snapshots)."""
        fn = fn or self.features
        rows = torch.arange(len(self.train_images_)) if index is None else index
        was_training = self.model_.training
        self.model_.eval()
        outputs = []
        try:
            for start in range(0, len(rows), self.eval_batch_size):
                with self._autocast():
                    x = self.fetch(rows[start:start + self.eval_batch_size], augment=False)   # (b, 3, S, S)
                    outputs.append(fn(x).float().to(device or self.device_))
        finally:
            self.model_.train(was_training)
        return torch.cat(outputs)

    # -- the contract, implemented once --------------------------------------------------------------
    def _fit(self, train: FERDataset, val: FERDataset | None) -> None:
        self._setup_device()
        self.selection_ = "last epoch"
        if self.select == "best_val" and val is None:
            if self.val_fraction <= 0:
                raise ParameterError(f"{self.display_name()}: select='best_val' needs a val split or val_fraction > 0.")
            fit_idx, hold_idx, rule = stratified_holdout(train.labels, self.val_fraction, self.seed, train.groups)
            train, val = train.subset(fit_idx, "train"), train.subset(hold_idx, "val")
            self.selection_rule_ = rule
        else:
            self.selection_rule_ = "given val split" if val is not None else "none (last epoch)"
        self.start_fit(train)
        self.train_info_ = Trainer(self).fit(train, val)
        if self.select == "best_val":
            info = self.train_info_
            self.selection_ = (f"best validation score at step {info['best_step']} of {info['train_steps']} "
                               f"(epoch {info['best_epoch']:g})")
        self.after_fit(train)
        self._release_training_data()

    def start_fit(self, train: FERDataset) -> None:
        """Everything before the first epoch: the training data on the device, the augmenter, the network
        (its initialisation seeded by ``seed``) and ``on_fit_start``. The contract suite uses it to take
        one training step by hand."""
        from fer_bench.data.augment import BatchAugment

        if not hasattr(self, "device_"):
            self._setup_device()
        if not hasattr(self, "num_classes_"):
            self.classes_ = tuple(train.classes)
            self.num_classes_ = len(self.classes_)
        self._load_training_data(train)
        self.augmenter_ = None if self.augment == "none" else BatchAugment.from_string(self.augment)
        with torch.random.fork_rng(devices=[self.device_] if self.device_.type == "cuda" else []):
            torch.manual_seed(self.seed)  # parameter init of build(); scoped, restored on exit
            self.model_ = self.build(self.num_classes_).to(self.device_)
        self.on_fit_start(train)

    def _load_training_data(self, train: FERDataset) -> None:
        images = self.prepare_images(train.images)  # uint8 (N,3,S,S)
        keep_on_device = self.device_.type == "cuda" and images.numel() < 2 * 1024 ** 3
        self.train_images_ = images.to(self.device_) if keep_on_device else images
        self.train_labels_ = torch.from_numpy(train.labels).to(self.device_)
        self.train_dist_ = None if train.label_dist is None else torch.from_numpy(
            np.asarray(train.label_dist, dtype=np.float32)).to(self.device_)
        self.train_data_ = train

    def _release_training_data(self) -> None:
        for name in ("train_images_", "train_labels_", "train_dist_", "train_data_"):
            if hasattr(self, name):
                delattr(self, name)

    def _predict_proba(self, images: np.ndarray) -> np.ndarray:
        return torch.softmax(self.map_batches(images, self.logits), dim=1).numpy()

    def _embed(self, images: np.ndarray) -> np.ndarray:
        return self.map_batches(images, self.features).numpy()

    def _autocast(self):
        enabled = self.amp and self.device_.type == "cuda"
        return torch.autocast(device_type=self.device_.type, enabled=enabled)

    def _setup_device(self) -> None:
        """The resolved device and the input normalisation constants on it."""
        self.device_ = resolve_device(self.device)
        self.mean_ = torch.tensor(IMAGENET_MEAN, device=self.device_).view(1, 3, 1, 1)
        self.std_ = torch.tensor(IMAGENET_STD, device=self.device_).view(1, 3, 1, 1)

    def _ensure_model(self) -> None:
        if not hasattr(self, "device_"):
            self._setup_device()
        if not hasattr(self, "model_"):
            self.model_ = self.build(self.num_classes_).to(self.device_)

    def _get_state(self) -> dict[str, Any]:
        return {"model": {k: v.detach().cpu() for k, v in self.model_.state_dict().items()}}

    def _set_state(self, state: dict[str, Any]) -> None:
        self._ensure_model()
        self.model_.load_state_dict(state["model"])
        self.model_.eval()


class EmbeddingMethod(TorchMethod):
    """A torch method whose predictions are read from its embedding, not from a classification head.

    After training, the training set's embeddings are the gallery; ``predict_proba`` is the kNN vote
    among them (``classifier='knn'``, ties to the smaller class index) or a softmax over the training
    class centroids (``classifier='centroid'``, logits ``_centroid_logits``: minus the squared distance
    over twice ``centroid_sigma()`` squared, so the arg-max is the nearest centroid). The learning curve
    uses the same rule on the current embeddings of the (un-augmented) training images.
    ``gallery_classes`` maps training labels to classes (DGMS trains on sub-classes).
    """

    params: ClassVar[dict[str, Param]] = {
        "classifier": Param("knn", choices=("knn", "centroid"), doc="predict by kNN vote or nearest class centroid"),
        "knn_k": Param(11, int, low=1, doc="neighbours of the kNN classifier"),
    }

    def centroid_sigma(self) -> float:
        """Scale of the centroid classifier's logits (only its probabilities depend on it)."""
        return 1.0

    def gallery_classes(self, train_labels: np.ndarray) -> np.ndarray:
        """Class of each training label (the identity; DGMS maps sub-classes to classes)."""
        return np.asarray(train_labels)

    # -- the gallery ----------------------------------------------------------------------------------
    def after_fit(self, train: FERDataset) -> None:
        self._set_gallery(self.train_embeddings(), self.gallery_classes(self.train_labels_.cpu().numpy()))

    def _set_gallery(self, emb: np.ndarray, labels: np.ndarray) -> None:
        self.gallery_emb_ = torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32))   # (N, D)
        self.gallery_labels_ = torch.from_numpy(np.asarray(labels, dtype=np.int64))         # (N,)

    def gallery_proba(self, emb: np.ndarray, gallery: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """(N, C) class probabilities of embeddings ``emb`` against a gallery (``gallery``, ``labels``)."""
        from fer_bench import metrics as M
        if self.classifier == "knn":
            k = min(self.knn_k, len(labels))
            return M.knn_predict_proba(gallery, labels, emb, k=k, num_classes=self.num_classes_, device=self.device_)
        else:  # every other declared choice ('centroid'; SGM calls it 'gaussian') is the nearest-centroid rule
            means = class_means(torch.from_numpy(gallery), torch.from_numpy(labels), self.num_classes_)  # (C, D)
            return torch.softmax(self._centroid_logits(torch.from_numpy(np.asarray(emb, np.float32)), means),
                                 dim=1).float().numpy()

    def _centroid_logits(self, emb: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
        return gaussian_logits(emb, means, self.centroid_sigma())

    def _predict_proba(self, images: np.ndarray) -> np.ndarray:
        return self.gallery_proba(self._embed(images), self.gallery_emb_.numpy(), self.gallery_labels_.numpy())

    def validation_predictions(self, val: FERDataset) -> np.ndarray:
        labels = self.gallery_classes(self.train_labels_.cpu().numpy())
        return self.gallery_proba(self._embed(val.images), self.train_embeddings(), labels).argmax(1)

    def train_embeddings(self) -> np.ndarray:
        """(N, D) embeddings of the loaded training images now: eval mode, no augmentation."""
        return self.map_training_images(device="cpu").numpy()

    def _get_state(self) -> dict[str, Any]:
        return {**super()._get_state(), "gallery_emb": self.gallery_emb_, "gallery_labels": self.gallery_labels_}

    def _set_state(self, state: dict[str, Any]) -> None:
        self._set_gallery(state.pop("gallery_emb").numpy(), state.pop("gallery_labels").numpy())
        super()._set_state(state)


def gaussian_logits(emb: torch.Tensor, means: torch.Tensor, sigma: float) -> torch.Tensor:
    """(N, C) ``-||z - mu_j||^2 / (2 sigma^2)`` in float64; -inf for classes without a mean (NaN rows)."""
    d2 = torch.cdist(emb.double(), torch.nan_to_num(means.double())).pow(2)             # (N, C)
    d2[:, torch.isnan(means).any(1)] = float("inf")
    return -d2 / (2.0 * sigma ** 2)


def nearest_centroid(emb: torch.Tensor, gallery: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N,) the class whose mean over the gallery (``gallery`` (M, D), ``labels`` (M,)) is nearest each row of
    ``emb`` (N, D): the arg-max of ``gaussian_logits``, ties to the smaller class; classes without members never win."""
    return gaussian_logits(emb, class_means(gallery, labels, num_classes), 1.0).argmax(1)


def class_means(emb: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, D) class means of ``emb`` (N, D); NaN rows for classes without members."""
    onehot = F.one_hot(labels.long(), num_classes).to(emb.dtype)       # (N, C)
    counts = onehot.sum(0)[:, None]                                     # (C, 1)
    means = onehot.T @ emb / counts.clamp_min(1)                        # (C, D)
    means[counts[:, 0] == 0] = float("nan")
    return means
