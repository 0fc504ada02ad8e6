"""Figures of fer-bench (DESIGN.md section 7): pure functions, arrays in, one PNG path out.

The figures mirror the shapes used in the papers we reproduce: confusion matrices, Recall@K / Acc@K
curves against K on a log2 axis (the SGMLoss paper's Figure 3), 2-D maps of embeddings (PCA or
t-SNE), per-class recall bars, "ours vs published" summary bars with std error bars over seeds, and
a cosine-similarity heatmap (SCE-ALD's word-vector similarity figure).

Every function builds a ``matplotlib.figure.Figure`` with the Agg canvas directly and never touches
pyplot, so no global figure registry, backend or rcParams change. PNGs are written atomically
(``fer_bench.fileio.atomic_path``: a temporary file in the target folder, then ``os.replace``) without the
matplotlib version in their metadata, so a regenerated figure differs only when its content does. Class names come from
``fer_bench.labels`` (``class_names_for``), never from literals.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

from fer_bench import labels as _labels
from fer_bench.fileio import atomic_path

logger = logging.getLogger(__name__)

# A fixed qualitative palette: tab10, then the lighter half of tab20 (20 distinct colours).
PALETTE: tuple[tuple[float, float, float], ...] = (
    tuple(matplotlib.colormaps["tab10"].colors) + tuple(matplotlib.colormaps["tab20"].colors[1::2])
)
MARKERS: tuple[str, ...] = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
DPI = 150
EMBEDDING_METHODS: tuple[str, ...] = ("pca", "tsne")


def class_names_for(classes: Sequence[int], style: str = "display") -> list[str]:
    """Names of a dataset's canonical class ids (``dataset.classes``), via ``fer_bench.labels``."""
    return _labels.names([_labels.canonical_id(c) for c in classes], style)


# ---------------------------------------------------------------------------------------------
# Shared helpers


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png_path(path: str | os.PathLike) -> Path:
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise ValueError(f"path must end in .png; got {str(target)!r}.")
    return target


def _save(fig: Figure, target: Path) -> Path:
    """Write ``fig`` as a PNG at ``target`` atomically; free the figure either way.

    The temporary file's name is unique to this process and call (``atomic_path``), so no writer clobbers
    another's and no exclusive open (``"xb"``) is needed; its permissions follow the umask."""
    try:
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format="png", metadata={"Software": None})
    finally:
        fig.clear()
    logger.debug("wrote %s", target)
    return target


def _check_names(class_names: Sequence[str], n: int, what: str) -> list[str]:
    names = [str(c) for c in class_names]
    if n == 0:
        raise ValueError(f"{what} has no classes; pass at least one.")
    if len(names) != n:
        raise ValueError(f"class_names has {len(names)} names but {what} has {n} classes; pass one name per class.")
    return names


def _square(matrix: np.ndarray, name: str) -> np.ndarray:
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty square (C, C) array; got shape {m.shape}.")
    if not np.isfinite(m).all():
        raise ValueError(f"{name} contains NaN or inf; pass finite values.")
    return m


def _palette_for(class_names: Sequence[str]) -> list[tuple[float, float, float]]:
    """One colour per class; an emotion keeps its colour across datasets when all names resolve."""
    try:
        ids = [_labels.canonical_id(n) for n in class_names]
    except ValueError:
        ids = []
    if len(ids) != len(class_names) or len(set(ids)) != len(ids):
        ids = list(range(len(class_names)))
    if len(class_names) > len(PALETTE):
        logger.warning("%d classes but only %d distinct colours; colours repeat.", len(class_names), len(PALETTE))
    return [PALETTE[i % len(PALETTE)] for i in ids]


def _text_colour(cmap: Colormap, norm: Normalize, value: float) -> str:
    r, g, b, _ = cmap(norm(value))
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.55 else "white"


