"""Equal-effort tuning (``fer-bench tune``, issue #22): every method gets the same search on validation data.

After "A Metric Learning Reality Check" (Musgrave, Belongie and Lim, ECCV 2020): the same number of trials, the
same sampler (Optuna's TPE, seeded) and validation-only scores for every method. Each method searches the
``search`` ranges its ``Param``s declare (the training loop's lr, weight decay and schedule are shared by every
torch method; a method adds its own, e.g. a margin), which ``--space method.param=log:1e-4:1e-2`` overrides.

A trial is a normal cell of the run's trial store (``<run>/trials/results.sqlite``) at the run's profile and
budget, its first seed, scored by its final validation accuracy (``final_val_accuracy``; the test split is never
read for selection). The driver holds each study (SQLite storage ``<run>/trials/tuning.sqlite``: a killed tuning
resumes, finished trials are not rerun, a trial asked but not told is looked up in the store or run again; the
sampler is reseeded from the trial's index before each ask, so a resumed search proposes exactly what an
uninterrupted one would, even when the kill fell inside an ask and left a trial with part of its parameters) and
asks as many trials at a time as the executor runs cells at once, so ``--executor ray`` spreads trials over a
cluster with the same ask / tell loop. A failed trial (NaN loss, out of memory) is told as failed and the search
goes on. Then the best configuration of each method is trained on the run's seeds and tested (cells of the run's
own store, tagged ``tuned`` in ``<run>/tuning.json`` with the search history).
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable

from fer_bench.fileio import atomic_write_text
from fer_bench.params import ParameterError, Space, parse_space
from fer_bench.registry import get_method
from fer_bench.runner import CellSpec, expand_grid, run_grid
from fer_bench.store import STORE_NAME, Store

log = logging.getLogger(__name__)

TRIALS_DIR = "trials"
STUDY_FILE = "tuning.sqlite"
SUMMARY_FILE = "tuning.json"
SCORE = "final_val_accuracy"
# TPE's random start-up trials per method (Optuna's default): with --trials at or below it a search is a seeded
# random search; 12 trials give TPE 2 guided ones. --startup-trials sets it for every method alike.
STARTUP_TRIALS = 10


def search_space(method: str, given: dict[str, str] | None = None) -> dict[str, Space]:
    """The declared ranges of ``method`` with the ``--space`` texts ``given`` ({param: "log:1e-4:1e-2"}) over
    them; ParameterError (a usage error) for an unknown parameter or a bad range, before any trial."""
    cls = get_method(method)
    space = {name: p.search for name, p in cls.params.items() if p.search is not None}
    for name, text in (given or {}).items():
        if name not in cls.params:
            raise ParameterError(f"--space {method}.{name}: {cls.display_name()} has no parameter {name!r}; "
                                 f"allowed: {', '.join(sorted(cls.params))}.")
        space[name] = parse_space(text, cls.params[name])
    for name, spec in space.items():
        spec.check(name, cls.params[name], cls.display_name())
    if not space:
        raise ParameterError(f"{cls.display_name()} declares nothing to tune; give it ranges with "
                             f"--space {method}.PARAM=log:LOW:HIGH or leave it out of --methods.")
    return space


def parse_space_options(items: list[str], methods: list[str]) -> dict[str, dict[str, str]]:
    """``["triplet.margin=log:0.05:2"]`` -> ``{"triplet": {"margin": "log:0.05:2"}}`` ('*' for every method)."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        target, eq, value = item.partition("=")
        method, dot, param = target.partition(".")
        if not eq or not dot or not value:
            raise ParameterError(f"--space {item!r} is not of the form method.param=KIND:...; "
                                 f"write e.g. --space baseline.lr=log:1e-4:1e-2.")
        if method != "*" and method not in methods:
            raise ParameterError(f"--space {item!r} names method {method!r}, which is not in this run "
                                 f"({', '.join(methods)}).")
        for name in (methods if method == "*" else [method]):
            if method != "*" or param in get_method(name).params:
                out.setdefault(name, {})[param] = value
    return out


