"""Tests of fer_bench.plots: every figure writes a readable PNG, bad inputs fail in one line, the
embedding subsample is a pure function of the seed, writes are atomic and no pyplot state leaks."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fer_bench import labels, plots

NAMES = plots.class_names_for(labels.BASIC7)
RNG = np.random.default_rng(0)
CM = RNG.integers(0, 20, size=(7, 7)) + np.diag(np.full(7, 80))
CM[5] = 0  # a class without test samples: its row is drawn blank
CURVES = {"ours": {k: 0.6 + 0.05 * i for i, k in enumerate((1, 2, 4, 8, 16, 32))},
          "triplet": {k: 0.5 + 0.05 * i for i, k in enumerate((1, 2, 4, 8, 16, 32))}}
EMB = np.concatenate([RNG.normal(size=(40, 6)) + 4 * np.eye(6)[c % 3] for c in range(3)])  # (120, 6)
EMB_LABELS = np.repeat(np.arange(3), 40)
TABLE = pd.DataFrame({"label": ["baseline", "SCN", "QCS"], "mean": [0.84, 0.87, 0.90],
                      "std": [0.01, np.nan, 0.004], "published": [np.nan, 0.8703, 0.9096]})


def assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000, f"{path} is missing or nearly empty"
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGBA", (im.format, im.mode)
        assert im.size[0] >= 300 and im.size[1] >= 300, im.size
        im.verify()
    leftovers = [p.name for p in path.parent.iterdir() if ".tmp" in p.name]   # fer_bench.fileio: .<stem>.*.tmp.png
    assert not leftovers, f"temporary files left behind: {leftovers}"


def test_class_names_for_uses_the_vocabulary():
    assert plots.class_names_for(labels.SIX_BASIC) == [labels.DISPLAY[i] for i in labels.SIX_BASIC]
    assert plots.class_names_for((7, 0), style="short") == [labels.SHORT[7], labels.SHORT[0]]
    for bad in [(8,), (-1,)]:
        with pytest.raises(ValueError, match="out of range"):
            plots.class_names_for(bad)


@pytest.fixture(scope="module")
def figures(tmp_path_factory) -> dict[str, Path]:
    """Every figure once (pyplot imported first, so a leak into its figure registry would show)."""
    pytest.importorskip("matplotlib.pyplot")
    out = tmp_path_factory.mktemp("plots") / "nested" / "dir"  # parent folders are created
    recalls = {"a": np.linspace(0.2, 0.9, 7), "b": np.r_[np.full(6, 0.5), np.nan]}
    return {
        "confusion": plots.plot_confusion(CM, NAMES, out / "cm.png", title="confusion"),
        "confusion_counts": plots.plot_confusion(CM[:3, :3], NAMES[:3], out / "cm_counts.png",
                                                 normalize=False),
        "recall_at_k": plots.plot_retrieval_curves(CURVES, out / "recall.png", title="Recall@K"),
        "acc_at_k_zoomed": plots.plot_retrieval_curves(CURVES, out / "acc.png", metric_name="Acc@K", ylim=None),
        "pca": plots.plot_embedding_2d(EMB, EMB_LABELS, NAMES[:3], out / "pca.png"),
        "identity_2d": plots.plot_embedding_2d(EMB[:, :2], EMB_LABELS, NAMES[:3], out / "identity.png"),
        "jitter_1d": plots.plot_embedding_2d(EMB[:, :1], EMB_LABELS, NAMES[:3], out / "jitter.png", method="tsne"),
        "per_class": plots.plot_per_class_recall(recalls, NAMES, out / "per_class.png", title="per-class recall"),
        "bars": plots.plot_bar_with_errors(TABLE, out / "bars.png", ylabel="accuracy", title="mean ± std"),
        "bars_plain": plots.plot_bar_with_errors(TABLE[["label", "mean"]], out / "bars_plain.png", ylabel="acc"),
        "cosine": plots.plot_cosine_matrix(np.corrcoef(RNG.normal(size=(3, 20))), NAMES[:3], out / "cos.png"),
    }


FIGURES = ["confusion", "confusion_counts", "recall_at_k", "acc_at_k_zoomed", "pca", "identity_2d", "jitter_1d",
           "per_class", "bars", "bars_plain", "cosine"]


@pytest.mark.parametrize("name", FIGURES)
def test_every_figure_writes_a_png(figures, name):
    assert isinstance(figures[name], Path)
    assert_png(figures[name])


def test_no_pyplot_figures_leak(figures):
    import matplotlib.pyplot as plt

    assert sorted(figures) == sorted(FIGURES)
    assert plt.get_fignums() == []


def test_tsne_map(tmp_path):
    # Under CPU contention OpenMP threads make sklearn's t-SNE many times slower; one thread keeps it fast.
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with threadpoolctl.threadpool_limits(1):
        assert_png(plots.plot_embedding_2d(EMB[:30], EMB_LABELS[:30], NAMES[:3], tmp_path / "tsne.png",
                                           method="tsne", seed=1))


def test_subsample_is_a_function_of_the_seed(tmp_path):
    a = plots.subsample_indices(5000, 300, seed=3)
    assert np.array_equal(a, plots.subsample_indices(5000, 300, seed=3))
    assert not np.array_equal(a, plots.subsample_indices(5000, 300, seed=4))
    assert len(a) == 300 and len(np.unique(a)) == 300 and np.all(np.diff(a) > 0) and a.max() < 5000
    assert np.array_equal(plots.subsample_indices(10, 300, seed=3), np.arange(10))
    # The same seed gives the same picture, byte for byte.
    first, second = (plots.plot_embedding_2d(EMB, EMB_LABELS, NAMES[:3], tmp_path / f"{i}.png", seed=7,
                                             max_points=50).read_bytes() for i in range(2))
    assert first == second


def test_row_normalise_oracle():
    values, empty = plots.row_normalise(np.array([[3, 1, 0], [0, 0, 0], [1, 1, 2]]))
    assert np.allclose(values, [[0.75, 0.25, 0.0], [0.0, 0.0, 0.0], [0.25, 0.25, 0.5]])
    assert empty.tolist() == [False, True, False]


def test_palette_follows_the_emotion_not_the_position():
    six = plots._palette_for(plots.class_names_for(labels.SIX_BASIC))
    seven = plots._palette_for(plots.class_names_for(labels.BASIC7))
    assert six == seven[1:]  # "Happy" has one colour whether or not "Neutral" is in the dataset
    assert plots._palette_for(["cat", "dog"]) == list(plots.PALETTE[:2])


BAD_INPUTS = [
    (lambda p: plots.plot_confusion(np.ones((3, 4)), NAMES[:3], p), "square"),
    (lambda p: plots.plot_confusion(np.ones((3, 3)), NAMES, p), "class_names has 7 names"),
    (lambda p: plots.plot_confusion(-np.ones((3, 3)), NAMES[:3], p), "non-negative"),
    (lambda p: plots.plot_confusion(np.full((3, 3), np.nan), NAMES[:3], p), "NaN"),
    (lambda p: plots.plot_retrieval_curves({}, p), "empty"),
    (lambda p: plots.plot_retrieval_curves({"m": {1: 85.0}}, p), "outside \\[0, 1\\]"),
    (lambda p: plots.plot_retrieval_curves({"m": {0: 0.5}}, p), "positive integers"),
    (lambda p: plots.plot_retrieval_curves({"m": {"1": 0.5, 2: 0.6}}, p), "positive integers"),  # JSON keys
    (lambda p: plots.plot_embedding_2d(EMB, EMB_LABELS, NAMES[:3], p, method="umap"),
     "method must be 'pca' or 'tsne'"),
    (lambda p: plots.plot_embedding_2d(EMB, EMB_LABELS[:5], NAMES[:3], p), "labels must have shape"),
    (lambda p: plots.plot_embedding_2d(EMB, EMB_LABELS, NAMES[:2], p), "labels must be in 0..1"),
    (lambda p: plots.plot_embedding_2d(EMB, EMB_LABELS.astype(float), NAMES[:3], p), "integer"),
    (lambda p: plots.plot_embedding_2d(EMB[0], EMB_LABELS, NAMES[:3], p), "\\(N, D\\)"),
    (lambda p: plots.plot_embedding_2d(EMB, EMB_LABELS, NAMES[:3], p, max_points=0), "max_points"),
    (lambda p: plots.plot_per_class_recall({"m": np.ones(3)}, NAMES, p), "class_names has 7 names"),
    (lambda p: plots.plot_per_class_recall({"m": np.full(7, 2.0)}, NAMES, p), "outside \\[0, 1\\]"),
    (lambda p: plots.plot_per_class_recall({"m": np.ones(0)}, [], p), "no classes"),
    (lambda p: plots.plot_bar_with_errors(TABLE.drop(columns="mean"), p, ylabel="acc"), "missing column"),
    (lambda p: plots.plot_bar_with_errors(TABLE.iloc[:0], p, ylabel="acc"), "no rows"),
    (lambda p: plots.plot_bar_with_errors(pd.concat([TABLE, TABLE]), p, ylabel="acc"), "unique"),
    (lambda p: plots.plot_bar_with_errors(TABLE.assign(std=-1.0), p, ylabel="acc"), "non-negative"),
    (lambda p: plots.plot_cosine_matrix(np.full((7, 7), 3.0), NAMES, p), "\\[-1, 1\\]"),
    (lambda p: plots.plot_cosine_matrix(np.eye(7), NAMES, p.with_suffix(".pdf")), "must end in .png"),
]


@pytest.mark.parametrize("call, message", BAD_INPUTS, ids=[m for _, m in BAD_INPUTS])
def test_bad_inputs_raise_one_line(tmp_path, call, message):
    with pytest.raises(ValueError, match=message) as info:
        call(tmp_path / "bad.png")
    assert "\n" not in str(info.value)
    assert not any(tmp_path.iterdir()), "nothing may be written for a bad input"


def test_write_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "cos.png"
    target.write_bytes(b"previous figure")

    def broken_savefig(self, *args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(plots.Figure, "savefig", broken_savefig)
    with pytest.raises(RuntimeError, match="disk full"):
        plots.plot_cosine_matrix(np.eye(3), NAMES[:3], target)
    assert target.read_bytes() == b"previous figure"
    assert [p.name for p in tmp_path.iterdir()] == ["cos.png"]


def test_no_global_matplotlib_state_is_touched(tmp_path):
    # In a fresh interpreter: plotting never imports pyplot, never picks a backend, never edits rcParams.
    script = textwrap.dedent(f"""
        import sys, matplotlib, numpy as np
        before = dict(matplotlib.rcParams.copy())
        from fer_bench import plots
        plots.plot_cosine_matrix(np.eye(2), ["a", "b"], {str(tmp_path / "c.png")!r})
        assert "matplotlib.pyplot" not in sys.modules, "pyplot was imported"
        assert dict(matplotlib.rcParams.copy()) == before, "rcParams changed"
    """)
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
