"""Run summaries and paper tables (DESIGN.md sections 6 and 7).

``write_run_outputs`` regenerates a run directory's ``metrics_long.csv``, ``summary.csv`` (mean, std
and n over seeds), ``summary.md``, ``manifest.json`` and ``plots/`` from its store alone, so figures
can be redrawn without training. ``paper_tables`` reads a benchmark YAML (the grid, the metric and
the published numbers with their source) and writes ``results/<benchmark>/<table>.{csv,md}`` with
published | ours (mean +- std, n) | delta.
"""
from __future__ import annotations

import json
import logging
import platform
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from tabulate import tabulate

import fer_bench
import fer_bench.reports  # noqa: F401  (registers the built-in reports, whose metric specs shape the tables)
from fer_bench import labels as L
from fer_bench.evaluation import check_metric_name, headline_specs
from fer_bench.fileio import atomic_write_text
from fer_bench.paper_layout import LAYOUT_KEYS, layout_fields, layout_markdown
from fer_bench.registry import get_method
from fer_bench.store import STORE_NAME, Store, init_label

log = logging.getLogger(__name__)

GROUP = ["method", "dataset", "label_noise", "profile", "overrides", "init"]   # init: the initial weights (store.init_label)
# The run summary's metric columns, their scale and decimals: the metric registry's headline specs.
HEADLINE = {spec.name: spec for spec in headline_specs()}


def mean_std(long: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """One row per group of ``by`` (a missing key is a group of its own): ``mean``, ``std`` (ddof=1; 0 for a single
    value) and ``n`` of ``long["value"]``. The aggregation over seeds of the run summary, the paper tables and the
    method reports."""
    return long.groupby(list(by), dropna=False)["value"].agg(mean="mean", std=_sample_std, n="count").reset_index()


def _sample_std(values: pd.Series) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def summarize(long: pd.DataFrame) -> pd.DataFrame:
    """Mean, std (ddof=1; 0 for one seed) and n over seeds, one row per grid point and metric."""
    if long.empty:
        return pd.DataFrame(columns=GROUP + ["metric", "mean", "std", "n"])
    return mean_std(long, GROUP + ["metric"])


def format_mean_std(mean: float, std: float, n: int | None, scale: float = 1.0, digits: int = 2) -> str:
    """``mean ± std (n=N)``, scaled; without the ``(n=N)`` when ``n`` is None."""
    if not np.isfinite(mean):
        return "nan"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}" + (f" (n={n})" if n is not None else "")


def summary_markdown(summary: pd.DataFrame, failures: list[dict[str, Any]], tablefmt: str = "github") -> str:
    """One row per grid point, the headline metrics as columns (accuracy-like metrics in %); ``tablefmt``
    "html" gives the same table as HTML (the report page)."""
    lines = []
    if not summary.empty:
        wide = {}
        for _, row in summary.iterrows():
            if row["metric"] not in HEADLINE:
                continue
            key = tuple(row[g] for g in GROUP)
            spec = HEADLINE[row["metric"]]
            text = format_mean_std(row["mean"], row["std"], int(row["n"]), 100.0 if spec.percent else 1.0, spec.digits)
            wide.setdefault(key, {})[row["metric"]] = text
        floor = {tuple(r[g] for g in GROUP): (int(round(r["mean"] * r["n"])), int(r["n"]))
                 for _, r in summary[summary["metric"] == "at_floor"].iterrows()}
        metrics = [m for m in HEADLINE if any(m in v for v in wide.values())]
        flagged = any(k for k, _ in floor.values())
        rows = [[*key, *(wide[key].get(m, "") for m in metrics)] + ([_floor_flag(floor.get(key))] if flagged else [])
                for key in sorted(wide, key=str)]
        headers = GROUP + [m + (" (%)" if HEADLINE[m].percent else "") for m in metrics] + (["at floor"] if flagged else [])
        lines.append(tabulate(rows, headers=headers, tablefmt=tablefmt))
        if flagged:
            lines += ["", "at floor: seeds whose final validation accuracy is within 1 point of the majority class's; "
                          "read their learning curves (plots/curves_*.png) before comparing them."]
    if failures:
        lines += ["", "Failed cells:", ""]
        lines += [f"- {f['method']} on {f['dataset']} seed {f['seed']}: {f['error']}" for f in failures]
    return "\n".join(lines) + "\n"