def _study_name(method: str, dataset: str, profile: str, seed: int, grid: dict) -> str:
    """One study per method and data variant (training-label noise included: a search on noisy labels is not
    the clean one's); clean searches keep the name they always had."""
    name = f"{method}|{dataset}|{profile}|seed{seed}"
    rate = float(grid.get("label_noise", 0.0))
    if rate:
        matrix = "|matrix" + hashlib.sha256(json.dumps(grid["noise_matrix"], sort_keys=True).encode()).hexdigest()[:8] \
            if grid.get("noise_matrix") else ""
        name += f"|noise{rate:g}-{grid.get('noise_kind', 'symmetric')}{matrix}"
    return name


def _trial_spec(method: str, dataset: str, profile: str, seed: int, params: dict[str, Any], grid: dict) -> CellSpec:
    """The cell of one trial (see ``configured_specs``)."""
    return configured_specs(method, [dataset], profile, [seed], params, grid)[0]


def configured_specs(method: str, datasets: list[str], profile: str, seeds: list[int], params: dict[str, Any],
                     grid: dict) -> list[CellSpec]:
    """Cells of ``method`` with the tuned ``params``: the run's ``--set`` values (``*`` applied by ``expand_grid``
    as in ``run``) with ``params`` over the method's own (str of a float round-trips exactly), at the grid's
    budget. A trial and a table's tuned row at the same budget and seed are the same cell."""
    sets, declared = grid.get("sets", {}), get_method(method).params
    overrides = {"*": {k: v for k, v in sets.get("*", {}).items() if k in declared},   # checked over the run
                 method: {**sets.get(method, {}), **{k: str(v) for k, v in params.items()}}}
    return expand_grid([method], datasets, seeds, [float(grid.get("label_noise", 0.0))], profile, overrides,
                       grid.get("device", "auto"), grid.get("data_root"), grid.get("noise_kind", "symmetric"),
                       noise_matrix=grid.get("noise_matrix"), budget=grid.get("budget"),
                       threads=grid.get("threads", 1))


def best_params(run_dir: Path) -> dict[str, dict[str, Any]]:
    """{method: best parameters} of a finished ``fer-bench tune`` run, from its ``tuning.json``."""
    path = Path(run_dir) / SUMMARY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist: the tuning has not finished; run 'fer-bench tune "
                                f"... --out {run_dir}' (or 'fer-bench tables' without --no-run) first.")
    return {method: entry["best_params"] for method, entry in json.loads(path.read_text())["methods"].items()}


def _sampler(sampler_seed: int, number: int, startup_trials: int) -> Any:
    """The sampler that proposes trial ``number``, reseeded from the trial's index: a proposal depends on the
    history alone, not on how many times the process restarted (a resumed search proposes what an uninterrupted
    one would)."""
    import optuna
    return optuna.samplers.TPESampler(seed=sampler_seed * 1_000_003 + number, n_startup_trials=startup_trials)


def _finish_interrupted_ask(study: Any, storage: Any, trial: Any, distributions: dict, sampler: Any) -> None:
    """Give ``trial`` (left RUNNING by a kill inside ``study.ask``, with only some of its parameters stored) the
    parameters the uninterrupted ask would have drawn, by replaying that ask with the same reseeded sampler: the
    joint (multivariate TPE) draw, then the independent draws in order (TPE's random start-up), drawing and
    discarding the values already stored since each draw moves the sampler's random stream; the missing values
    are stored."""
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(study.study_name), trial.number)
    sampler.before_trial(study, trial)
    joint = sampler.sample_relative(study, trial, sampler.infer_relative_search_space(study, trial))
    for name, distribution in distributions.items():
        if name in joint:
            value = joint[name]
        elif distribution.single():                                 # no draw: its one value
            value = distribution.choices[0] if hasattr(distribution, "choices") else distribution.low
        else:
            value = sampler.sample_independent(study, trial, name, distribution)
        if name not in trial.params:
            storage.set_trial_param(trial_id, name, distribution.to_internal_repr(value), distribution)