def _heatmap(fig: Figure, values: np.ndarray, names: list[str], cmap_name: str, vmin: float, vmax: float,
             fmt: str, xlabel: str, ylabel: str, title: str, colorbar_label: str,
             blank_rows: np.ndarray | None = None) -> None:
    """Annotated heatmap of ``values`` (C, C) with ``names`` on both axes."""
    c = values.shape[0]
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps[cmap_name]
    norm = Normalize(vmin=vmin, vmax=vmax)
    shown = np.ma.masked_array(values, mask=np.zeros_like(values, dtype=bool))
    if blank_rows is not None:
        shown.mask[blank_rows] = True
    cmap = cmap.with_extremes(bad="0.9")
    im = ax.imshow(shown, cmap=cmap, norm=norm, interpolation="nearest", aspect="equal")
    cbar = fig.colorbar(im, ax=ax, shrink=0.85)
    if colorbar_label:
        cbar.set_label(colorbar_label)
    fontsize = max(5.0, min(10.0, 80.0 / c))
    for i in range(c):
        for j in range(c):
            if blank_rows is not None and blank_rows[i]:
                text, colour = "-", "black"
            else:
                text, colour = format(values[i, j], fmt), _text_colour(cmap, norm, values[i, j])
            ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=fontsize)
    ax.set_xticks(range(c), labels=names, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(c), labels=names)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.tick_params(length=0)
    if title:
        ax.set_title(title)


# ---------------------------------------------------------------------------------------------
# Figures


def row_normalise(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Divide each row of a (C, C) count matrix by its total; returns (fractions, rows_without_samples)."""
    counts = np.asarray(cm, dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)  # (C, 1)
    empty = totals[:, 0] == 0  # (C,)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=~empty[:, None]), empty


def plot_confusion(cm: np.ndarray, class_names: Sequence[str], path: str | os.PathLike, title: str = "",
                   normalize: bool = True) -> Path:
    """Confusion-matrix heatmap (true classes on rows, predicted on columns) with values in the cells.

    ``cm`` holds counts (C, C). With ``normalize`` each row is divided by its total (per-class
    recall on the diagonal); a class with no samples is drawn blank with "-".
    """
    target = _png_path(path)
    counts = _square(cm, "cm")
    names = _check_names(class_names, counts.shape[0], "cm")
    if (counts < 0).any():
        raise ValueError("cm must hold non-negative counts; got a negative entry.")
    c = counts.shape[0]
    fig = _new_figure(max(4.5, 0.65 * c + 2.5), max(4.0, 0.6 * c + 2.0))
    if normalize:
        values, empty = row_normalise(counts)
        _heatmap(fig, values, names, "Blues", 0.0, 1.0, ".2f", "Predicted", "True", title,
                 "fraction of true class", blank_rows=empty if empty.any() else None)
    else:
        integral = np.allclose(counts, np.round(counts))
        _heatmap(fig, counts, names, "Blues", 0.0, max(float(counts.max()), 1.0), ".0f" if integral else ".1f",
                 "Predicted", "True", title, "count")
    return _save(fig, target)


def plot_retrieval_curves(curves: Mapping[str, Mapping[int, float]], path: str | os.PathLike,
                          metric_name: str = "Recall@K", title: str = "",
                          ylim: tuple[float, float] | None = (0.0, 1.0)) -> Path:
    """One line per method of a metric at K (Recall@K, Acc@K) against K on a log2 axis.

    ``curves`` maps a method name to ``{K: value}`` with K positive integers and values in [0, 1].
    Ticks are placed at every K present (1, 2, 4, ..., 32 for the standard protocol). The y axis spans
    ``ylim`` (the whole [0, 1] by default, comparable across figures); ``None`` zooms to the data.
    """
    target = _png_path(path)
    if not curves:
        raise ValueError("curves is empty; pass {method: {K: value}} for at least one method.")
    all_k: set[int] = set()
    cleaned: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for method, points in curves.items():
        if not points:
            raise ValueError(f"curve {method!r} has no points; pass {{K: value}} with at least one K.")
        if any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in points):
            raise ValueError(f"curve {method!r} has K values {list(points)}; K must be positive integers (1, 2, 4).")
        ks = sorted(points)
        ys = np.array([float(points[k]) for k in ks])
        if not (np.isfinite(ys).all() and (ys >= 0).all() and (ys <= 1).all()):
            raise ValueError(f"curve {method!r} has values outside [0, 1]: {ys.tolist()}; pass fractions, not percent.")
        all_k.update(int(k) for k in ks)
        cleaned[str(method)] = (np.array(ks, dtype=float), ys)
    if ylim is not None and not (len(ylim) == 2 and ylim[0] < ylim[1]):
        raise ValueError(f"ylim must be (low, high) with low < high; got {ylim}.")

    fig = _new_figure(6.0, 4.2)
    ax = fig.add_subplot()
    for i, (method, (ks, ys)) in enumerate(cleaned.items()):
        ax.plot(ks, ys, marker=MARKERS[i % len(MARKERS)], color=PALETTE[i % len(PALETTE)], label=method,
                linewidth=1.6, markersize=5)
    ax.set_xscale("log", base=2)
    ticks = sorted(all_k)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FixedFormatter([str(k) for k in ticks]))
    ax.xaxis.set_minor_locator(NullLocator())
    lo, hi = min(ticks), max(ticks)
    pad = 2 ** 0.15
    ax.set_xlim(lo / pad, hi * pad)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlabel("K")
    ax.set_ylabel(metric_name)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    if title:
        ax.set_title(title)
    return _save(fig, target)


def subsample_indices(n: int, max_points: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``max_points`` of ``n`` items, drawn without replacement by seed."""
    if n <= max_points:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=max_points, replace=False))