def terminal_summary(summary: pd.DataFrame, failures: list[dict[str, Any]], full: Path) -> str:
    """The end-of-run table for a terminal (within 100 columns): method, accuracy and mean class accuracy
    (mean ± std over seeds, %), train minutes per cell and n seeds; dataset, label noise, ``--set`` values and
    initialisation as columns only when the run has several (one dataset is named under the table). The full
    table is ``full`` (summary.md)."""
    if summary.empty:
        return f"no finished cells; see {full}\n" if failures else ""
    stats = summary.set_index(GROUP + ["metric"])
    keys = sorted({tuple(r[g] for g in GROUP) for _, r in summary.iterrows()}, key=str)
    noise = any(k[2] for k in keys)
    settings = any(k[4] for k in keys)
    inits = len({k[5] for k in keys}) > 1
    datasets = sorted({k[1] for k in keys})
    several = len(datasets) > 1            # one dataset: named under the table, its column gives way

    def cell(key: tuple, metric: str) -> str:
        if (*key, metric) not in stats.index:
            return ""
        row = stats.loc[(*key, metric)]
        return format_mean_std(row["mean"], row["std"], None, scale=100.0, digits=1)

    def clip(text: str, width: int) -> str:
        return text if len(text) <= width else text[:width - 1] + "…"

    # text columns shown and their widths, narrowed (widest first) until the table fits 100 columns
    width = {"method": 14, "dataset": 20 if several else 0, "set": 12 if settings else 0, "init": 15 if inits else 0}
    headers = (["method"] + (["dataset"] if several else []) + (["noise"] if noise else []) + (["set"] if settings else [])
               + (["init"] if inits else []) + ["acc %", "mca %", "train min", "n"])

    def render() -> str:
        rows = []
        for key in keys:
            n = int(stats.loc[(*key, "accuracy"), "n"]) if (*key, "accuracy") in stats.index else 0
            minutes = (f"{stats.loc[(*key, 'train_seconds'), 'mean'] / 60:.1f}" if (*key, "train_seconds") in stats.index
                       else "")
            rows.append([clip(key[0], width["method"])] + ([clip(key[1], width["dataset"])] if several else [])
                        + ([f"{key[2]:g}"] if noise else []) + ([clip(str(key[4]), width["set"])] if settings else [])
                        + ([clip(str(key[5]), width["init"])] if inits else [])
                        + [cell(key, "accuracy"), cell(key, "mean_class_accuracy"), minutes, n])
        return tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)

    table = render()
    while max(map(len, table.splitlines())) > 100 and max(width.values()) > 6:
        width[max(width, key=width.get)] -= 1
        table = render()
    lines = [table, "",
             *([] if several else [clip(f"dataset: {datasets[0]}", 100)]),
             "acc: test accuracy, mca: mean class accuracy (mean ± std over n seeds); train min: per cell",
             f"full table: {full}"]
    if failures:
        lines.append(f"{len(failures)} failed cell(s): see {full}")
    return "\n".join(lines) + "\n"


def _floor_flag(count: tuple[int, int] | None) -> str:
    return f"{count[0]}/{count[1]} seeds" if count and count[0] else ""


def environment() -> dict[str, Any]:
    """Software versions, git commit and host, recorded in every manifest."""
    import sklearn
    import torch
    versions = {"fer_bench": fer_bench.__version__, "python": sys.version.split()[0], "torch": torch.__version__,
                "numpy": np.__version__, "pandas": pd.__version__, "scikit-learn": sklearn.__version__,
                "cuda": torch.version.cuda if torch.cuda.is_available() else None}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(fer_bench.__file__).parent, capture_output=True,
                                text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"versions": versions, "git_commit": commit, "host": socket.gethostname(), "platform": platform.platform()}