def tune(methods: list[str], dataset: str, trials: int, profile: str, seeds: list[int], run_dir: Path,
         executor: Any, spaces: dict[str, dict[str, Space]], sampler_seed: int = 0,
         grid: dict | None = None, on_event: Callable | None = None, parallel: int = 1,
         startup_trials: int = STARTUP_TRIALS, need_artifacts: bool = True) -> dict[str, Any]:
    """Tune each method with ``trials`` trials over ``spaces[method]`` (``search_space``: checked by the caller
    before any work), then train its best configuration on ``seeds``; returns (and
    writes to ``<run_dir>/tuning.json``) per method the space, the best parameters and value and the history.
    The first ``startup_trials`` trials of a method are drawn at random (TPE's start-up), the rest by TPE.
    ``need_artifacts``: as in ``run_grid`` for the tuned cells (a benchmark table reads their metrics only, so a
    checkout that holds the store but not the per-cell artifacts does not train them again)."""
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    if trials < 1:
        raise ParameterError(f"--trials must be at least 1, got {trials}.")
    if startup_trials < 1:
        raise ParameterError(f"--startup-trials must be at least 1, got {startup_trials}.")
    grid = grid or {}
    trial_dir = run_dir / TRIALS_DIR
    trial_dir.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(f"sqlite:///{(trial_dir / STUDY_FILE).resolve()}")
    summary: dict[str, Any] = {}
    final: list[CellSpec] = []
    for method in methods:
        space = spaces[method]
        distributions = {name: s.distribution() for name, s in space.items()}
        study = optuna.create_study(study_name=_study_name(method, dataset, profile, seeds[0], grid), storage=storage,
                                    direction="maximize", load_if_exists=True)
        study.set_user_attr("space", {k: s.describe() for k, s in space.items()})
        while True:
            done = [t for t in study.trials if t.state.is_finished()]
            if len(done) >= trials:
                break
            waiting = [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]  # a killed run's
            for trial in waiting:
                if set(trial.params) != set(distributions):
                    _finish_interrupted_ask(study, storage, trial, distributions,
                                            _sampler(sampler_seed, trial.number, startup_trials))
            waiting = [t.number for t in waiting]
            fresh = []
            for _ in range(max(0, min(parallel, trials - len(done)) - len(waiting))):
                study.sampler = _sampler(sampler_seed, len(study.trials), startup_trials)
                fresh.append(study.ask(distributions).number)
            batch = {n: _trial_spec(method, dataset, profile, seeds[0], study.trials[n].params, grid)
                     for n in waiting + fresh}
            run_grid(list(batch.values()), trial_dir, executor, on_event=on_event, need_artifacts=False)
            with Store(trial_dir / STORE_NAME) as store:
                for number, spec in batch.items():
                    value = store.metrics(spec.cell_id).get(SCORE) if store.status(spec.cell_id) == "done" else None
                    study.tell(number, value, state=None if value is not None else optuna.trial.TrialState.FAIL)
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not complete:
            raise RuntimeError(f"every trial of {method} failed; see {trial_dir / STORE_NAME} (fer-bench plot "
                               f"{trial_dir}) for their errors.")
        best = max(complete, key=lambda t: (t.value, -t.number))              # ties: the earliest trial
        tuned = [_trial_spec(method, dataset, profile, s, best.params, grid) for s in seeds]
        final += tuned
        summary[method] = {"space": {k: s.describe() for k, s in space.items()}, "best_params": best.params,
                           "best_value": best.value, "best_trial": best.number, "score": SCORE,
                           "tuned_cells": [s.cell_id for s in tuned],
                           "trials": [{"number": t.number, "state": t.state.name, "value": t.value,
                                       "params": t.params} for t in study.trials]}
    run_grid(final, run_dir, executor, on_event=on_event, reuse=[trial_dir],   # the trial's own seed: imported
             need_artifacts=need_artifacts)
    noise = {k: grid[k] for k in ("label_noise", "noise_kind") if grid.get("label_noise")}
    text = json.dumps({"dataset": dataset, **noise, "profile": profile, "trials": trials, "sampler": "TPE",
                       "sampler_seed": sampler_seed, "startup_trials": startup_trials, "parallel_trials": parallel,
                       "seeds": seeds, "methods": summary}, indent=1, sort_keys=True, default=str)
    atomic_write_text(run_dir / SUMMARY_FILE, text)
    return summary
