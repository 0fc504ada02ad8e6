"""What ``fer-bench tables benchmarks/sgm.yaml`` cannot produce yet, from the finished cells of results/sgm/run.

1. Table 1, cross-domain columns (``table1_nmi_cross.{csv,md}``): the runner trains and tests on one
   dataset, so train-on-synthetic / test-on-shifted-synthetic is done here. Every finished ``triplet``
   and ``sgm`` cell's saved model (``cells/<id>/model``) embeds the test split of
   - the same synthetic options (in-domain, as the runner did; a consistency check),
   - ``seed=1``: another draw of everything, a new identity pool (same distribution),
   - ``nuisance=2.0``: all pose / lighting / occlusion / background ranges doubled (a domain shift),
   and we report the NMI of k-means clusters (k = classes) and the kNN accuracy against the
   training gallery of the model (the synthetic test sets share the label space, nothing is dropped).
2. Figure 5 (``figures/f1_vs_k.png``): the paper's F1 of the kNN classifier against k, from the
   ``knn_f1@k`` metrics that ``SGM`` / ``Triplet.extra_results`` stored.
3. Figure 3 (``figures/recall_at_k.png``, ``figures/acc_at_k.png``) and Figure 2 (one 2-D map per
   method): copied from ``fer-bench plot results/sgm/run`` output.

Run from the repository root after the benchmark:  python results/sgm/extras.py
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

import fer_bench_methods.sgm  # noqa: F401  (registers sgm, triplet, dgms)
from fer_bench import metrics as M
from fer_bench import plots as P
from fer_bench.data import load_dataset
from fer_bench.method import Method
from fer_bench.store import Store

HERE = Path(__file__).resolve().parent
RUN = HERE / "run"
SHIFTS = {"in-domain": {}, "seed=1 (new identities)": {"seed": 1}, "nuisance=2.0 (stronger pose/light)": {"nuisance": 2.0}}


def cross_domain(store: Store) -> pd.DataFrame:
    rows = []
    tests: dict[tuple, object] = {}
    for cell in store.cells():
        spec = cell["spec"]
        if cell["status"] != "done" or spec["method"] not in ("triplet", "sgm"):
            continue
        model = Method.load(RUN / "cells" / cell["id"] / "model")
        for shift, change in SHIFTS.items():
            options = {**spec["dataset_options"], **change}
            key = tuple(sorted(options.items()))
            if key not in tests:
                tests[key] = load_dataset(spec["dataset"], "test", **options)
            test = tests[key]
            emb = model.embed(test)
            rows.append({"method": spec["method"], "overrides": spec["overrides_label"], "test set": shift,
                         "seed": spec["seed"], "nmi": M.nmi(emb, test.labels, test.num_classes, seed=spec["seed"]),
                         "knn_acc": float((model.predict(test) == test.labels).mean())})
    return pd.DataFrame(rows)


def summarise(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.groupby(["method", "overrides", "test set"], sort=False).agg(
        nmi_mean=("nmi", "mean"), nmi_std=("nmi", "std"), knn_acc_mean=("knn_acc", "mean"),
        knn_acc_std=("knn_acc", "std"), n=("seed", "count")).reset_index()
    return out


def figure5(long: pd.DataFrame, target: Path) -> None:
    part = long[long["metric"].str.startswith("knn_f1@") & long["method"].isin(["triplet", "sgm"])]
    curves = {}
    for method, sub in part.groupby("method"):
        means = sub.groupby("metric")["value"].mean()
        curves[method] = {int(k.split("@")[1]): float(v) for k, v in means.items()}
    if curves:
        P.plot_retrieval_curves(curves, target, metric_name="F1 of the kNN classifier (test)", ylim=None,
                                title="Figure 5 on synthetic: F1 against the number of neighbours k")


def main() -> int:
    figures = HERE / "figures"
    figures.mkdir(exist_ok=True)
    with Store(RUN / "results.sqlite") as store:
        frame = cross_domain(store)
        long = store.metrics_frame()
    if not frame.empty:
        frame.to_csv(HERE / "table1_nmi_cross_long.csv", index=False, float_format="%.4f")
        table = summarise(frame)
        table.to_csv(HERE / "table1_nmi_cross.csv", index=False, float_format="%.4f")
        shown = table.assign(**{
            "NMI (%)": [f"{m * 100:.2f} ± {s * 100:.2f}" for m, s in zip(table.nmi_mean, table.nmi_std.fillna(0))],
            "kNN acc (%)": [f"{m * 100:.2f} ± {s * 100:.2f}" for m, s in zip(table.knn_acc_mean, table.knn_acc_std.fillna(0))],
        })[["method", "overrides", "test set", "NMI (%)", "kNN acc (%)", "n"]]
        (HERE / "table1_nmi_cross.md").write_text(
            "## Table 1, cross-domain: trained on synthetic, tested on shifted synthetic test sets\n\n"
            + tabulate(shown, headers="keys", tablefmt="github", showindex=False)
            + "\n\nComputed by results/sgm/extras.py from the saved models of the benchmark's cells "
              "(mean ± std over seeds). NMI: k-means (k = classes) of the test embeddings; kNN accuracy: k = 11 "
              "against the model's training gallery. The paper's Table 1 (trained on FER+, tested on FER+, "
              "AffectNet, JAFFE, CK+, BU-3DFE) is in table1_nmi.md.\n")
    figure5(long, figures / "f1_vs_k.png")
    plots = RUN / "plots"
    for png in sorted(plots.glob("*.png")) if plots.is_dir() else []:
        if png.name.startswith(("recall_at_k", "acc_at_k", "embedding_")):
            shutil.copy(png, figures / png.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