def write_run_outputs(run_dir: Path, specs: list | None = None, tsne: bool = False) -> str:
    """Write the summaries, manifest and plots of ``run_dir`` from its store; return the terminal's table
    (``terminal_summary``; summary.md holds the full one).

    ``specs``: the cells of the current grid (None: every cell in the store).
    """
    run_dir = Path(run_dir)
    store_path = run_dir / STORE_NAME
    if not store_path.is_file():
        raise FileNotFoundError(f"{str(run_dir)!r} has no results.sqlite; pass a folder written by 'fer-bench run'.")
    ids = None if specs is None else [s.cell_id for s in specs]
    with Store(store_path) as store:
        long = store.metrics_frame(ids)
        curves = store.curves_frame(ids)
        cells = list(store.cells(ids))
        artifacts = {c["id"]: store.artifacts(c["id"]) for c in cells}
    failures = [{"method": c["spec"]["method"], "dataset": c["spec"]["dataset_label"], "seed": c["spec"]["seed"],
                 "error": c["error"]} for c in cells if c["status"] == "failed"]
    summary = summarize(long)
    interrupted = sum(c["status"] == "running" for c in cells)
    atomic_write_text(run_dir / "metrics_long.csv", long.to_csv(index=False))
    atomic_write_text(run_dir / "summary.csv", summary.to_csv(index=False))
    note = (f"\n{interrupted} cell(s) were interrupted (status running) and are not in this table: rerun the same "
            f"command to finish them.\n" if interrupted else "")
    text = summary_markdown(summary, failures) + note
    atomic_write_text(run_dir / "summary.md", text)
    manifest = {**environment(), "cells": [
        {"cell_id": c["id"], "status": c["status"], "spec": c["spec"],
         "fingerprints": c["info"].get("fingerprints"), "selection": c["info"].get("selection"),
         "selection_rule": c["info"].get("selection_rule"), "noisy_labels_hash": c["info"].get("noisy_labels_hash"),
         "weights": c["info"].get("weights"),
         "device": c["info"].get("device"), "host": c["host"], "seconds": c["seconds"]} for c in cells]}
    atomic_write_text(run_dir / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True, default=str))
    write_run_plots(run_dir, cells, artifacts, long, tsne)
    write_curve_plots(run_dir / "plots", curves, long)
    return terminal_summary(summary, failures, run_dir / "summary.md") + note


def write_curve_plots(plots: Path, curves: pd.DataFrame, long: pd.DataFrame) -> list[Path]:
    """``plots/curves_<dataset>.png``: every method of the run on shared axes, one line per seed."""
    from fer_bench import plots as P

    written = []
    # a cross-dataset cell's curve is its training on the training dataset: one figure per training dataset
    curves = curves.assign(dataset=curves["dataset"].str.split(" -> ").str[0])
    curves = curves.drop_duplicates(["method", "overrides", "init", "label_noise", "dataset", "seed", "step"])
    for dataset, part in curves.groupby("dataset"):
        several = part["init"].nunique() > 1                       # name the initialisation when a figure has two
        part = part.assign(label=[m + (f" {o}" if o else "") + (f" [{i}]" if several else "") + (f" noise {n:g}" if n else "")
                                  for m, o, i, n in zip(part["method"], part["overrides"], part["init"],
                                                        part["label_noise"])])
        floors = long[(long["dataset"] == dataset) & (long["metric"] == "val_floor_accuracy")]["value"]
        plots.mkdir(parents=True, exist_ok=True)
        written.append(P.plot_learning_curves(part, plots / f"curves_{_slug(dataset)}.png", title=f"{dataset}: learning curves",
                                              floor=float(floors.mean()) if len(floors) else None))
    return written


