"""Calibration table of the synthetic dataset: where a trained method errs.

Reads a run directory (its store and each cell's saved test predictions) and the synthetic test
split's factor table, and prints accuracy per intensity bin and for clean vs blended faces, one row
per (method, label noise) averaged over seeds. Used to fill the calibration table of the dataset
card (fer_bench/data/synthetic.md) and the README:

    fer-bench tables benchmarks/synthetic-example.yaml
    python scripts/synthetic_calibration.py results/synthetic-example/run
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from fer_bench.data import load_dataset
from fer_bench.store import Store

BINS = [0.35, 0.5, 0.65, 0.8, 1.0001]


def main(run_dir: str) -> None:
    run = Path(run_dir)
    rows = []
    with Store(run / "results.sqlite") as store:
        for cell in store.cells():
            if cell["status"] != "done":
                continue
            spec = cell["spec"]
            test = load_dataset(spec["dataset"], "test", spec.get("data_root"), **spec["dataset_options"])
            factors = test.factors
            pred = np.load(run / store.artifacts(cell["id"])["test_pred"])
            correct = pred == test.labels
            blended = factors["blend_weight"].to_numpy() > 0
            intensity = factors["intensity"].to_numpy()
            row = {"method": spec["method"], "label_noise": spec["label_noise"], "seed": spec["seed"],
                   "all": correct.mean(), "clean faces": correct[~blended].mean(), "blended faces": correct[blended].mean()}
            for lo, hi in zip(BINS[:-1], BINS[1:]):
                inside = (intensity >= lo) & (intensity < hi)
                row[f"intensity {lo:.2f}-{min(hi, 1.0):.2f}"] = correct[inside].mean() if inside.any() else np.nan
            rows.append(row)
    frame = pd.DataFrame(rows)
    table = frame.drop(columns="seed").groupby(["method", "label_noise"]).mean() * 100
    table["seeds"] = frame.groupby(["method", "label_noise"])["seed"].count()
    print(tabulate(table.reset_index(), headers="keys", tablefmt="github", floatfmt=".1f", showindex=False))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results/synthetic-example/run")
