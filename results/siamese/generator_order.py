"""Which cyclic order does the synthetic dataset itself imply, and do the embeddings follow it?

The human circumplex (Happy, Surprise, Fear, Sad, Anger, Disgust) is a property of human perception of
real faces; the synthetic faces are drawn from action-unit prototypes (fer_bench/data/synthetic.py,
VARIANTS). This script

1. places the six basic emotions' mean AU prototypes (averaged over their variants, both face sides) on a
   circle the way the circumplex metric places class centroids (classical MDS to 2-D, angles), and scores
   that "generator order" against the human circumplex;
2. for every finished cell of the siamese benchmark whose test embedding is on disk (``cells/`` is not
   committed: run ``fer-bench tables benchmarks/siamese.yaml`` first), scores the embedding's centroid
   order against the generator order (circular tau, reflection allowed) and the centroid distances against
   the prototype distances (Spearman rho), beside its tau against the human order.

Usage: python results/siamese/generator_order.py [RUN_DIR]    (default results/siamese/run)
Writes generator_order.csv / .md next to this script when cells were found.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from fer_bench import labels as L
from fer_bench.circumplex import PAIRS, REFERENCE_ORDER, circumplex_analysis, triple_orientations
from fer_bench.data.synthetic import PROTOTYPES, VARIANTS
from fer_bench.store import Store

HERE = Path(__file__).resolve().parent


def prototype_points() -> np.ndarray:
    """(6, AUs x 2) mean AU prototype of each emotion of REFERENCE_ORDER."""
    return np.stack([PROTOTYPES[c, :len(VARIANTS[c])].reshape(len(VARIANTS[c]), -1).mean(0) for c in REFERENCE_ORDER])


def tau_between(a, b) -> float:
    """Circular Kendall tau between two cyclic position vectors (rows in REFERENCE_ORDER), reflection allowed."""
    return float(abs(triple_orientations(a.positions, a.k) @ triple_orientations(b.positions, b.k)) / 20)


def pair_distances(points: np.ndarray) -> np.ndarray:
    return np.array([np.linalg.norm(points[i] - points[j]) for i, j in PAIRS])


def names(order) -> str:
    return " > ".join(L.names([c])[0] for c in order)


def main(run_dir: Path) -> None:
    proto = prototype_points()
    gen = circumplex_analysis(proto, np.arange(6), list(REFERENCE_ORDER), n_boot=0)
    print(f"generator order (AU prototypes, counter-clockwise from Happy): {names(gen.model_order)}")
    print(f"  tau against the human circumplex {gen.tau:.2f} (p = {gen.tau_p:.3f}), exact {gen.exact:.0f}, "
          f"rho(distances, hexagon steps) {gen.rsa:.2f}")
    rows = []
    with Store(run_dir / "results.sqlite") as store:
        for cell in store.cells():
            arts = store.artifacts(cell["id"])
            if cell["status"] != "done" or "test_embed" not in arts or not (run_dir / arts["test_embed"]).is_file():
                continue
            emb, y = np.load(run_dir / arts["test_embed"]), np.load(run_dir / arts["test_labels"])
            res = circumplex_analysis(emb, y, cell["info"]["classes"], n_boot=0)
            if res is None:
                continue
            spec = cell["spec"]
            rows.append({"method": spec["method"], "dataset": spec["dataset_label"], "seed": spec["seed"],
                         "order": names(res.model_order), "tau_human": res.tau, "tau_generator": tau_between(res, gen),
                         "rho_generator": float(spearmanr(pair_distances(res.centroids), pair_distances(proto))[0])})
    if not rows:
        print(f"no test embeddings under {run_dir}/cells: run the benchmark first for the per-cell comparison.")
        return
    frame = pd.DataFrame(rows).sort_values(["dataset", "method", "seed"])
    frame.to_csv(HERE / "generator_order.csv", index=False, float_format="%.4f")
    means = frame.groupby(["dataset", "method"])[["tau_human", "tau_generator", "rho_generator"]].agg(["mean", "std"])
    header = (f"Generator order (mean AU prototypes, MDS): {names(gen.model_order)}; its tau against the human "
              f"circumplex is {gen.tau:.2f} (p = {gen.tau_p:.3f}).\n\n")
    (HERE / "generator_order.md").write_text(header + frame.to_markdown(index=False, floatfmt=".2f") + "\n\n"
                                             + means.to_markdown(floatfmt=".2f") + "\n")
    print(means.round(2).to_string())


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "run")