def plot_embedding_2d(embeddings: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                      path: str | os.PathLike, method: str = "pca", seed: int = 0, title: str = "",
                      max_points: int = 3000) -> Path:
    """2-D map of embeddings (N, D) coloured by class, via PCA or t-SNE (scikit-learn, seeded).

    At most ``max_points`` points are drawn, chosen by ``subsample_indices(N, max_points, seed)``.
    With PCA a 2-D embedding is shown as it is; a 1-D embedding (either method) is plotted against a
    seeded vertical jitter. ``labels`` are indices 0..C-1 into ``class_names``.
    """
    target = _png_path(path)
    if method not in EMBEDDING_METHODS:
        raise ValueError(f"method must be 'pca' or 'tsne'; got {method!r}.")
    x = np.asarray(embeddings)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"embeddings must be a non-empty (N, D) array; got shape {x.shape}.")
    x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or inf; check the method's embed() output.")
    y = np.asarray(labels)
    if y.shape != (x.shape[0],):
        raise ValueError(f"labels must have shape ({x.shape[0]},) to match embeddings; got {y.shape}.")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integer class indices; got dtype {y.dtype}.")
    names = list(map(str, class_names))
    if not names:
        raise ValueError("class_names is empty; pass one name per class.")
    if y.min() < 0 or y.max() >= len(names):
        raise ValueError(f"labels must be in 0..{len(names) - 1} (one per class name); got {y.min()}..{y.max()}.")
    if isinstance(max_points, bool) or not isinstance(max_points, (int, np.integer)) or max_points < 1:
        raise ValueError(f"max_points must be a positive integer; got {max_points!r}.")

    total = x.shape[0]
    keep = subsample_indices(total, int(max_points), seed)
    x, y = x[keep], y[keep]  # (n, D), (n,)
    n, d = x.shape
    if d == 1:
        rng = np.random.default_rng([seed, 1])
        xy = np.column_stack([x[:, 0], rng.uniform(-1.0, 1.0, size=n)])
        axis_names = ("dimension 1", "jitter")
        default_title = "1-D embeddings (random vertical jitter)"
    elif method == "pca":
        if d == 2:
            xy = x
            axis_names = ("dimension 1", "dimension 2")
            default_title = "2-D embeddings"
        else:
            from sklearn.decomposition import PCA

            default_title = "PCA of embeddings"
            pca = PCA(n_components=2, random_state=seed)
            xy = pca.fit_transform(x) if n >= 2 else np.zeros((n, 2))
            if n >= 2:
                ratio = pca.explained_variance_ratio_
                axis_names = (f"PC 1 ({ratio[0]:.0%})", f"PC 2 ({ratio[1]:.0%})")
            else:
                axis_names = ("PC 1", "PC 2")
    else:
        from sklearn.manifold import TSNE

        if n < 3:
            raise ValueError(f"t-SNE needs at least 3 points; got {n}. Use method='pca'.")
        perplexity = float(min(30.0, (n - 1) / 3.0))
        xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
        axis_names = ("t-SNE 1", "t-SNE 2")
        default_title = "t-SNE of embeddings"

    colours = np.array(_palette_for(names))
    order = np.random.default_rng([seed, 2]).permutation(n)  # no class is always drawn on top
    size = float(np.clip(3000.0 / max(n, 1), 4.0, 30.0))
    fig = _new_figure(6.8, 5.0)
    ax = fig.add_subplot()
    ax.scatter(xy[order, 0], xy[order, 1], c=colours[y[order]], s=size, alpha=0.75, linewidths=0)
    counts = np.bincount(y, minlength=len(names))
    handles = [Line2D([], [], linestyle="", marker="o", markersize=6, color=colours[i],
                      label=f"{names[i]} ({counts[i]})") for i in range(len(names))]
    legend_title = f"class (n={n})" if n == total else f"class (n={n} of {total})"
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False,
              title=legend_title, title_fontsize="small")
    ax.set_xlabel(axis_names[0])
    ax.set_ylabel(axis_names[1])
    if d == 1:
        ax.set_yticks([])
    if method == "tsne" and d > 1:
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set_title(title or default_title)
    return _save(fig, target)


