"""SCE-ALD's own summaries and figures: how the amended label distributions score against the truth, the
label-distribution figure (Fig. 4) and the report of a committed run (see :mod:`fer_bench_methods.sceald`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fer_bench import labels as L
from fer_bench.fileio import atomic_path
import fer_bench_methods.sceald.wordvec as wordvec

REPORT_METRICS = ("accuracy", "noisy_recovered_top1", "noisy_recovered_top2", "alpha_auc_clean_vs_noisy",
                  "alpha_clean_mean", "alpha_noisy_mean", "ld_top1_is_label", "ld_entropy_mean", "ld_kl_to_truth",
                  "ld_top1_agrees_truth", "ld_top2_agrees_truth_blended", "test_ld_kl_to_truth",
                  "test_ld_top2_agrees_truth_blended", "kl_to_label_dist")



def _rows_of(array: np.ndarray | None, rows: np.ndarray) -> np.ndarray | None:
    return None if array is None else np.asarray(array)[rows]


def amend_summary(ld: np.ndarray, alpha: np.ndarray, labels: np.ndarray, clean: np.ndarray | None,
                  truth: np.ndarray | None) -> dict[str, float]:
    """Scores of amended distributions ``ld`` (N, C) with confidences ``alpha`` (N,).

    labels: the labels trained on; clean: the true labels when noise was injected (how many noisy
    labels the amended distribution put back on the true class); truth: ground-truth distributions
    (KL(truth || ld), top-1 and top-2 agreement; top-2 over blended rows only, where the second
    class is real).
    """
    ent = -(ld * np.log(np.clip(ld, 1e-12, None))).sum(1)
    out = {"ld_entropy_mean": float(ent.mean()), "alpha_mean": float(alpha.mean()),
           "ld_top1_is_label": float((ld.argmax(1) == labels).mean())}
    if clean is not None:
        noisy = labels != clean
        out["noise_rate_seen"] = float(noisy.mean())
        if noisy.any():
            top2 = np.argsort(-ld, axis=1)[:, :2]
            out["noisy_recovered_top1"] = float((ld.argmax(1) == clean)[noisy].mean())
            out["noisy_recovered_top2"] = float((top2 == clean[:, None]).any(1)[noisy].mean())
            out["alpha_clean_mean"] = float(alpha[~noisy].mean()) if (~noisy).any() else float("nan")
            out["alpha_noisy_mean"] = float(alpha[noisy].mean())
            if (~noisy).any():
                from sklearn.metrics import roc_auc_score
                out["alpha_auc_clean_vs_noisy"] = float(roc_auc_score((~noisy).astype(int), alpha))
    if truth is not None:
        from fer_bench.divergence import kl_divergence
        truth = np.asarray(truth, dtype=np.float64)
        out["ld_kl_to_truth"] = kl_divergence(truth, ld.astype(np.float64))
        out["ld_top1_agrees_truth"] = float((ld.argmax(1) == truth.argmax(1)).mean())
        srt = np.sort(truth, axis=1)
        blended = srt[:, -2] > srt[:, 0] + 1e-6
        if blended.any():
            t2 = np.sort(np.argsort(-truth, axis=1)[:, :2], axis=1)
            l2 = np.sort(np.argsort(-ld, axis=1)[:, :2], axis=1)
            out["ld_top2_agrees_truth_blended"] = float((t2 == l2).all(1)[blended].mean())
            out["blended_fraction"] = float(blended.mean())
    return out


def first_per_class(labels: np.ndarray, num_classes: int, mask: np.ndarray | None = None) -> np.ndarray:
    """Index of the first row of each class (where ``mask``), classes without one skipped."""
    picks = []
    for k in range(num_classes):
        hits = np.flatnonzero((labels == k) & (True if mask is None else mask))
        if len(hits):
            picks.append(int(hits[0]))
    return np.asarray(picks, dtype=np.int64)


def plot_label_distributions(images: np.ndarray, class_names: list[str], label_rows: list[np.ndarray],
                             dists: list[np.ndarray], alphas: list[np.ndarray], row_titles: list[str],
                             path: str | Path) -> Path:
    """The paper's Figures 4-5: one column per image; under it, one bar chart per setting (e.g. clean
    and noisy labels) of the amended distribution, titled with that setting's label and alpha."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n, rows = len(images), len(dists)
    fig = Figure(figsize=(2.1 * n, 1.9 * (rows + 1)))
    FigureCanvasAgg(fig)
    short = L.names([L.canonical_id(nm) for nm in class_names], "short")
    for j in range(n):
        ax = fig.add_subplot(rows + 1, n, j + 1)
        ax.imshow(images[j])
        ax.set_axis_off()
        for r in range(rows):
            ax = fig.add_subplot(rows + 1, n, (r + 1) * n + j + 1)
            values = dists[r][j]
            ax.bar(np.arange(len(values)), values, color=["C3" if k == label_rows[r][j] else "C0" for k in range(len(values))])
            ax.set_ylim(0, 1)
            ax.set_xticks(np.arange(len(values)), short, fontsize=6)
            ax.tick_params(axis="y", labelsize=6)
            ax.set_title(f"{row_titles[r]}: {short[label_rows[r][j]]}  α={alphas[r][j]:.2f}", fontsize=7)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, metadata={"Software": None})
    return path


