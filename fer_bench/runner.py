"""Grid expansion, cells and executors (DESIGN.md section 6).

``expand_grid`` turns methods x datasets x seeds x label-noise rates x ``--set`` value lists into
``CellSpec``s; ``run_cell(spec, workdir)`` is pure given the spec (load splits -> label noise on
train -> fit -> embed / predict -> metrics -> artifacts) and returns a ``CellResult``; an executor
maps cells to results; ``run_grid`` writes every result into the store as it arrives, skips finished
cells and never lets one failing cell stop the grid.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import numpy as np
import torch

import fer_bench
from fer_bench.data import FERDataset, available_splits, get_dataset, in_label_space, load_dataset, parse_dataset_spec
from fer_bench.data.dataset import dataset_record
from fer_bench.data.noise import confusion_for, labels_hash, noisy_labels
from fer_bench.evaluation import EvalInputs, evaluate
from fer_bench.method import ParameterError, TorchMethod
from fer_bench.registry import METHODS, get_method, load_plugin_sources
import fer_bench.reports  # noqa: F401  (registers the built-in reports that evaluate() runs)
from fer_bench.store import STORE_NAME, Store

log = logging.getLogger(__name__)

CELLS_DIR = "cells"
TRAINING_KEY_FILE = "training_key"
# Torch CPU threads per cell, the same on every executor (``--threads-per-cell``): a cell's numbers depend
# on it in the last bits, and through training in more, so "same cell id, same numbers" needs it fixed.
# One thread per cell with as many cells at once as there are cores is also the faster use of a CPU.
DEFAULT_THREADS = 1


@dataclasses.dataclass(frozen=True)
class CellSpec:
    """Everything that determines one cell's result. ``cell_id`` hashes all of it but where the data
    lives (``data_root``) and the device, which change where and how fast, not what is computed."""

    method: str
    params: dict
    dataset: str
    dataset_options: dict
    seed: int
    label_noise: float = 0.0
    noise_kind: str = "symmetric"
    profile: str = "quick"
    overrides: dict = dataclasses.field(default_factory=dict)
    version: str = fer_bench.__version__
    data_root: str | None = None
    test_dataset: str | None = None        # train on ``dataset``, test on this one (its test split)
    test_dataset_options: dict = dataclasses.field(default_factory=dict)
    noise_matrix: dict | None = None       # asymmetric noise: {true emotion: {noisy emotion: weight}}
    budget: dict | None = None             # the run's training budget ({"epochs": N}), None: each profile's own
    threads: int = DEFAULT_THREADS         # torch's CPU threads: the last bits of a CPU result depend on it

    @property
    def cell_id(self) -> str:
        payload = dataclasses.asdict(self)
        payload.pop("data_root")
        if self.test_dataset is None:  # cells of one dataset keep the ids they had before cross-dataset cells
            payload.pop("test_dataset")
            payload.pop("test_dataset_options")
        if self.noise_matrix is None:
            payload.pop("noise_matrix")
        if self.budget is None:
            payload.pop("budget")
        if self.threads == DEFAULT_THREADS:  # cells at the default keep the ids they had before it was recorded
            payload.pop("threads")
        restated = {k for k in self.overrides if _restates_former_default(self.method, self.profile, k, self.params)}
        if restated:
            # a cell that restates a former default keeps the id it had when that was the default and needed no
            # override: the resolved parameters are the same (see FORMER_QUICK_DEFAULTS)
            payload["overrides"] = {k: v for k, v in self.overrides.items() if k not in restated}
        # a parameter declared id_neutral at its default stays out of the id (see fer_bench.params.Param)
        declared = METHODS.get(self.method).params if self.method in METHODS else {}
        neutral = {k for k, p in declared.items() if p.id_neutral and self.params.get(k) == p.default}
        payload["params"] = {k: v for k, v in self.params.items() if k != "device" and k not in neutral}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @property
    def dataset_label(self) -> str:
        """``name[:non-default options]``, and ``-> test dataset`` for a cross-dataset cell."""
        label = _dataset_label(self.dataset, self.dataset_options)
        if self.test_dataset is not None:
            label += " -> " + _dataset_label(self.test_dataset, self.test_dataset_options)
        return label

    @property
    def overrides_label(self) -> str:
        """``k=v,...`` of the ``--set`` values; random init is not named (as in the id: see ``cell_id``), the
        ``init`` column of the tables shows every cell's initialisation."""
        scratch = self.params.get("pretrained") is None
        return ",".join(f"{k}={v}" for k, v in sorted(self.overrides.items()) if not (scratch and k == "pretrained"))

    def to_json(self) -> str:
        payload = dataclasses.asdict(self)
        payload.update(cell_id=self.cell_id, dataset_label=self.dataset_label, overrides_label=self.overrides_label)
        return json.dumps(payload, sort_keys=True, default=str)