def plot_per_class_recall(recalls: Mapping[str, np.ndarray], class_names: Sequence[str],
                          path: str | os.PathLike, title: str = "") -> Path:
    """Grouped bars of per-class recall: one group per class, one bar per method.

    ``recalls`` maps a method name to a (C,) array of recalls in [0, 1]; NaN (a class absent from
    the test split) draws no bar.
    """
    target = _png_path(path)
    if not recalls:
        raise ValueError("recalls is empty; pass {method: (C,) array} for at least one method.")
    names = list(map(str, class_names))
    rows = {}
    for method, values in recalls.items():
        r = np.asarray(values, dtype=np.float64)
        if r.ndim != 1:
            raise ValueError(f"recalls[{method!r}] must be a (C,) array; got shape {r.shape}.")
        _check_names(names, r.shape[0], f"recalls[{method!r}]")
        finite = r[~np.isnan(r)]
        if not (np.isfinite(finite).all() and (finite >= 0).all() and (finite <= 1).all()):
            raise ValueError(f"recalls[{method!r}] has values outside [0, 1]; pass fractions, not percent.")
        rows[str(method)] = r
    c, m = len(names), len(rows)
    width = 0.8 / m
    fig = _new_figure(min(14.0, max(6.0, 0.3 * c * m + 3.5)), 4.2)
    ax = fig.add_subplot()
    centres = np.arange(c)
    for i, (method, r) in enumerate(rows.items()):
        xs = centres - 0.4 + width * (i + 0.5)
        ax.bar(xs, r, width=width, label=method, color=PALETTE[i % len(PALETTE)], edgecolor="white", linewidth=0.5)
        for xi in xs[np.isnan(r)]:
            ax.text(xi, 0.01, "n/a", ha="center", va="bottom", rotation=90, fontsize="x-small", color="0.4")
    ax.set_xticks(centres, labels=names)
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("recall")
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    if title:
        ax.set_title(title)
    return _save(fig, target)


