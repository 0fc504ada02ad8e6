"""The contract suite every registered method must pass (scikit-learn's ``check_estimator`` habit).

``check_method(name)`` fits the method in its ``test`` profile on a tiny learnable toy dataset and
checks the contract of DESIGN.md section 3. New methods get it for free: the test suite runs it over
every name in the registry. Each check raises ``AssertionError`` with a sentence saying what broke.
"""
from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

import fer_bench.reports  # noqa: F401  (the harness's metrics, registered with their reports)
from fer_bench.data import FERDataset, fingerprint_of
from fer_bench.evaluation import metric_spec
from fer_bench.method import PROFILES, Method, NotFittedError, ParameterError, TorchMethod
from fer_bench.registry import DATASETS, get_method, unknown_name_message
from fer_bench.train import epoch_generator


def toy_dataset(n: int = 96, size: int = 24, num_classes: int = 3, seed: int = 0, split: str = "train") -> FERDataset:
    """A tiny learnable dataset: class c is a bright square in corner c on a noisy background."""
    rng = np.random.default_rng([seed, {"train": 0, "val": 1, "test": 2}.get(split, 3)])
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    images = rng.integers(0, 90, size=(n, size, size, 3), dtype=np.uint8)
    half = size // 2
    for i, c in enumerate(labels):
        r, q = divmod(int(c) % 4, 2)
        images[i, r * half:(r + 1) * half, q * half:(q + 1) * half] = np.uint8(200 + 10 * (c // 4))
    classes = tuple(range(1, 1 + num_classes))  # happy, sad, surprise ...
    return FERDataset(images=images, labels=labels.astype(np.int64), classes=classes, name="toy", split=split,
                      fingerprint=fingerprint_of("toy", n, size, num_classes, seed, split),
                      groups=np.arange(n) // 4)


def check_method(name: str, profile: str = "test", workdir: str | Path | None = None) -> list[str]:
    """Run every contract check on the registered method ``name``; returns the names of the checks run."""
    cls = get_method(name)
    params = cls.resolve_params(profile)
    params["device"] = "cpu"
    train, test = toy_dataset(split="train"), toy_dataset(n=30, split="test")
    done = []
    with tempfile.TemporaryDirectory() if workdir is None else contextlib.nullcontext(workdir) as tmp:
        for check in CHECKS:
            check(cls, params, train, test, Path(tmp))
            done.append(check.__name__)
    return done


def _fitted(cls: type[Method], params: dict, train: FERDataset) -> Method:
    method = cls(**params)
    returned = method.fit(train)
    assert returned is method, f"{cls.display_name()}.fit must return self, returned {type(returned).__name__}."
    return method


def check_profile_tables(cls, params, train, test, tmp) -> None:
    """Every profile of the method resolves, and every per-dataset table of a profile (``datasets``) names a
    registered dataset and resolves too: a misspelt dataset key would otherwise never apply, silently; every
    per-initialisation table (``inits``) resolves with its weights."""
    known = DATASETS.names()
    unknown_profiles = sorted(set(cls.profiles) - set(PROFILES))
    assert not unknown_profiles, (f"{cls.display_name()}: profile {unknown_profiles[0]!r} is not a fer-bench profile "
                                  f"({', '.join(PROFILES)}); it would never be used.")
    for profile, table in cls.profiles.items():
        cls.resolve_params(profile)
        for dataset in table.get("datasets", {}):
            assert dataset in known, (f"{cls.display_name()}: the {profile!r} profile has a table for dataset "
                                      f"{dataset!r}, which is not registered, so it never applies. "
                                      f"{unknown_name_message('dataset', dataset, known)}")
            cls.resolve_params(profile, dataset)
        for init in table.get("inits", {}):
            assert "pretrained" in cls.params and init not in (None, "none"), (
                f"{cls.display_name()}: the {profile!r} profile has an 'inits' table for {init!r}, but only a "
                f"method with a 'pretrained' parameter can have one, keyed by a weights name.")
            cls.resolve_params(profile, overrides={"pretrained": init})


def check_unknown_parameter_rejected(cls, params, train, test, tmp) -> None:
    try:
        cls(**params, no_such_parameter=1)
    except ParameterError as exc:
        assert "no_such_parameter" in str(exc), f"the error for an unknown parameter must name it: {exc}"
    else:
        raise AssertionError(f"{cls.display_name()} accepted an unknown parameter.")


def check_bad_value_rejected(cls, params, train, test, tmp) -> None:
    try:
        cls(**{**params, "seed": -1})
    except ParameterError as exc:
        assert "'seed'" in str(exc) and "Got -1" in str(exc), f"unclear error for a bad value: {exc}"
    else:
        raise AssertionError(f"{cls.display_name()} accepted seed=-1.")


def check_predict_before_fit_raises(cls, params, train, test, tmp) -> None:
    method = cls(**params)
    for call in (method.predict, method.predict_proba, method.embed):
        try:
            call(test)
        except NotFittedError as exc:
            assert "fit" in str(exc), f"the not-fitted error must say to call fit: {exc}"
        else:
            raise AssertionError(f"{cls.display_name()}.{call.__name__} before fit did not raise NotFittedError.")


def check_outputs(cls, params, train, test, tmp) -> None:
    method = _fitted(cls, params, train)
    n, c = len(test), train.num_classes
    proba = method.predict_proba(test)
    assert proba.shape == (n, c) and proba.dtype == np.float32, f"predict_proba gave {proba.dtype} {proba.shape}, expected float32 {(n, c)}."
    assert np.all(proba >= 0) and np.allclose(proba.sum(1), 1.0, atol=1e-4), "predict_proba rows must be >= 0 and sum to 1."
    pred = method.predict(test)
    assert pred.shape == (n,) and pred.dtype == np.int64, f"predict gave {pred.dtype} {pred.shape}, expected int64 ({n},)."
    assert pred.min() >= 0 and pred.max() < c, "predict must return indices into the training classes."
    assert np.array_equal(pred, proba.argmax(1)), "predict must be the arg-max of predict_proba."
    emb = method.embed(test)
    assert emb.dtype == np.float32 and emb.ndim == 2 and len(emb) == n, f"embed gave {emb.dtype} {emb.shape}, expected float32 (N, D)."
    assert np.all(np.isfinite(emb)), "embed returned non-finite values."
    _check_extra_results_are_declared(cls, method, train, test, tmp)   # on the same fit
    assert method.embed(test.images[:1]).shape == (1, emb.shape[1]), "embed of a single image must work."


def _check_extra_results_are_declared(cls, method: Method, train, test, tmp) -> None:
    """Every figure ``extra_results`` returns is declared (``extra_metrics`` or the harness's metric registry),
    so tables, benchmark files and the report know its scale and direction."""
    returned = method.extra_results(Path(tmp) / "extra", train, test)
    undeclared = sorted(n for n in returned if metric_spec(n, cls.extra_metrics) is None)
    assert not undeclared, (f"{cls.display_name()}.extra_results returned {len(undeclared)} undeclared metric(s) "
                            f"({', '.join(undeclared[:4])}); declare them in {cls.__name__}.extra_metrics "
                            f"(fer_bench.evaluation.MetricSpec).")


def check_same_seed_same_predictions(cls, params, train, test, tmp) -> None:
    a = _fitted(cls, params, train).predict_proba(test)
    b = _fitted(cls, params, train).predict_proba(test)
    assert np.array_equal(a, b), f"{cls.display_name()}: the same seed twice gave different predictions on CPU."


def check_params_clone_roundtrip(cls, params, train, test, tmp) -> None:
    method = cls(**params)
    assert method.get_params() == params, "get_params must return exactly the constructor's parameters."
    clone = method.clone()
    assert clone is not method and clone.get_params() == params, "clone must copy the parameters."
    assert not getattr(clone, "is_fitted_", False), "clone must return an unfitted method."


def check_save_load_roundtrip(cls, params, train, test, tmp) -> None:
    method = _fitted(cls, params, train)
    folder = method.save(Path(tmp) / f"saved_{cls.display_name()}")
    loaded = Method.load(folder)
    assert type(loaded) is cls, f"Method.load returned {type(loaded).__name__}, expected {cls.__name__}."
    assert loaded.get_params() == method.get_params(), "save/load must keep the parameters."
    assert loaded.classes_ == method.classes_, "save/load must keep the classes."
    assert np.allclose(loaded.predict_proba(test), method.predict_proba(test), atol=1e-6), "save/load changed predict_proba."
    assert np.allclose(loaded.embed(test), method.embed(test), atol=1e-5), "save/load changed embed."


def check_every_trainable_parameter_gets_a_gradient(cls, params, train, test, tmp) -> None:
    """One training batch by hand: every parameter with ``requires_grad`` that the method does not declare
    frozen (``frozen_parameters``) must receive a non-zero gradient. A part that never gets one never
    learns: e.g. a readout that does not see the tokens fed by the pixels."""
    method = cls(**params)
    if not isinstance(method, TorchMethod):
        return
    method.start_fit(train)
    method.on_epoch_start(0)
    generator = epoch_generator(method.seed, 0)
    index = next(iter(method.sampler(train, generator)))
    method.model_.train()
    batch = method.make_batch(index, generator)
    method.model_.zero_grad(set_to_none=True)
    method.loss(batch).backward()
    frozen = method.frozen_parameters()
    dead = [name for name, p in method.model_.named_parameters()
            if p.requires_grad and name not in frozen and (p.grad is None or not bool(p.grad.abs().sum() > 0))]
    assert not dead, (f"{cls.display_name()}: {len(dead)} trainable parameter(s) got no gradient on a training batch "
                      f"({', '.join(dead[:4])}{', ...' if len(dead) > 4 else ''}); they never influence the loss. "
                      f"Fix the network, or declare them in frozen_parameters() if they are meant to stay fixed.")


EASY_EPOCHS = 6         # the training budget of the easy-dataset check, on top of the test profile
UNTRAINED_LR = 1e-12    # the reference fit of that check: every hook runs, no weight moves
EASY_MARGIN = 0.10      # accuracy the fitted method must add to its untrained network and to the majority class


def check_beats_its_untrained_network_on_an_easy_dataset(cls, params, train, test, tmp) -> None:
    """Learning, not the random features of an untrained network, must carry the method on an easy dataset.

    The method is fitted for ``EASY_EPOCHS`` epochs of its test profile on ``easy_dataset``, and once more
    with ``lr=UNTRAINED_LR``: the same sampler, BatchNorm statistics, gallery and classifier around a network
    that does not move. The first fit must beat both that untrained network and the majority class by
    ``EASY_MARGIN``. Catches samplers, losses, schedules and readouts that leave the network where it started
    (e.g. a sampler that loses the labels) or the predictions at the majority class. The untrained reference
    matters: a kNN over an untrained network's features scores about 60 % here (the floor is 40 %). It is no
    speed test: the paper's random triplets (``triplet`` with ``sampling='random'``), which stayed at the
    untrained network's accuracy at the quick budget, learn this dataset (96 % against 61 % untrained) and pass.
    """
    if not cls.learns:
        return
    easy_train, easy_test = easy_dataset(split="train"), easy_dataset(n=120, split="test")
    chosen = {**params, "epochs": EASY_EPOCHS} if "epochs" in cls.params else params
    acc = _accuracy(cls(**chosen).fit(easy_train), easy_test)
    floor = float(np.bincount(easy_test.labels).max() / len(easy_test))
    untrained = floor                                                     # a method without a learning rate
    if "lr" in cls.params:
        untrained = _accuracy(cls(**{**chosen, "lr": UNTRAINED_LR}).fit(easy_train), easy_test)
    assert acc >= max(floor, untrained) + EASY_MARGIN, (
        f"{cls.display_name()}: test accuracy {acc:.3f} on the easy dataset after {EASY_EPOCHS} epochs of its test "
        f"profile; the same fit with lr={UNTRAINED_LR:g} (the untrained network) gets {untrained:.3f} and the "
        f"majority class {floor:.3f}. A method that learns beats both by {EASY_MARGIN:.2f}: look at its sampler, "
        f"loss, schedule and readout.")


def _accuracy(method: Method, data: FERDataset) -> float:
    return float((method.predict(data) == data.labels).mean())


EASY_COLOURS = np.array([[220, 40, 40], [40, 200, 40], [40, 80, 230], [220, 200, 30]], dtype=np.float64)  # RGB


def easy_dataset(n: int = 240, size: int = 24, seed: int = 0, split: str = "train") -> FERDataset:
    """4 classes in proportions 2:1:1:1 (the majority class is 40 %) that an untrained network reads poorly.

    Class c is the colour of a mark of ``size // 4`` pixels a side at the centre (red, green, blue, yellow:
    ``EASY_COLOURS``), on a background of blocks of ``size // 4`` pixels, each of a random grey level and a
    random colour cast. The background carries most of the variance of an untrained network's features: the
    kNN over them of sgm, triplet and dgms scores 56-63 % (``toy_dataset``'s bright corners it reads perfectly),
    against 93-100 % after ``EASY_EPOCHS`` of training. The mark is centred and symmetric: flips and light
    crops keep the class.
    """
    rng = np.random.default_rng([seed, {"train": 0, "val": 1, "test": 2}.get(split, 3)])
    labels = np.array([0, 0, 1, 2, 3])[np.arange(n) % 5]
    rng.shuffle(labels)
    cell = size // 4
    g = -(-size // cell)                                                  # blocks a side
    grey = rng.uniform(0, 255, size=(n, g, g, 1))                         # (N, g, g, 1)
    cast = rng.normal(0, 60, size=(n, g, g, 3))
    cast -= cast.mean(-1, keepdims=True)                                  # a hue shift, not a brightness one
    images = (grey + cast).repeat(cell, 1).repeat(cell, 2)[:, :size, :size]  # (N, S, S, 3)
    lo = (size - cell) // 2
    images[:, lo:lo + cell, lo:lo + cell] = EASY_COLOURS[labels][:, None, None, :]
    return FERDataset(images=np.clip(images, 0, 255).round().astype(np.uint8), labels=labels.astype(np.int64),
                      classes=(1, 2, 3, 4), name="easy", split=split,
                      fingerprint=fingerprint_of("easy", 2, n, size, seed, split),   # 2: the centre-colour version
                      groups=np.arange(n) // 4)


CHECKS: list[Callable] = [
    check_profile_tables,
    check_unknown_parameter_rejected,
    check_bad_value_rejected,
    check_predict_before_fit_raises,
    check_params_clone_roundtrip,
    check_outputs,
    check_same_seed_same_predictions,
    check_save_load_roundtrip,
    check_every_trainable_parameter_gets_a_gradient,
    check_beats_its_untrained_network_on_an_easy_dataset,
]