def _dataset_label(name: str, options: dict) -> str:
    given = ",".join(f"{k}={v}" for k, v in sorted(options.items()) if v != get_dataset(name).options.get(k))
    return f"{name}:{given}" if given else name


@dataclasses.dataclass
class CellResult:
    cell_id: str
    status: str                    # "done" | "failed"
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    artifacts: dict[str, str] = dataclasses.field(default_factory=dict)
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    error: str = ""
    traceback: str = ""
    curve: list[dict[str, float]] = dataclasses.field(default_factory=list)   # learning-curve points


# --------------------------------------------------------------------------------------------------
# Grid


# Values the quick profiles had before a change of the shared quick settings, per parameter: (value, methods whose
# quick profile had it; None: every method and profile). A cell that sets one of them back with --set is the
# experiment a cell recorded before the change was, when it needed no override, so the override stays out of its
# id (committed stores and --reuse still find it; the tables' labels still show it). pretrained=None: random init,
# before the quick profiles started from the shipped trunks (#17); augment=light: before QUICK_AUGMENT (#17).
FORMER_QUICK_DEFAULTS: dict[str, tuple[Any, frozenset[str] | None]] = {
    "pretrained": (None, None),
    "augment": ("light", frozenset({"baseline", "qcs", "dcs", "sgm", "triplet", "dgms", "sceald"})),
}


def _restates_former_default(method: str, profile: str, name: str, params: dict[str, Any]) -> bool:
    if name not in FORMER_QUICK_DEFAULTS:
        return False
    value, methods = FORMER_QUICK_DEFAULTS[name]
    return params.get(name) == value and (methods is None or (profile == "quick" and method in methods))


def expand_grid(methods: list[str], datasets: list[str], seeds: list[int], label_noise: list[float],
                profile: str, overrides: dict[str, dict[str, str]], device: str = "auto",
                data_root: str | None = None, noise_kind: str = "symmetric",
                test_datasets: list[str | None] | None = None, noise_matrix: dict | None = None,
                budget: dict | None = None, threads: int = DEFAULT_THREADS) -> list[CellSpec]:
    """The cells of a grid, in a stable order. ``overrides`` values may be comma lists: each value is
    a point of the grid (``--set baseline.lr=1e-3,1e-4`` runs both). ``test_datasets``: an axis of
    datasets to test on instead of the training dataset's own test split (None in it: the own split).
    ``budget`` ({"epochs": N}, see ``parse_budget``) sets every trained method's epochs over its profile;
    a ``--set method.epochs`` still wins for that method. ``threads``: torch CPU threads of every cell."""
    check_grid_axes(methods, seeds, label_noise)
    if threads < 1:
        raise ParameterError(f"--threads-per-cell must be at least 1, got {threads}.")
    budget = parse_budget(budget)
    if budget and "epochs" in overrides.get("*", {}):
        raise ParameterError("--budget and --set '*.epochs' both set every method's epochs; keep one of them.")
    check_no_run_level_sets(overrides)
    everyone = overrides.get("*", {})
    declared = set().union(*(get_method(m).params for m in methods)) if methods else set()
    nowhere = sorted(set(everyone) - declared)
    if nowhere:
        raise ParameterError(f"--set '*.{nowhere[0]}': no method of this run has a parameter {nowhere[0]!r}.")
    cells = []
    tests = [_resolved(t) if t is not None else (None, {}) for t in (test_datasets or [None])]
    for method_name, dataset_spec, (test_name, test_options) in itertools.product(methods, datasets, tests):
        cls = get_method(method_name)
        name, resolved_options = _resolved(dataset_spec)
        # '*' sets a parameter of every method that declares it (e.g. '*.pretrained=none' passes over majority)
        given = {**{k: v for k, v in everyone.items() if k in cls.params}, **overrides.get(method_name, {})}
        budgeted = {k: v for k, v in (budget or {}).items() if k in cls.params and k not in given}
        unknown = sorted(set(given) - set(cls.params))
        if unknown:
            raise ParameterError(f"--set {method_name}.{unknown[0]}: {cls.display_name()} has no parameter "
                                 f"{unknown[0]!r}; allowed: {', '.join(sorted(cls.params))}.")
        keys = sorted(given)
        for values in itertools.product(*(str(given[k]).split(",") for k in keys)):
            point = dict(zip(keys, values))
            for seed, rate in itertools.product(seeds, label_noise):
                params = cls.resolve_params(profile, name, {**budgeted, **point, "seed": seed, "device": device})
                cells.append(CellSpec(method=method_name, params=params, dataset=name, budget=budget or None,
                                      dataset_options=resolved_options, seed=seed, label_noise=float(rate),
                                      noise_kind=noise_kind, profile=profile, overrides=point, data_root=data_root,
                                      test_dataset=test_name, test_dataset_options=test_options,
                                      noise_matrix=noise_matrix if noise_kind == "asymmetric" else None,
                                      threads=threads))
    return cells


