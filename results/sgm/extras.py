"""The SGMLoss figures that ``fer-bench tables benchmarks/sgm.yaml`` does not draw, from results/sgm/run.

1. Figure 5 (``figures/f1_vs_k.png``): the paper's F1 of the kNN classifier against k, from the
   ``knn_f1@k`` metrics that ``SGM`` / ``Triplet.extra_results`` stored.
2. Figure 3 (``figures/recall_at_k*.png``, ``figures/acc_at_k*.png``) and Figure 2 (one 2-D map per
   method): copied from ``fer-bench plot results/sgm/run`` output.

(Table 1's cross-domain columns are cells of the benchmark itself now: its ``test_datasets`` axis.)

Run from the repository root after the benchmark:  fer-bench plot results/sgm/run && python results/sgm/extras.py
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pandas as pd

from fer_bench import plots as P
from fer_bench.store import Store

HERE = Path(__file__).resolve().parent
RUN = HERE / "run"


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
        long = store.metrics_frame()
    figure5(long, figures / "f1_vs_k.png")
    plots = RUN / "plots"
    for png in sorted(plots.glob("*.png")) if plots.is_dir() else []:
        if png.name.startswith(("recall_at_k", "acc_at_k", "embedding_")):
            shutil.copy(png, figures / png.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