def first_seed_per_point(cells: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    """The finished cell with the smallest seed of each grid point (method, dataset, noise, overrides, init):
    figures show one cell per point, not one per seed."""
    first: dict[tuple, dict[str, Any]] = {}
    for cell in sorted((c for c in cells if c["status"] == "done"), key=lambda c: c["spec"]["seed"]):
        spec = cell["spec"]
        first.setdefault((spec["method"], spec["dataset_label"], spec["label_noise"], spec["overrides_label"],
                          init_label(spec)), cell)
    return first


def write_run_plots(run_dir: Path, cells: list[dict[str, Any]], artifacts: dict[str, dict[str, str]],
                    long: pd.DataFrame, tsne: bool = False) -> None:
    """Confusion matrices, Recall@K / Acc@K curves, 2-D embedding maps and per-class recall bars.

    Per grid point, the figures use the cell with the smallest seed (one figure per point, not per seed).
    """
    from fer_bench import metrics as M
    from fer_bench import plots as P

    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    first = first_seed_per_point(cells)
    several_inits = len({key[4] for key in first}) > 1      # name the initialisation only when the run has two
    recalls: dict[str, dict[str, np.ndarray]] = {}
    for key, cell in first.items():
        shown = key if several_inits else key[:4]
        label = "_".join(_slug(str(k)) for k in shown if str(k) not in ("", "0.0"))
        arts = artifacts[cell["id"]]
        if not all((run_dir / arts.get(k, "-")).is_file() for k in ("test_labels", "test_pred", "test_embed")):
            log.info("no figures for cell %s: its cells/ folder is not here (imported or not committed)", cell["id"])
            continue
        y = np.load(run_dir / arts["test_labels"])
        pred = np.load(run_dir / arts["test_pred"])
        emb = np.load(run_dir / arts["test_embed"])
        names = L.names(cell["info"]["classes"])
        cm = M.confusion_matrix(y, pred, len(names))
        P.plot_confusion(cm, names, plots / f"confusion_{label}.png", title=label)
        if emb.shape[1] > 1:
            P.plot_embedding_2d(emb, y, names, plots / f"embedding_{label}.png", method="tsne" if tsne else "pca",
                                seed=cell["spec"]["seed"], title=label)
        recalls.setdefault(key[1], {})[key[0] if not key[3] else f"{key[0]} {key[3]}"] = M.per_class_recall(y, pred, len(names))
    for dataset, per_method in recalls.items():
        cell = next(c for k, c in first.items() if k[1] == dataset)
        names = L.names(cell["info"]["classes"])
        P.plot_per_class_recall(per_method, names, plots / f"per_class_recall_{_slug(dataset)}.png", title=dataset)
    if not long.empty:
        for metric_name, prefix in (("Recall@K", "recall@"), ("Acc@K", "acc@")):
            rows = long[long["metric"].str.startswith(prefix)]
            for dataset, part in rows.groupby("dataset"):
                curves: dict[str, dict[int, float]] = {}
                for (method, overrides, noise), sub in part.groupby(["method", "overrides", "label_noise"]):
                    if sub["value"].nunique() <= 1 and method == "majority":
                        continue
                    label = method + (f" {overrides}" if overrides else "") + (f" noise {noise:g}" if noise else "")
                    means = sub.groupby("metric")["value"].mean()
                    curves[label] = {int(k[len(prefix):]): float(v) for k, v in means.items()}
                if curves:
                    P.plot_retrieval_curves(curves, plots / f"{prefix[:-1].replace('@', '')}_at_k_{_slug(dataset)}.png",
                                            metric_name=metric_name, title=dataset)


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-." else "-" for ch in text).strip("-")


# --------------------------------------------------------------------------------------------------
# Paper tables from benchmark files

BENCHMARK_KEYS = {"name", "title", "description", "reuse", "figures", "tables"}
TABLE_KEYS = {"name", "title", "metric", "scale", "rows", "layout", "grid", "published", "notes"}
GRID_KEYS = {"methods", "datasets", "test_datasets", "seeds", "profile", "label_noise", "noise_kind", "noise_matrix",
             "set", "budget", "tuned"}
# A grid's ``tuned``: the equal-effort search (fer_bench.tuning) whose best configuration per method gives the
# table's ``setting: tuned`` rows, next to the grid's own ``setting: default`` rows.
TUNED_KEYS = {"dir", "trials", "budget", "space", "sampler_seed", "startup_trials", "parallel_trials"}
SETTING = "setting"


def load_benchmark(path: str | Path) -> dict[str, Any]:
    """Read and check a benchmark YAML (DESIGN.md section 7); unknown keys fail with the allowed ones."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file {str(path)!r} does not exist; see benchmarks/*.yaml.")
    spec = yaml.safe_load(path.read_text()) or {}
    _check_keys(spec, BENCHMARK_KEYS, f"{path.name}")
    if not spec.get("tables"):
        raise ValueError(f"{path.name} declares no tables; add a 'tables:' list.")
    for table in spec["tables"]:
        _check_keys(table, TABLE_KEYS, f"{path.name} table {table.get('name')!r}")
        for key in ("name", "metric", "grid"):
            if key not in table:
                raise ValueError(f"{path.name}: a table has no {key!r}; every table needs name, metric and grid.")
        for grid in _grids(table):
            _check_keys(grid, GRID_KEYS, f"{path.name} table {table.get('name')!r} grid")
            if "methods" not in grid:
                raise ValueError(f"{path.name} table {table['name']!r}: a grid has no 'methods' list.")
            if "tuned" in grid:
                _check_tuned(grid, table, path.name)
        _check_table_metrics(table, path.name)
        _check_keys(table.get("layout") or {}, LAYOUT_KEYS, f"{path.name} table {table.get('name')!r} layout")
        layout_fields(table)
        for entry in table.get("published", []) or []:
            if "source" not in entry or "value" not in entry:
                raise ValueError(f"{path.name} table {table['name']!r}: every published number needs 'value' and "
                                 f"'source' (paper, table, protocol); got {entry}.")
    spec.setdefault("name", path.stem)
    return spec


def _check_tuned(grid: dict[str, Any], table: dict[str, Any], filename: str) -> None:
    """A tuned grid: a mapping with ``dir`` and ``trials``, one dataset and one label-noise rate (a search is per
    data variant; it trains on the grid's noisy labels and selects on clean validation labels), and ``setting``
    among the table's rows (else default and tuned cells would be averaged together)."""
    where = f"{filename} table {table['name']!r} grid 'tuned'"
    tuned = grid["tuned"]
    if not isinstance(tuned, dict) or "dir" not in tuned or "trials" not in tuned:
        raise ValueError(f"{where} must be a mapping with at least 'dir' (the tuning run, under the results root) "
                         f"and 'trials'; e.g. tuned: {{dir: reality-check/tune, trials: 12}}.")
    _check_keys(tuned, TUNED_KEYS, where)
    if len(grid.get("datasets", ["synthetic"])) != 1:
        raise ValueError(f"{where}: a tuned grid has one dataset (the search is per dataset); split it into one grid "
                         f"per dataset, each with its own 'dir'.")
    if len(grid.get("label_noise", [0.0])) != 1:
        raise ValueError(f"{where}: a tuned grid has one label_noise rate (the search is per data variant); split it "
                         f"into one grid per rate, each with its own 'dir'.")
    rows = table.get("rows", ["method", "dataset"])
    if SETTING not in ([rows] if isinstance(rows, str) else rows):
        raise ValueError(f"{where}: add '{SETTING}' to the table's rows (and, to show default and tuned side by "
                         f"side, 'layout: {{columns: {SETTING}}}'), so default and tuned cells are not averaged together.")


def _check_table_metrics(table: dict[str, Any], filename: str) -> None:
    """Each metric a table names is a registered metric or one its methods declare (``extra_metrics``)."""
    methods = {get_method(m) for grid in _grids(table) for m in grid["methods"]}
    metrics = [table["metric"]] if isinstance(table["metric"], str) else list(table["metric"])
    for name in metrics:
        check_metric_name(name, f"{filename} table {table['name']!r}", methods)


def _check_keys(mapping: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(mapping) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}.")


def _grids(table: dict[str, Any]) -> list[dict[str, Any]]:
    """A table's ``grid``: one mapping, or a list of them (the table covers their union)."""
    grid = table.get("grid") or {}
    return list(grid) if isinstance(grid, list) else [grid]


def table_specs(table: dict[str, Any], data_root: str | None = None, device: str = "auto",
                results_root: str | Path = "results") -> list:
    """The CellSpecs of one benchmark table's grid (or grids), default and tuned."""
    return [spec for _, spec in table_settings(table, data_root, device, results_root)]


def table_settings(table: dict[str, Any], data_root: str | None = None, device: str = "auto",
                   results_root: str | Path = "results") -> list[tuple[str, Any]]:
    """(setting, CellSpec) of a table: every grid's cells as ``default``; a grid with ``tuned`` adds its
    methods with the best configuration of its finished search (none yet: no tuned cells) as ``tuned``."""
    from fer_bench.tuning import SUMMARY_FILE, best_params

    out = []
    for grid in _grids(table):
        out += [("default", spec) for spec in _grid_specs(grid, data_root, device)]
        tuned_dir = Path(results_root) / grid["tuned"]["dir"] if "tuned" in grid else None
        if tuned_dir is None or not (tuned_dir / SUMMARY_FILE).is_file():
            continue
        best, context = best_params(tuned_dir), _grid_context(grid, data_root, device)
        out += [("tuned", spec) for method in grid["methods"] if method in best
                for spec in _tuned_specs(grid, method, best[method], context)]
    return out


def _tuned_specs(grid: dict[str, Any], method: str, params: dict[str, Any], context: dict) -> list:
    """The cells of ``method`` in a tuned grid at its best ``params``: the grid's datasets, seeds and budget."""
    from fer_bench.tuning import configured_specs

    return configured_specs(method, list(grid.get("datasets", ["synthetic"])), grid.get("profile", "quick"),
                            list(grid.get("seeds", [0])), params, context)


def _grid_sets(grid: dict[str, Any]) -> dict[str, dict[str, str]]:
    """A grid's ``set`` mapping as ``--set`` overrides ({method or '*': {param: value}})."""
    from fer_bench.method import parse_overrides
    return parse_overrides([f"{k}={v}" for k, v in (grid.get("set") or {}).items()], list(grid["methods"]))


def _grid_specs(grid: dict[str, Any], data_root: str | None, device: str) -> list:
    from fer_bench.runner import expand_grid

    return expand_grid(list(grid["methods"]), list(grid.get("datasets", ["synthetic"])), list(grid.get("seeds", [0])),
                       [float(r) for r in grid.get("label_noise", [0.0])], grid.get("profile", "quick"),
                       _grid_sets(grid), device, data_root, grid.get("noise_kind", "symmetric"),
                       grid.get("test_datasets"), _noise_matrix(grid.get("noise_matrix")), grid.get("budget"))


def table_long(store: Store, settings: list[tuple[str, Any]]) -> pd.DataFrame:
    """The store's long metrics of a table's cells with their ``setting`` column (a cell may be in both)."""
    parts = [store.metrics_frame([s.cell_id for name, s in settings if name == setting]).assign(**{SETTING: setting})
             for setting in dict.fromkeys(name for name, _ in settings)]
    return pd.concat(parts, ignore_index=True) if parts else store.metrics_frame([]).assign(**{SETTING: None})


def _grid_context(grid: dict[str, Any], data_root: str | None, device: str, budget: Any = "grid") -> dict:
    """The ``grid`` mapping of fer_bench.tuning (``--set`` values, device, data root, budget) of a table grid."""
    from fer_bench.runner import parse_budget

    return {"sets": _grid_sets(grid), "device": device, "data_root": data_root,
            "budget": parse_budget(grid.get("budget") if budget == "grid" else budget),
            "label_noise": float(grid.get("label_noise", [0.0])[0]), "noise_kind": grid.get("noise_kind", "symmetric"),
            "noise_matrix": _noise_matrix(grid.get("noise_matrix"))}


def tuned_grids(spec: dict[str, Any], results_root: str | Path) -> list[tuple[dict[str, Any], Path]]:
    """(grid, search directory under ``results_root``) of every grid of a benchmark that has ``tuned``."""
    return [(grid, Path(results_root) / grid["tuned"]["dir"]) for table in spec["tables"] for grid in _grids(table)
            if "tuned" in grid]


def run_tuned_searches(spec: dict[str, Any], results_root: Path, executor: Any, data_root: str | None,
                       device: str, on_event=None) -> None:
    """Run (or resume; finished trials are not rerun) the search of every tuned grid of a benchmark: each method
    of the grid that declares a search space, ``trials`` trials at the search's own ``budget`` on the grid's first
    seed, scored on validation only."""
    from fer_bench.tuning import STARTUP_TRIALS, parse_space_options, search_space, tune

    for grid, search_dir in tuned_grids(spec, results_root):
        tuned = grid["tuned"]
        methods = [m for m in grid["methods"] if any(p.search for p in get_method(m).params.values())]
        texts = parse_space_options([f"{k}={v}" for k, v in (tuned.get("space") or {}).items()], methods)
        spaces = {m: search_space(m, texts.get(m)) for m in methods}
        tune(methods, grid.get("datasets", ["synthetic"])[0], int(tuned["trials"]), grid.get("profile", "quick"),
             [list(grid.get("seeds", [0]))[0]], search_dir, executor, spaces,
             int(tuned.get("sampler_seed", 0)), _grid_context(grid, data_root, device, tuned.get("budget")),
             on_event=on_event, parallel=int(tuned.get("parallel_trials", 1)),
             startup_trials=int(tuned.get("startup_trials", STARTUP_TRIALS)), need_artifacts=False)


def _noise_matrix(value: Any) -> dict | None:
    """A grid's ``noise_matrix``: a CSV path (see ``read_noise_matrix``) or {true: {noisy: weight}}."""
    from fer_bench.data.noise import read_noise_matrix
    if value is None or isinstance(value, dict):
        return value
    return read_noise_matrix(str(value))


def paper_table(table: dict[str, Any], long: pd.DataFrame) -> pd.DataFrame:
    """published | ours (mean +- std, n) | delta, one row per grid point of the table."""
    metrics, scale = table["metric"], float(table.get("scale", 100.0))
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)   # several: put "metric" in the rows
    rows_by = table.get("rows", ["method", "dataset"])
    rows_by = [rows_by] if isinstance(rows_by, str) else list(rows_by)
    part = long[long["metric"].isin(metrics)]
    ours = mean_std(part, rows_by)
    published = pd.DataFrame(table.get("published") or [], columns=[*rows_by, "value", "source"])
    merged = ours.merge(published, on=rows_by, how="outer")
    out = merged[rows_by].copy()
    out["published"] = merged["value"]
    out["ours_mean"] = merged["mean"] * scale
    out["ours_std"] = merged["std"] * scale
    out["n"] = merged["n"].fillna(0).astype(int)
    out["ours"] = [format_mean_std(m, s, n, scale) if n else "missing"
                   for m, s, n in zip(merged["mean"], merged["std"], out["n"])]
    out["delta"] = out["ours_mean"] - out["published"]
    out["source"] = merged["source"]
    return out.sort_values(rows_by, kind="stable").reset_index(drop=True)


def write_paper_tables(benchmark_path: str | Path, results_root: str | Path = "results", run: bool = True,
                       data_root: str | None = None, device: str = "auto",
                       on_event=None, executor: Any = None, reuse: list[Path] = ()) -> list[Path]:
    """Run the missing cells of a benchmark (unless ``run`` is False) and write its tables.

    The benchmark's store lives in ``results/<benchmark>/run/``, so ``--no-run`` can regenerate
    the tables from a committed store without any training. The cells of all tables form one grid
    (a cell two tables share runs once) on ``executor`` (default: the local one). Cells finished in
    the run directories of ``reuse`` or of the file's ``reuse:`` list (relative to ``results_root``;
    ones that do not exist are passed over) are imported, not run again.
    """
    from fer_bench.runner import LocalExecutor, run_grid
    from fer_bench.tuning import TRIALS_DIR

    spec = load_benchmark(benchmark_path)
    out_dir = Path(results_root) / spec["name"]
    run_dir = out_dir / "run"
    executor = executor or LocalExecutor(progress=None)
    if run:
        run_tuned_searches(spec, Path(results_root), executor, data_root, device, on_event)
    per_table = [(table, table_settings(table, data_root, device, results_root)) for table in spec["tables"]]
    if run:
        cells = {s.cell_id: s for _, settings in per_table for _, s in settings}
        declared = [Path(results_root) / d for d in spec.get("reuse") or []]
        searches = [search_dir / TRIALS_DIR for _, search_dir in tuned_grids(spec, results_root)]
        sources = [*reuse, *(d for d in [*declared, *searches] if (d / STORE_NAME).is_file())]
        run_grid(list(cells.values()), run_dir, executor, on_event=on_event,
                 reuse=sources, need_artifacts=False)  # tables read metrics; committed results keep no cell folders
    if not (run_dir / STORE_NAME).is_file():
        raise FileNotFoundError(f"{str(run_dir)!r} has no results yet; run 'fer-bench tables {benchmark_path}' "
                                f"without --no-run first.")
    written = []
    with Store(run_dir / STORE_NAME) as store:
        if spec.get("figures"):
            ids = [s.cell_id for _, settings in per_table for _, s in settings]
            written += copy_cell_figures(store, run_dir, out_dir / "figures", ids, set(spec["figures"]))
        for table, settings in per_table:
            long = table_long(store, settings)
            frame = paper_table(table, long)
            csv_path = out_dir / f"{table['name']}.csv"
            atomic_write_text(csv_path, frame.to_csv(index=False, float_format="%.4f"))
            metric = table["metric"] if isinstance(table["metric"], str) else ", ".join(table["metric"])
            title = f"## {table.get('title', table['name'])}\n\nMetric: {metric} (x{table.get('scale', 100)})\n\n"
            notes = f"\n{table['notes'].strip()}\n" if table.get("notes") else ""
            sources = _sources_line(frame)
            body = layout_markdown(table, frame, long, float(table.get("scale", 100.0)))
            atomic_write_text(csv_path.with_suffix(".md"), title + body + sources + notes)
            written += [csv_path, csv_path.with_suffix(".md")]
            written += write_search_summary(table, store, out_dir, results_root, data_root, device)
    return written


SEARCH_COLUMNS = ["method", "trials", "failed", "best_trial", "search_val", "default_val", "tuned_val", "changed"]


def write_search_summary(table: dict[str, Any], store: Store, out_dir: Path, results_root: str | Path,
                         data_root: str | None, device: str) -> list[Path]:
    """``<table>_search.{csv,md}`` for a table with tuned grids: what each method's search found (``search_frame``)."""
    from fer_bench.tuning import SUMMARY_FILE

    frames = [search_frame(grid, Path(results_root) / grid["tuned"]["dir"], store, data_root, device)
              for grid in _grids(table) if "tuned" in grid
              and (Path(results_root) / grid["tuned"]["dir"] / SUMMARY_FILE).is_file()]
    if not frames:
        return []
    frame = pd.concat(frames, ignore_index=True)
    csv_path = out_dir / f"{table['name']}_search.csv"
    atomic_write_text(csv_path, frame.to_csv(index=False, float_format="%.4f"))
    shown = frame.assign(**{c: frame[c].map(lambda v: "-" if pd.isna(v) else f"{100 * v:.2f}")
                            for c in ("search_val", "default_val", "tuned_val")})
    text = (f"## {table.get('title', table['name'])}: the searches\n\n"
            "Per method: finished and failed trials, the best trial and its validation accuracy at the search's "
            "budget (seed 0), the validation accuracy of the default and the tuned configuration at the table's "
            "budget (mean over its seeds), and the parameters the search changed (default -> tuned; the others "
            "stayed at their defaults). Validation only: the test split chose nothing.\n\n"
            + tabulate(shown[SEARCH_COLUMNS].values.tolist(), headers=SEARCH_COLUMNS, tablefmt="github") + "\n")
    atomic_write_text(csv_path.with_suffix(".md"), text)
    return [csv_path, csv_path.with_suffix(".md")]


def search_frame(grid: dict[str, Any], search_dir: Path, store: Store, data_root: str | None,
                 device: str) -> pd.DataFrame:
    """One row per method of a tuned grid (``SEARCH_COLUMNS``): its trials (finished, failed), the best trial and
    its validation score at the search's budget, the mean validation score of its default and tuned cells at the
    grid's budget (NaN until they ran) and the searched parameters the best trial changed, ``name: default ->
    tuned``."""
    from fer_bench.tuning import SCORE, SUMMARY_FILE

    record = json.loads((search_dir / SUMMARY_FILE).read_text())
    context, defaults = _grid_context(grid, data_root, device), _grid_specs(grid, data_root, device)
    rows = []
    for method in (m for m in grid["methods"] if m in record["methods"]):
        entry = record["methods"][method]
        mine = [s for s in defaults if s.method == method]
        tuned = _tuned_specs(grid, method, entry["best_params"], context)
        params = mine[0].params if mine else {}                  # the resolved defaults of the grid's profile
        states = [t["state"] for t in entry["trials"]]
        changed = [f"{k}: {_param_text(params.get(k))} -> {_param_text(v)}"
                   for k, v in sorted(entry["best_params"].items()) if _param_text(params.get(k)) != _param_text(v)]
        rows.append({"method": method, "trials": states.count("COMPLETE"), "failed": states.count("FAIL"),
                     "best_trial": entry["best_trial"], "search_val": entry["best_value"],
                     "default_val": _mean_score(store, mine, SCORE), "tuned_val": _mean_score(store, tuned, SCORE),
                     "changed": "; ".join(changed) or "(none)"})
    return pd.DataFrame(rows, columns=SEARCH_COLUMNS)


def _mean_score(store: Store, specs: list, metric: str) -> float:
    values = [store.metrics(s.cell_id).get(metric) for s in specs if store.status(s.cell_id) == "done"]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else float("nan")


def _param_text(value: Any) -> str:
    """A parameter value as the summary prints it: floats to 3 significant digits."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _sources_line(frame: pd.DataFrame) -> str:
    """The distinct sources of the published numbers, one line each."""
    sources = list(dict.fromkeys(str(s) for s in frame["source"] if pd.notna(s)))
    return ("\nPublished numbers: " + "; ".join(sources) + ".\n") if sources else ""


def copy_cell_figures(store: Store, run_dir: Path, dest: Path, ids: list[str], methods: set[str]) -> list[Path]:
    """Copy the method-specific figures (``extra/*.png`` artifacts) of ``methods`` among the cells ``ids`` into
    ``dest`` as ``<figure>_<dataset>_seed<k>.png``, one cell per grid point (``first_seed_per_point``). Cell
    folders are not committed, these copies are; a cell whose folder is absent (a committed store on a fresh
    checkout) keeps the copies already there."""
    cells = [c for c in store.cells(ids) if c["spec"]["method"] in methods]
    copied = []
    for cell in first_seed_per_point(cells).values():
        for name, rel in store.artifacts(cell["id"]).items():
            source = run_dir / rel
            if name.startswith("extra/") and source.suffix == ".png" and source.is_file():
                dest.mkdir(parents=True, exist_ok=True)
                target = dest / f"{source.stem}_{_slug(cell['spec']['dataset_label'])}_seed{cell['spec']['seed']}.png"
                shutil.copyfile(source, target)
                copied.append(target)
    return copied