MAX_SEED = 2 ** 32 - 1   # numpy's and torch's generators both take seeds below 2^32
# Parameters every method has that the grid sets for all of a run's cells, from its own options.
RUN_LEVEL = {"seed": "--seeds", "device": "--device"}


def check_no_run_level_sets(overrides: dict[str, dict[str, str]]) -> None:
    """``--set m.seed`` / ``--set m.device`` would be overwritten by the grid: refuse them, naming the option."""
    for method_name, given in overrides.items():
        for key, option in RUN_LEVEL.items():
            if key in given:
                raise ParameterError(f"--set {method_name}.{key}: the {key} of every cell comes from {option} "
                                     f"(e.g. {option} {given[key]}); drop it from --set.")


def check_grid_axes(methods: list[str], seeds: list[int], label_noise: list[float]) -> None:
    """Usage errors in the grid's axes, before any data loads: no methods or seeds, a seed outside
    [0, 2^32), a label-noise rate outside [0, 1)."""
    if not methods:
        raise ParameterError("--methods is empty; name at least one method, e.g. --methods baseline "
                             "(fer-bench list shows them).")
    if not seeds:
        raise ParameterError("--seeds is empty; give at least one seed, e.g. --seeds 0 or --seeds 0,1,2.")
    for seed in seeds:
        if not 0 <= int(seed) <= MAX_SEED:
            raise ParameterError(f"seed {seed} is out of range; seeds are integers from 0 to {MAX_SEED}.")
    for rate in label_noise:
        if not 0.0 <= float(rate) < 1.0:
            raise ParameterError(f"label-noise rate {rate:g} is out of range; rates are fractions in [0, 1), "
                                 f"e.g. --label-noise 0,0.2,0.4.")


BUDGET_KEYS = ("epochs",)


def parse_budget(budget: str | dict | None) -> dict | None:
    """``"epochs=20"`` or ``{"epochs": 20}`` -> ``{"epochs": 20}`` (anchor images = epochs x training-set
    size for every method of the run); None or empty -> None. A bad key or value is a usage error."""
    if budget is None or budget == "" or budget == {}:
        return None
    if isinstance(budget, str):
        items = {}
        for part in budget.split(","):
            key, eq, value = part.partition("=")
            if not eq:
                raise ParameterError(f"--budget {budget!r} is not of the form epochs=N; write e.g. --budget epochs=10.")
            items[key.strip()] = value.strip()
        budget = items
    if not isinstance(budget, dict):
        raise ParameterError(f"budget must be a mapping like {{epochs: 10}}. Got {budget!r} instead.")
    out = {}
    for key, value in budget.items():
        if key not in BUDGET_KEYS:
            raise ParameterError(f"budget key {key!r} is not allowed; allowed: {', '.join(BUDGET_KEYS)} "
                                 f"(e.g. --budget epochs=10).")
        try:
            number = int(value)
        except (TypeError, ValueError):
            number = 0
        if number < 1 or str(number) != str(value).strip():
            raise ParameterError(f"budget {key} must be a whole number >= 1. Got {value!r} instead.")
        out[key] = number
    return out


def _resolved(dataset_spec: str) -> tuple[str, dict]:
    name, options = parse_dataset_spec(dataset_spec)
    return name, get_dataset(name).resolve_options(options)


