"""``fer-bench report PATH``: one self-contained page per run directory or benchmark (issue #21).

The page (``report.html`` in the run directory, or in ``results/<benchmark>/`` for a benchmark file) holds the
tables (the run summary; a benchmark's tables in the paper's layout), learning curves, accuracy against training
cost, confusion matrices, per-class recall, retrieval curves and embedding maps (the run's ``plots/``, linked
relatively so the page works from a file URL with no network), and the provenance: versions, git commit,
platform, and per cell its resolved configuration, dataset fingerprints and initial weights. Tables sort on a
click (a few lines of inline script, no network). Everything on the page is read from files already on disk:
writing it trains nothing, and the same files give the same page byte for byte.
"""
from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape

from fer_bench import plots as P
from fer_bench.fileio import atomic_write_text
from fer_bench.paper_layout import layout_markdown
from fer_bench.store import STORE_NAME, Store, init_label
from fer_bench.tables import _slug, load_benchmark, paper_table, summarize, summary_markdown, table_long, table_settings, tuned_grids

REPORT_NAME = "report.html"
# the run's figures by file-name prefix, in the order the page shows them
FIGURES = [("curves_", "Learning curves"), ("cost_", "Accuracy against training cost"), ("tuning_", "Search history"),
           ("confusion_", "Confusion matrices"), ("per_class_", "Per-class recall"),
           ("recall_at_k_", "Recall@K"), ("acc_at_k_", "Acc@K"), ("embedding_", "Embedding maps")]


def write_report(target: str | Path, results_root: str | Path = "results") -> Path:
    """Write the page for a run directory (it has ``results.sqlite``) or a benchmark file (``*.yaml``, whose
    store is ``<results_root>/<name>/run``); returns its path."""
    target = Path(target)
    if target.is_dir() and (target / STORE_NAME).is_file():
        return _run_report(target)
    if target.suffix in (".yaml", ".yml") and target.is_file():
        return _benchmark_report(target, Path(results_root))
    raise FileNotFoundError(f"{str(target)!r} is neither a run directory (a folder with {STORE_NAME}) nor a "
                            f"benchmark file (benchmarks/*.yaml); pass one of those.")


def _run_report(run_dir: Path) -> Path:
    with Store(run_dir / STORE_NAME) as store:
        long = store.metrics_frame()
        cells = list(store.cells())
    failures = [{"method": c["spec"]["method"], "dataset": c["spec"]["dataset_label"], "seed": c["spec"]["seed"],
                 "error": c["error"]} for c in cells if c["status"] == "failed"]
    sections = [{"title": "Summary", "html": _blocks_html(summary_markdown(summarize(long), failures, "html"))}]
    sections += _tuning_sections(run_dir)
    write_cost_plots(run_dir / "plots", long)
    return _render(run_dir / REPORT_NAME, title=f"fer-bench run {run_dir.name}", sections=sections,
                   figures=_figures(run_dir, run_dir / "plots"), cells=_cell_rows(cells),
                   manifest=_manifest(run_dir))


def _benchmark_report(path: Path, results_root: Path) -> Path:
    spec = load_benchmark(path)
    out_dir = results_root / spec["name"]
    run_dir = out_dir / "run"
    if not (run_dir / STORE_NAME).is_file():
        raise FileNotFoundError(f"{str(run_dir)!r} has no results yet; run 'fer-bench tables {path}' first.")
    sections = []
    with Store(run_dir / STORE_NAME) as store:
        ids = []
        for table in spec["tables"]:
            settings = table_settings(table, results_root=results_root)
            ids += [s.cell_id for _, s in settings]
            long = table_long(store, settings)
            scale = float(table.get("scale", 100.0))
            body = layout_markdown(table, paper_table(table, long), long, scale, tablefmt="html")
            metric = table["metric"] if isinstance(table["metric"], str) else ", ".join(table["metric"])
            notes = table.get("notes", "").strip()
            sections.append({"title": table.get("title", table["name"]), "html": _blocks_html(
                f"Metric: `{metric}` (x{table.get('scale', 100)})\n\n{body}" + (f"\n\n{notes}" if notes else ""))})
        cells = list(store.cells(list(dict.fromkeys(ids))))
        write_cost_plots(run_dir / "plots", store.metrics_frame([c["id"] for c in cells]))
    searches = list(dict.fromkeys(search_dir for _, search_dir in tuned_grids(spec, results_root)))
    for search in searches:                       # the tuned grids' search histories, after the tables
        sections += _tuning_sections(search)
    figures = _figures(out_dir, run_dir / "plots") + _figures(out_dir, out_dir / "figures", "Method figures")
    figures += [group for search in searches if search.resolve().is_relative_to(out_dir.resolve())
                for group in _figures(out_dir, search / "plots", f"Search history: {search.name}", prefixes=False)]
    figures += _figures(out_dir, out_dir, "Benchmark figures", prefixes=False)
    return _render(out_dir / REPORT_NAME, title=spec.get("title", spec["name"]), sections=sections, figures=figures,
                   cells=_cell_rows(cells), manifest=_manifest(run_dir), description=spec.get("description", ""))