def plot_bar_with_errors(table: pd.DataFrame, path: str | os.PathLike, ylabel: str, title: str = "") -> Path:
    """Bars of ``mean`` with ``std`` error bars per ``label``, and ``published`` values as markers beside.

    ``table`` needs columns ``label`` and ``mean``; ``std`` (e.g. over seeds) and ``published`` are
    optional, and a NaN in either simply draws no error bar / no marker for that row.
    """
    target = _png_path(path)
    if not isinstance(table, pd.DataFrame):
        raise ValueError(f"table must be a pandas DataFrame; got {type(table).__name__}.")
    missing = [col for col in ("label", "mean") if col not in table.columns]
    if missing:
        raise ValueError(f"table is missing column(s) {missing}; required: label, mean (optional: std, published).")
    if table.empty:
        raise ValueError("table has no rows; pass one row per bar.")
    bar_labels = table["label"].astype(str).tolist()
    if len(set(bar_labels)) != len(bar_labels):
        raise ValueError(f"table labels must be unique; got {bar_labels}.")
    means = pd.to_numeric(table["mean"], errors="coerce").to_numpy(dtype=np.float64)
    if not np.isfinite(means).all():
        raise ValueError("table 'mean' must be finite numbers in every row.")
    stds = (pd.to_numeric(table["std"], errors="coerce").to_numpy(dtype=np.float64) if "std" in table.columns
            else np.full(len(means), np.nan))
    if (stds[~np.isnan(stds)] < 0).any():
        raise ValueError("table 'std' must be non-negative (NaN for none).")
    published = (pd.to_numeric(table["published"], errors="coerce").to_numpy(dtype=np.float64)
                 if "published" in table.columns else np.full(len(means), np.nan))
    has_published = bool(np.isfinite(published).any())

    k = len(means)
    fig = _new_figure(max(5.0, 0.8 * k + 2.5), 4.4)
    ax = fig.add_subplot()
    x = np.arange(k, dtype=float)
    bar_width = 0.5 if has_published else 0.6
    bar_x = x - 0.12 if has_published else x  # leave room for the published marker on the right
    bars = ax.bar(bar_x, means, width=bar_width, color=PALETTE[0], label="ours (mean ± std)",
                  yerr=np.where(np.isnan(stds), 0.0, stds), capsize=4, error_kw={"elinewidth": 1.2, "ecolor": "0.2"})
    scale = float(np.abs(means).max())
    fmt = ".3f" if scale <= 1.0 else ".1f" if scale <= 100.0 else ".0f"  # fractions, percent, counts
    for xi, mean, std in zip(bar_x, means, stds):
        ax.annotate(format(mean, fmt), (xi, mean + (0.0 if np.isnan(std) else std)), xytext=(0, 2),
                    textcoords="offset points", ha="center", va="bottom", fontsize="x-small")
    if has_published:
        (marks,) = ax.plot(bar_x + bar_width / 2 + 0.1, published, linestyle="", marker="D", markersize=6,
                           color=PALETTE[3], markeredgecolor="black", markeredgewidth=0.6, label="published")
        ax.legend(handles=[bars, marks], loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    ax.set_xticks(x, labels=bar_labels, rotation=30 if k > 4 else 0, ha="right" if k > 4 else "center",
                  rotation_mode="anchor")
    top = np.nanmax(np.concatenate([means + np.nan_to_num(stds), published]))
    bottom = min(0.0, float(np.nanmin(np.concatenate([means - np.nan_to_num(stds), published]))))
    ax.set_ylim(bottom * 1.1, top * 1.1 if top > 0 else 1.0)
    ax.set_ylabel(ylabel)
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    if title:
        ax.set_title(title)
    return _save(fig, target)


def plot_cosine_matrix(matrix: np.ndarray, class_names: Sequence[str], path: str | os.PathLike,
                       title: str = "") -> Path:
    """Heatmap of a (C, C) cosine-similarity matrix in [-1, 1] with the values in the cells."""
    target = _png_path(path)
    m = _square(matrix, "matrix")
    names = _check_names(class_names, m.shape[0], "matrix")
    if (np.abs(m) > 1.0 + 1e-6).any():
        raise ValueError("matrix must hold cosine similarities in [-1, 1]; normalise the vectors first.")
    c = m.shape[0]
    fig = _new_figure(max(4.5, 0.65 * c + 2.5), max(4.0, 0.6 * c + 2.0))
    _heatmap(fig, np.clip(m, -1.0, 1.0), names, "RdBu_r", -1.0, 1.0, ".2f", "", "", title, "cosine similarity")
    return _save(fig, target)


def plot_learning_curves(curves: pd.DataFrame, path: str | os.PathLike, title: str = "",
                         floor: float | None = None) -> Path:
    """Validation accuracy, validation mean class accuracy and training loss against anchor images seen.

    ``curves``: one row per evaluation point with columns ``label`` (the method, colour), ``seed`` (one
    line each), ``anchor_images``, ``train_loss`` and, where measured, ``val_accuracy`` and
    ``val_mean_class_accuracy`` (fractions). All methods share the axes; ``floor`` (the majority class's
    validation accuracy) is drawn as a dashed line on the accuracy panel.
    """
    target = _png_path(path)
    need = {"label", "seed", "anchor_images", "train_loss"}
    if curves.empty or not need <= set(curves.columns):
        raise ValueError(f"curves needs rows with columns {sorted(need)}; got {list(curves.columns)}.")
    panels = [("val_accuracy", "validation accuracy"), ("val_mean_class_accuracy", "validation mean class accuracy"),
              ("train_loss", "training loss")]
    fig = _new_figure(15.0, 4.4)
    axes = [fig.add_subplot(1, 3, i + 1) for i in range(3)]
    labels = sorted(set(curves["label"]))
    for i, label in enumerate(labels):
        colour = PALETTE[i % len(PALETTE)]
        for j, (seed, part) in enumerate(curves[curves["label"] == label].groupby("seed")):
            part = part.sort_values("anchor_images")
            for ax, (column, _) in zip(axes, panels):
                if column not in part or part[column].isna().all():
                    continue
                ax.plot(part["anchor_images"], part[column], color=colour, linewidth=1.3, alpha=0.85,
                        marker=MARKERS[i % len(MARKERS)], markersize=3, label=label if j == 0 else None)
    for ax, (column, name) in zip(axes, panels):
        ax.set_xlabel("anchor images seen")
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
        if column != "train_loss":
            ax.set_ylim(0.0, 1.0)
    if floor is not None:
        axes[0].axhline(floor, color="0.4", linestyle="--", linewidth=1.0, label="majority class")
    axes[0].legend(loc="best", fontsize="small")
    fig.suptitle(title or "learning curves (one line per seed)")
    return _save(fig, target)


def plot_accuracy_vs_cost(points: pd.DataFrame, path: str | os.PathLike, title: str = "") -> Path:
    """Test accuracy against training CPU-seconds, one point per grid point with its std over seeds as error
    bars on both axes. ``points``: columns ``label``, ``cpu_seconds``, ``cpu_std``, ``accuracy``, ``accuracy_std``
    (fractions)."""
    target = _png_path(path)
    need = {"label", "cpu_seconds", "cpu_std", "accuracy", "accuracy_std"}
    if points.empty or not need <= set(points.columns):
        raise ValueError(f"points needs rows with columns {sorted(need)}; got {list(points.columns)}.")
    fig = _new_figure(7.5, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    for i, row in enumerate(points.itertuples()):
        ax.errorbar(row.cpu_seconds, 100 * row.accuracy, xerr=row.cpu_std, yerr=100 * row.accuracy_std,
                    color=PALETTE[i % len(PALETTE)], marker=MARKERS[i % len(MARKERS)], capsize=3, linestyle="none",
                    label=row.label)
    ax.set_xlabel("training CPU-seconds per cell")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    ax.set_title(title or "accuracy against training cost (mean ± std over seeds)")
    return _save(fig, target)


def plot_search_history(trials: Mapping[str, Sequence[tuple[int, float | None]]], path: str | os.PathLike,
                        title: str = "") -> Path:
    """Validation score against trial number, one line per method, with the best so far dashed; failed
    trials (None) are left out. ``trials``: {method: [(number, value), ...]}."""
    target = _png_path(path)
    if not trials:
        raise ValueError("plot_search_history needs at least one method's trials.")
    fig = _new_figure(7.5, 4.6)
    ax = fig.add_subplot(1, 1, 1)
    for i, (method, points) in enumerate(sorted(trials.items())):
        done = sorted((n, v) for n, v in points if v is not None)
        if not done:
            continue
        colour = PALETTE[i % len(PALETTE)]
        numbers, values = zip(*done)
        ax.plot(numbers, values, color=colour, marker=MARKERS[i % len(MARKERS)], linestyle="none", label=method)
        ax.plot(numbers, np.maximum.accumulate(values), color=colour, linestyle="--", linewidth=1.0)
    ax.set_xlabel("trial")
    ax.set_ylabel("validation accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    ax.set_title(title or "search history (dashed: best so far)")
    return _save(fig, target)