# --------------------------------------------------------------------------------------------------
# One cell


@functools.lru_cache(maxsize=8)
def _load_split(name: str, split: str, root: str | None, options_json: str) -> FERDataset:
    return load_dataset(name, split, root, **json.loads(options_json))


def load_splits(spec: CellSpec) -> tuple[FERDataset, FERDataset | None, FERDataset]:
    """(train, val or None, test) of a cell's dataset. A cross-dataset cell's test split comes from
    ``spec.test_dataset`` (read from ``$FER_BENCH_DATA/<name>`` unless it is the training dataset)."""
    options = json.dumps(spec.dataset_options, sort_keys=True)
    present = available_splits(spec.dataset, spec.data_root, **spec.dataset_options)
    train = _load_split(spec.dataset, "train", spec.data_root, options)
    val = _load_split(spec.dataset, "val", spec.data_root, options) if "val" in present else None
    if spec.test_dataset is None:
        return train, val, _load_split(spec.dataset, "test", spec.data_root, options)
    root = spec.data_root if spec.test_dataset == spec.dataset else None
    test = _load_split(spec.test_dataset, "test", root, json.dumps(spec.test_dataset_options, sort_keys=True))
    return train, val, test


def run_cell(spec: CellSpec, workdir: str | Path, progress: bool | None = False) -> CellResult:
    """Train and evaluate one cell; raises on failure (the executor records it)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    phases, begun = PhaseClock(), time.monotonic()
    torch.manual_seed(spec.seed)  # the runner's entry: the one place global seeding happens
    train, val, test = load_splits(spec)
    info: dict[str, Any] = {"fingerprints": {"train": train.fingerprint, "test": test.fingerprint,
                                             "val": val.fingerprint if val is not None else None},
                            "data": {d.split: dataset_record(d) for d in (train, val, test) if d is not None}}
    if spec.label_noise > 0:
        confusion = confusion_for(spec.noise_matrix, train.classes) if spec.noise_matrix else None
        if confusion is not None and not (confusion * (1 - np.eye(len(confusion)))).any():
            raise ValueError(f"the noise matrix flips no class of {spec.dataset_label} (its weights name only other "
                             f"classes, or the diagonal); asymmetric noise would change no label.")
        noisy = noisy_labels(train.labels, train.num_classes, spec.label_noise, spec.noise_kind, spec.seed, confusion)
        info["noisy_labels_hash"] = labels_hash(noisy)
        info["actual_noise_rate"] = float((noisy != train.labels).mean())
        clean = train.labels
        train = train.with_labels(noisy, f"noise:{spec.noise_kind}:{spec.label_noise}:{spec.seed}")
        train.meta["clean_labels"] = clean  # for methods that report how much noise they undid

    shared = np.arange(train.num_classes)  # the classes scored: all, or those both datasets have
    if spec.test_dataset is not None:
        test, info["cross_dataset"] = in_label_space(test, train.classes)
        info["fingerprints"]["test_in_train_label_space"] = test.fingerprint
        shared = np.unique(test.labels)

    phases.lap("data")
    trained = _trained_sibling(spec, workdir)
    if trained is not None:  # same method, data, seed and noise already trained in this run: test that model
        method = get_method(spec.method).load(trained / "model")
        info["model_from_cell"] = trained.name
    else:
        method = get_method(spec.method)(**spec.params)
        if isinstance(method, TorchMethod):
            method.workdir = str(workdir / "checkpoint")
            method.progress = progress
        method.fit(train, val)
    phases.lap("train")
    proba = method.predict_proba(test)
    pred = shared[proba[:, shared].argmax(1)]  # a cross-dataset cell predicts among the shared classes only
    test_emb = method.embed(test)
    train_emb = method.embed(train)
    position = np.full(train.num_classes, -1)
    position[shared] = np.arange(len(shared))
    metrics = evaluate(EvalInputs(scored_true=position[test.labels], scored_pred=position[pred], num_scored=len(shared),
                                  seed=spec.seed, proba=proba, test_emb=test_emb, train_emb=train_emb, train=train,
                                  val=val, test=test, method=method, workdir=workdir))
    train_info = getattr(method, "train_info_", {})
    curve = train_info.get("curve", [])
    info.update(selection=getattr(method, "selection_", "n/a"), selection_rule=getattr(method, "selection_rule_", "n/a"),
                history=train_info.get("history", []), resumed_from_epoch=train_info.get("resumed_from_epoch", 0),
                device=str(getattr(method, "device_", "cpu")), classes=list(train.classes), weights=method.weights_used(),
                torch_threads=torch.get_num_threads())  # CPU results differ in the last bits across thread counts
    phases.lap("evaluate")

    artifacts = {}
    for key, array in {"test_labels": test.labels, "test_pred": pred, "test_proba": proba, "test_embed": test_emb}.items():
        np.save(workdir / f"{key}.npy", array)
        artifacts[key] = f"{key}.npy"
    method.save(workdir / "model")
    artifacts["model"] = "model"
    (workdir / TRAINING_KEY_FILE).write_text(training_key(spec))  # after the model: a reader finds it whole
    if (workdir / "extra").is_dir():  # hidden names are temporary files a killed writer left (fer_bench.fileio)
        artifacts.update({f"extra/{p.name}": f"extra/{p.name}" for p in sorted((workdir / "extra").iterdir())
                          if not p.name.startswith(".")})
    phases.lap("write")
    info["phases"] = phases.laps
    info["monotonic_span"] = [begun, time.monotonic()]  # one clock across this machine's processes
    return CellResult(spec.cell_id, "done", metrics, artifacts, info, time.perf_counter() - start, curve=curve)


class PhaseClock:
    """Wall and process-CPU seconds of a cell's phases (data, train, evaluate, write), kept in its info."""

    def __init__(self) -> None:
        self.laps: dict[str, dict[str, float]] = {}
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def lap(self, name: str) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self.laps[name] = {"seconds": wall - self._wall, "cpu_seconds": cpu - self._cpu}
        self._wall, self._cpu = wall, cpu