def write_cost_plots(plots: Path, long: pd.DataFrame) -> list[Path]:
    """``plots/cost_<dataset>.png``: test accuracy against training CPU-seconds per grid point."""
    wanted = long[long["metric"].isin(["accuracy", "train_cpu_seconds"])]
    if wanted.empty or "train_cpu_seconds" not in set(wanted["metric"]):
        return []
    keys = ["method", "dataset", "label_noise", "overrides", "init"]
    wide = wanted.pivot_table(index=[*keys, "seed"], columns="metric", values="value").reset_index().dropna()
    written = []
    for dataset, part in wide.groupby("dataset"):
        stats = part.groupby(keys[:1] + keys[2:], dropna=False).agg(
            accuracy=("accuracy", "mean"), accuracy_std=("accuracy", "std"), cpu_seconds=("train_cpu_seconds", "mean"),
            cpu_std=("train_cpu_seconds", "std")).reset_index().fillna({"accuracy_std": 0.0, "cpu_std": 0.0})
        several = stats["init"].nunique() > 1
        stats["label"] = [m + (f" {o}" if o else "") + (f" [{i}]" if several else "") + (f" noise {n:g}" if n else "")
                          for m, o, i, n in zip(stats["method"], stats["overrides"], stats["init"], stats["label_noise"])]
        plots.mkdir(parents=True, exist_ok=True)
        written.append(P.plot_accuracy_vs_cost(stats, plots / f"cost_{_slug(dataset)}.png",
                                               title=f"{dataset}: accuracy against training cost"))
    return written


def _tuning_sections(run_dir: Path) -> list[dict[str, str]]:
    """A ``fer-bench tune`` run: per method its space and best configuration, and ``plots/tuning.png``."""
    path = run_dir / "tuning.json"
    if not path.is_file():
        return []
    record = json.loads(path.read_text())
    history = {m: [(t["number"], t["value"]) for t in r["trials"]] for m, r in record["methods"].items()}
    P.plot_search_history(history, run_dir / "plots" / "tuning_history.png",
                          title=f"{record['dataset']}: {record['trials']} TPE trials per method (seed "
                                f"{record['sampler_seed']})")
    lines = [f"- `{m}`: best validation {r['best_value']:.4f} at trial {r['best_trial']} with "
             + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(r["best_params"].items()))
             + "; space " + ", ".join(f"{k} {v}" for k, v in sorted(r["space"].items()))
             for m, r in record["methods"].items()]
    text = (f"Equal-effort tuning: {record['trials']} trials per method, {record['sampler']} sampler (seed "
            f"{record['sampler_seed']}), scored on validation; the best configuration trained on seeds "
            f"{', '.join(map(str, record['seeds']))}.\n\n" + "\n".join(lines))
    return [{"title": f"Tuning on {record['dataset']}", "html": _blocks_html(text)}]


def _figures(page_dir: Path, folder: Path, title: str | None = None, prefixes: bool = True) -> list[dict[str, Any]]:
    """Groups of figures under ``folder``, as paths relative to the page."""
    if not folder.is_dir():
        return []
    files = sorted(f for f in folder.glob("*.png") if not f.name.startswith("."))   # hidden: a writer's temporary file
    if not prefixes:
        return [{"title": title, "images": [_image(page_dir, f) for f in files]}] if files else []
    groups = []
    for prefix, name in FIGURES if title is None else [("", title)]:
        chosen = [f for f in files if f.name.startswith(prefix)]
        if chosen:
            groups.append({"title": name, "images": [_image(page_dir, f) for f in chosen]})
    return groups


def _image(page_dir: Path, path: Path) -> dict[str, str]:
    return {"src": path.relative_to(page_dir).as_posix(), "caption": path.stem.replace("_", " ")}


def _cell_rows(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per cell; a cell left 'running' by a killed run may have only part of its spec stored."""
    rows = []
    for c in cells:
        spec, info = c["spec"], c.get("info") or {}
        config = {key: spec.get(key) for key in ("params", "dataset_options", "label_noise", "profile", "budget")}
        config.update(fingerprints=info.get("fingerprints"), weights=info.get("weights"),
                      torch_threads=info.get("torch_threads"))
        rows.append({"id": c["id"], "method": spec.get("method", "?"), "seed": spec.get("seed", ""),
                     "dataset": spec.get("dataset_label", spec.get("dataset", "?")), "status": c["status"],
                     "init": init_label(spec), "overrides": spec.get("overrides_label", ""),
                     "config": json.dumps(config, indent=1, sort_keys=True, default=str)})
    return sorted(rows, key=lambda r: (r["method"], r["dataset"], str(r["seed"])))


def _manifest(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "manifest.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return {k: data.get(k) for k in ("versions", "git_commit", "platform", "host")}


def _blocks_html(text: str) -> str:
    """The Markdown-like text of the tables module (paragraphs, bullet lists, ``## `` titles, HTML tables from
    tabulate, `code`) as HTML."""
    out = []
    for block in re.split(r"\n\s*\n", text.strip()):
        block = block.strip()
        if not block:
            continue
        if block.startswith("<table"):
            out.append(block.replace("<table>", '<table class="sortable">', 1))
        elif all(line.startswith("- ") for line in block.splitlines()):
            out.append("<ul>" + "".join(f"<li>{_inline(line[2:])}</li>" for line in block.splitlines()) + "</ul>")
        elif block.startswith("## "):
            out.append(f"<h3>{_inline(block[3:])}</h3>")
        else:
            out.append(f"<p>{_inline(block)}</p>")
    return "\n".join(out)


def _inline(text: str) -> str:
    escaped = html.escape(text, quote=False)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)


def _render(path: Path, **context: Any) -> Path:
    env = Environment(loader=PackageLoader("fer_bench", "templates"), autoescape=select_autoescape(["html", "j2"]))
    page = env.get_template("report.html.j2").render(**context)
    return atomic_write_text(path, page)