def write_report(run_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """From a benchmark run directory (its store and cell folders), write into ``out_dir``:
    ``noise_recovery.{csv,md}`` (SCE-ALD's amended distributions against clean labels and ground truth,
    mean +- std over seeds), ``fig3_word_cosines.png`` and ``fig4_label_distributions_noise<r>.png``
    (one training image per class whose label the noise flipped: the amended distribution and alpha
    of the clean run and of the noisy run, seed 0). Run:
    ``python -c "from fer_bench_methods.sceald import write_report; write_report('results/sceald/run', 'results/sceald')"``
    """
    from tabulate import tabulate

    from fer_bench import plots as P
    from fer_bench.runner import CellSpec, load_splits
    from fer_bench.store import Store
    from fer_bench.tables import mean_std

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with Store(run_dir / "results.sqlite") as store:
        long = store.metrics_frame()
        cells = [c for c in store.cells() if c["status"] == "done"]
    part = long[long["metric"].isin(REPORT_METRICS)]
    if not part.empty:
        table = mean_std(part, ["method", "label_noise", "overrides", "metric"])
        table.to_csv(out_dir / "noise_recovery.csv", index=False, float_format="%.4f")
        wide = table.assign(text=[f"{m:.3f} ± {s:.3f} (n={n})" for m, s, n in zip(table["mean"], table["std"], table["n"])])
        wide = wide.pivot_table(index=["method", "label_noise", "overrides"], columns="metric", values="text",
                                aggfunc="first").reset_index()
        wide = wide[[c for c in ["method", "label_noise", "overrides", *REPORT_METRICS] if c in wide.columns]]
        text = ("## SCE-ALD amended label distributions on the synthetic dataset\n\n"
                "noisy_recovered_top1/top2: share of the training labels flipped by the noise whose amended "
                "distribution has the true class first / in the top 2; alpha_auc_clean_vs_noisy: ROC AUC of "
                "alpha separating clean from flipped labels (0.5 = chance); ld_kl_to_truth: KL(ground-truth blend "
                "|| amended distribution) on train; ld_top2_agrees_truth_blended: the amended top-2 classes equal "
                "the true blend's two classes (blended images only); kl_to_label_dist: KL of the classifier's test "
                "probabilities to the ground truth.\n\n"
                + tabulate(wide.fillna("—"), headers="keys", tablefmt="github", showindex=False) + "\n")
        (out_dir / "noise_recovery.md").write_text(text)
        written += [out_dir / "noise_recovery.csv", out_dir / "noise_recovery.md"]
    vectors = wordvec.emotion_vectors(L.BASIC7)
    paper_order = [L.SURPRISE, L.FEAR, L.DISGUST, L.HAPPY, L.SAD, L.ANGER, L.NEUTRAL]
    cos = wordvec.cosine_matrix(vectors)[np.ix_(paper_order, paper_order)]
    written.append(P.plot_cosine_matrix(cos, L.names(paper_order), out_dir / "fig3_word_cosines.png",
                                        title="emotion-word cosines (default table: all-MiniLM-L6-v2)"))
    # Figures 4-5: pair the seed-0 clean cell with each seed-0 noisy cell of the same settings
    sce = [c for c in cells if c["spec"]["method"] == "sceald" and c["spec"]["seed"] == 0
           and "beta" not in c["spec"]["overrides"]]
    clean = next((c for c in sce if c["spec"]["label_noise"] == 0.0), None)
    for noisy in (c for c in sce if c["spec"]["label_noise"] > 0 and clean is not None):
        spec_fields = {k: v for k, v in noisy["spec"].items() if k in CellSpec.__dataclass_fields__}
        train, _, _ = load_splits(CellSpec(**spec_fields))
        arrays = {}
        for tag, cell in (("clean", clean), ("noisy", noisy)):
            folder = run_dir / "cells" / cell["id"] / "extra"
            arrays[tag] = {k: np.load(folder / f"{k}.npy") for k in ("train_amended_dist", "train_alpha",
                                                                      "train_labels_used")}
        true, used = arrays["clean"]["train_labels_used"], arrays["noisy"]["train_labels_used"]
        picks = first_per_class(true, train.num_classes, mask=used != true)
        rate = noisy["spec"]["label_noise"]
        path = out_dir / f"fig4_label_distributions_noise{int(round(rate * 100))}.png"
        plot_label_distributions(train.images[picks], L.names(train.classes),
                                 [true[picks], used[picks]],
                                 [arrays["clean"]["train_amended_dist"][picks], arrays["noisy"]["train_amended_dist"][picks]],
                                 [arrays["clean"]["train_alpha"][picks], arrays["noisy"]["train_alpha"][picks]],
                                 ["clean", f"noisy {rate:.0%}"], path)
        written.append(path)
    return written