# the training budget and cost of a cell (DESIGN.md section 9), copied from the trainer's report
def training_key(spec: CellSpec) -> str:
    """What determines a cell's fitted model: its spec without the test dataset."""
    return dataclasses.replace(spec, test_dataset=None, test_dataset_options={}).cell_id


def _trained_sibling(spec: CellSpec, workdir: Path) -> Path | None:
    """For a cross-dataset cell: the folder of a finished cell of this run with the same training key
    (its saved model is reused: train once, test on many datasets); None when there is none yet."""
    if spec.test_dataset is None:
        return None
    key = training_key(spec)
    for marker in sorted(workdir.parent.glob(f"*/{TRAINING_KEY_FILE}")):
        folder = marker.parent
        if folder != workdir and marker.read_text() == key and (folder / "model" / "state.pt").is_file():
            return folder
    return None


# --------------------------------------------------------------------------------------------------
# Executors


class Executor(Protocol):
    def map(self, specs: list[CellSpec], run_dir: Path) -> Iterator[CellResult]: ...


def execute(spec: CellSpec, run_dir: Path, progress: bool | None = False) -> CellResult:
    """``run_cell`` with failure isolation: any exception becomes a failed CellResult."""
    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(spec.threads)  # every executor runs a cell through here, so all use its thread count
    try:
        result = run_cell(spec, Path(run_dir) / CELLS_DIR / spec.cell_id, progress)
        result.artifacts = {k: f"{CELLS_DIR}/{spec.cell_id}/{v}" for k, v in result.artifacts.items()}
        return result
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        return CellResult(spec.cell_id, "failed", seconds=time.perf_counter() - start,
                          error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
    finally:
        torch.set_num_threads(threads)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_jobs(specs: list[CellSpec]) -> int:
    """Cells at once on this machine: as many as its cores hold at the cells' thread counts; one when a cell
    may run on CUDA (one GPU, one cell)."""
    if any(str(s.params.get("device", "cpu")) != "cpu" for s in specs) and torch.cuda.is_available():
        return 1
    return max(1, available_cores() // max((s.threads for s in specs), default=1))


def _worker_init(plugins: list[tuple[str, str]], log_level: int, parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops the pool
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    logging.basicConfig(level=log_level, format="%(levelname)s %(name)s: %(message)s")
    load_plugin_sources(plugins)


def _exit_with_parent(parent: int) -> None:
    """A worker whose ``fer-bench run`` was killed (``kill -9`` skips the pool's cleanup) stops at once
    instead of training on into a run directory that the next run resumes."""
    while os.getppid() == parent:
        time.sleep(0.2)
    os._exit(1)


def _worker_execute(task: tuple[CellSpec, str]) -> CellResult:
    spec, run_dir = task
    return execute(spec, Path(run_dir), progress=False)


class LocalExecutor:
    """Runs cells on this machine, each with its spec's torch threads: ``jobs`` at a time in worker processes
    (default ``default_jobs``), or one after another in this process when that is 1.

    ``plugins``: ``--plugin`` files, as (path, source) pairs, registered in the worker processes too."""

    def __init__(self, progress: bool | None = False, jobs: int | None = None,
                 plugins: list[tuple[str, str]] | tuple = ()):
        if jobs is not None and jobs < 1:
            raise ParameterError(f"--jobs must be at least 1, got {jobs}.")
        self.progress, self.jobs, self.plugins = progress, jobs, list(plugins)

    def map(self, specs: list[CellSpec], run_dir: Path) -> Iterator[CellResult]:
        jobs = min(self.jobs or default_jobs(specs), len(specs))
        if jobs <= 1:
            for spec in specs:
                yield execute(spec, run_dir, self.progress)
            return
        context = multiprocessing.get_context("spawn")  # fork after torch has started threads can hang
        pool = context.Pool(jobs, _worker_init, (self.plugins, logging.getLogger().level, os.getpid()),
                            maxtasksperchild=1)  # a fresh process per cell: no state leaks from one to the next
        try:
            yield from _schedule(pool, jobs, specs, run_dir)
            pool.close()
        finally:  # Ctrl-C, SIGTERM, a closed generator: no cell keeps training for a grid nobody reads
            pool.terminate()
            pool.join()


def _schedule(pool: Any, jobs: int, specs: list[CellSpec], run_dir: Path) -> Iterator[CellResult]:
    """At most ``jobs`` cells in flight, in grid order, and never two with the same training key at once: a
    cross-dataset cell waits for its sibling, whose trained model it then tests instead of training again."""
    waiting, running, keys = list(specs), {}, set()
    while waiting or running:
        for spec in list(waiting):
            if len(running) >= jobs:
                break
            key = training_key(spec)
            if key not in keys:
                waiting.remove(spec)
                keys.add(key)
                running[pool.apply_async(_worker_execute, ((spec, str(run_dir)),))] = key
        finished = [r for r in running if r.ready()]
        if not finished:
            time.sleep(0.05)
            continue
        for ready in finished:
            keys.discard(running.pop(ready))
            yield ready.get()


# Executors by name. Others register themselves on import (fer_bench.ray_executor adds "ray"; the CLI imports
# it only when asked for, as Ray is an optional extra), so this module knows none of them.
EXECUTORS: dict[str, Callable[..., Executor]] = {"local": LocalExecutor}


def check_reuse_dirs(reuse: list[str | Path]) -> list[Path]:
    """The run directories named by ``--reuse``: each must hold a results store."""
    dirs = [Path(d) for d in reuse]
    for d in dirs:
        if not (d / STORE_NAME).is_file():
            raise FileNotFoundError(f"--reuse {str(d)!r} has no {STORE_NAME}; name a run directory (the folder "
                                    f"that 'fer-bench run --out' or 'fer-bench tables' wrote).")
    return dirs


def import_finished_cells(specs: list[CellSpec], store: Store, run_dir: Path, reuse: list[Path]) -> dict[str, Path]:
    """Import the cells of ``specs`` that are not finished here but finished in one of the ``reuse`` run
    directories (same cell id = same resolved configuration): store rows, metrics and, when present, the
    cell folder with its artifacts. Returns {cell id: the run directory it came from}."""
    imported: dict[str, Path] = {}
    for source_dir in reuse:
        if source_dir.resolve() == run_dir.resolve():
            continue
        with Store(source_dir / STORE_NAME, readonly=True) as source:
            for spec in specs:
                if spec.cell_id in imported or store.status(spec.cell_id) == "done":
                    continue
                if source.status(spec.cell_id) != "done":
                    continue
                folder = source_dir / CELLS_DIR / spec.cell_id
                if folder.is_dir():
                    shutil.copytree(folder, run_dir / CELLS_DIR / spec.cell_id, dirs_exist_ok=True)
                store.import_cell(source, spec.cell_id, spec.to_json(), str(source_dir))
                imported[spec.cell_id] = source_dir
    return imported


def check_run_dir(run_dir: str | Path, option: str = "--out") -> Path:
    """``run_dir`` as a folder this process can write (existing or creatable); a one-line ParameterError
    naming what is in the way otherwise, before any cell runs."""
    run_dir = Path(run_dir)
    existing = run_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == run_dir else f"is under {existing}, which is a file"
        raise ParameterError(f"{option} {run_dir} {where}, not a folder; pass a folder (it is created if missing).")
    for path in (existing, run_dir / STORE_NAME):
        if path.exists() and not os.access(path, os.W_OK):
            raise ParameterError(f"{option} {run_dir}: {path} is not writable; choose a folder you can write "
                                 f"(finished cells of a read-only run directory can be reused with --reuse).")
    return run_dir


def missing_artifacts(store: Store, cell_id: str, run_dir: Path) -> list[str]:
    """The recorded artifacts of a cell that are not in ``run_dir`` (a deleted or partly copied cell folder)."""
    return [path for path in store.artifacts(cell_id).values() if not (run_dir / path).exists()]


class RunDirectoryBusy(ValueError):
    """Another live process runs cells in this run directory."""


LOCK_FILE = ".fer_bench.lock"


@contextlib.contextmanager
def run_dir_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir`` for this process: a second run with the same ``--out`` stops with one line naming the
    first, instead of resuming its in-progress checkpoints. An advisory ``flock``, which the OS releases when
    its process dies, so the lock of a killed run is taken over by the next one. (No locking where ``fcntl``
    does not exist, i.e. Windows.)"""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            raise RunDirectoryBusy(f"run directory {run_dir} is in use by {holder}; wait for that run to end, "
                                   f"or pass another --out.") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"fer-bench (pid {os.getpid()} on {socket.gethostname()}, since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')})\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def run_grid(specs: list[CellSpec], run_dir: str | Path, executor: Executor, retry_failed: bool = False,
             on_event: Callable[[str, CellSpec, CellResult | None], None] | None = None,
             reuse: list[Path] = (), need_artifacts: bool = True) -> dict[str, list[str]]:
    """Run the pending cells of ``specs``; returns the cell ids by outcome (done, failed, imported, skipped;
    ``failed_before``: the skipped cells that had failed in an earlier run and were not retried).

    ``reuse``: other run directories whose finished cells with the same id are imported instead of run.
    ``need_artifacts``: a finished cell whose recorded artifacts (predictions, model, ...) are gone from the
    run directory is run again (``fer-bench run``; paper tables read metrics only and pass False).
    The run directory is locked for the duration (``run_dir_lock``).
    """
    run_dir = Path(run_dir)
    outcome: dict[str, list[str]] = {"done": [], "failed": [], "imported": [], "skipped": [], "failed_before": []}
    with run_dir_lock(run_dir), Store(run_dir / STORE_NAME) as store:
        imported = import_finished_cells(specs, store, run_dir, list(reuse))
        pending: dict[str, CellSpec] = {}  # by cell id, in grid order (a grid may name a cell twice)
        for spec in specs:
            status = store.status(spec.cell_id)
            if spec.cell_id in imported:
                outcome["imported"].append(spec.cell_id)
                if on_event:
                    on_event(f"import (from {imported[spec.cell_id]})", spec, None)
            elif status == "done" and need_artifacts and (missing := missing_artifacts(store, spec.cell_id, run_dir)):
                if on_event:
                    on_event(f"run again ({missing[0]} is missing)", spec, None)
                pending.setdefault(spec.cell_id, spec)
            elif status == "done" or (status == "failed" and not retry_failed):
                outcome["skipped"].append(spec.cell_id)
                if status == "failed":
                    outcome["failed_before"].append(spec.cell_id)
                if on_event:
                    on_event(f"skip ({status})", spec, None)
            else:
                pending.setdefault(spec.cell_id, spec)
        for spec in pending.values():
            store.mark_running(spec.cell_id, spec.to_json())
        for result in executor.map(list(pending.values()), run_dir):
            spec = pending[result.cell_id]
            if result.status == "done":
                store.record_done(result.cell_id, spec.to_json(), result.metrics, result.artifacts, result.seconds,
                                  result.info, curve=result.curve)
            else:
                store.record_failed(result.cell_id, spec.to_json(), result.error, result.traceback, result.seconds)
            outcome[result.status].append(result.cell_id)
            if on_event:
                on_event(result.status, spec, result)
    return outcome
