"""Paper tables in the paper's own layout (issue #21): one field in rows, one or more in columns.

``paper_table`` (fer_bench.tables) keeps the tidy long form for CSV: one row per (method, dataset, ...) with
ours and the published number. For people, ``layout_markdown`` pivots it the way the paper prints it:

- **ours**: the columns we ran (e.g. the synthetic datasets), every cell ``mean ± std (n=N)`` of our seeds, and
  where the paper reports the same column for the same row, `` [published; Δ ours − published]``;
- **published only**: columns we did not run (RAF-DB, FERPlus, ... when only synthetic data was run) collapse
  into one block of published numbers, instead of a "missing" per row;
- **significance** (a table's ``layout: {reference: baseline}``): each of our cells is compared with the
  reference row of the same column (same other row fields), paired over the seeds both have
  (:func:`fer_bench.significance.paired_over_seeds`); ``*`` marks p < 0.05 with at least 3 seeds, and the
  differences with their 95 % intervals are listed under the table.

A table's ``layout`` mapping (all optional): ``columns`` (a field or a list; default ``dataset`` when the table's
rows have it), ``order`` ({field: [values in the paper's order]}; other values follow in the order they first
appear), ``reference`` (a value of the first row field).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from tabulate import tabulate

from fer_bench.significance import MIN_SEEDS, paired_over_seeds

LAYOUT_KEYS = {"columns", "order", "reference"}


def layout_fields(table: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(row fields, column fields) of a table: its ``rows`` split by ``layout.columns``."""
    rows_by = table.get("rows", ["method", "dataset"])
    rows_by = [rows_by] if isinstance(rows_by, str) else list(rows_by)
    layout = table.get("layout") or {}
    columns = layout.get("columns", ["dataset"] if "dataset" in rows_by else [])
    columns = [columns] if isinstance(columns, str) else list(columns)
    unknown = [c for c in columns if c not in rows_by]
    if unknown:
        raise ValueError(f"table {table.get('name')!r}: layout column {unknown[0]!r} is not one of its rows "
                         f"({', '.join(rows_by)}); add it to 'rows' or drop it from 'layout.columns'.")
    return [f for f in rows_by if f not in columns], columns


def _ordered(values: list, preferred: list) -> list:
    """``values`` (unique, in first-appearance order) with those in ``preferred`` first, in its order."""
    seen = list(dict.fromkeys(values))
    first = [v for v in preferred if v in seen]
    return first + [v for v in seen if v not in first]


def _label(key: tuple) -> str:
    return " ".join(_text(v) for v in key if _text(v))


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def layout_markdown(table: dict[str, Any], frame: pd.DataFrame, long: pd.DataFrame, scale: float,
                    tablefmt: str = "github") -> str:
    """The table's Markdown body in the paper's layout (see the module docstring); ``tablefmt`` "html" renders
    its tables as HTML (the report page)."""
    row_fields, col_fields = layout_fields(table)
    layout = table.get("layout") or {}
    order = layout.get("order") or {}
    frame = frame.copy()
    key_of = lambda fields: list(zip(*(frame[f] for f in fields))) if fields else [()] * len(frame)  # noqa: E731
    frame["_row"], frame["_col"] = key_of(row_fields), key_of(col_fields)
    published = [[p.get(f) for p in table.get("published") or []] for f in row_fields + col_fields]
    ours_first = {f: [*order.get(f, []), *_grid_values(table, f), *vals]
                  for f, vals in zip(row_fields + col_fields, published)}
    paper_first = {f: [*order.get(f, []), *vals] for f, vals in zip(row_fields + col_fields, published)}

    def sort_keys(keys: list[tuple], fields: list[str], declared: dict[str, list] = ours_first) -> list[tuple]:
        keys = list(dict.fromkeys(keys))
        for i in reversed(range(len(fields))):             # a stable sort per field, last field first
            ranking = _ordered([k[i] for k in keys], declared[fields[i]])
            keys.sort(key=lambda k: ranking.index(k[i]))
        return keys

    ran = frame[frame["n"] > 0]
    our_cols = sort_keys(list(ran["_col"]), col_fields)
    published_cols = sort_keys([c for c in frame["_col"] if c not in our_cols], col_fields, paper_first)
    index = {(r, c): row for r, c, row in zip(frame["_row"], frame["_col"], frame.itertuples())}
    notes: list[str] = []
    blocks = []
    if our_cols:
        rows = sort_keys([r for r, c in index if c in our_cols], row_fields)
        body = [[*map(_text, r), *(_ours_cell(index.get((r, c)), r, c, table, long, row_fields, col_fields,
                                              scale, notes) for c in our_cols)] for r in rows]
        common, headers = _headers(our_cols, col_fields, "ours")
        blocks.append(common + tabulate(body, headers=[*row_fields, *headers], tablefmt=tablefmt,
                                        disable_numparse=True))
    if published_cols:
        rows = sort_keys([r for r, c in index if c in published_cols], row_fields, paper_first)
        body = [[*map(_text, r), *(_published_cell(index.get((r, c))) for c in published_cols)] for r in rows]
        title = "Published only (columns not run here):" if our_cols else "Published (nothing of ours run yet):"
        common, headers = _headers(published_cols, col_fields, "published")
        blocks.append(title + "\n\n" + common + tabulate(body, headers=[*row_fields, *headers], tablefmt=tablefmt,
                                                         disable_numparse=True))
    legend = ("Cells: ours as mean ± std over seeds (n=seeds); [published; Δ ours − published] where the paper "
              "reports the same row and column.")
    if layout.get("reference") is not None:
        legend += (f" `*`: differs from {layout['reference']} in a paired t-test over seeds (two-sided p < 0.05, "
                   f"at least {MIN_SEEDS} seeds both ran); differences with 95 % intervals below.")
    out = legend + "\n\n" + "\n\n".join(blocks) + "\n"
    if notes:
        out += "\nPaired differences to the reference (ours − reference, points; 95 % CI; p; seeds):\n\n"
        out += "\n".join(f"- {line}" for line in notes) + "\n"
    return out


def _headers(cols: list[tuple], fields: list[str], empty: str) -> tuple[str, list[str]]:
    """Column headers without the fields every column shares (those go in a line above the table)."""
    shared = [i for i in range(len(fields)) if len({c[i] for c in cols}) == 1 and len(cols) > 0]
    if len(shared) == len(fields) and len(cols) == 1 and fields:
        shared = shared[:-1] if len(fields) > 1 else []          # keep one field so the column has a name
    common = "".join(f"{fields[i]}: {_text(cols[0][i])}\n\n" for i in shared)
    headers = [_label(tuple(v for i, v in enumerate(c) if i not in shared)) or empty for c in cols]
    return common, headers


def _grid_values(table: dict[str, Any], field: str) -> list:
    grids = table.get("grid") or {}
    grids = grids if isinstance(grids, list) else [grids]
    return [v for g in grids for v in (g.get(f"{field}s") or [])]


def _ours_cell(row: Any, row_key: tuple, col_key: tuple, table: dict[str, Any], long: pd.DataFrame,
               row_fields: list[str], col_fields: list[str], scale: float, notes: list[str]) -> str:
    if row is None:
        return "—"
    text = row.ours if row.n > 0 else "—"
    if row.n > 0:
        text += _mark(row_key, col_key, table, long, row_fields, col_fields, scale, notes)
    if pd.notna(row.published):
        delta = f"; Δ {row.delta:+.2f}" if row.n > 0 else ""
        text += f" [{row.published:.2f}{delta}]"
    return text


def _published_cell(row: Any) -> str:
    return "—" if row is None or pd.isna(row.published) else f"{row.published:.2f}"


def _mark(row_key: tuple, col_key: tuple, table: dict[str, Any], long: pd.DataFrame, row_fields: list[str],
          col_fields: list[str], scale: float, notes: list[str]) -> str:
    """'*' when this cell differs significantly from the reference row of its column (and a note line)."""
    reference = (table.get("layout") or {}).get("reference")
    if reference is None or not row_fields or row_key[0] == reference:
        return ""
    metrics = [table["metric"]] if isinstance(table["metric"], str) else list(table["metric"])
    measured = long[long["metric"].isin(metrics)]

    def per_seed(key: tuple) -> dict[int, float]:
        part = measured
        for field, value in zip([*row_fields, *col_fields], [*key, *col_key]):
            part = part[part[field] == value]
        return part.groupby("seed")["value"].mean().to_dict()

    result = paired_over_seeds(per_seed(row_key), per_seed((reference, *row_key[1:])))
    if result is None:
        return ""
    lo, hi = (v * scale for v in result.ci)
    where = _label(col_key) or "all"
    ci = f"[{lo:+.2f}, {hi:+.2f}]" if np.isfinite(lo) else "[no interval: one seed]"
    p = f"p = {result.p:.3g}" if np.isfinite(result.p) else "p: n/a"
    notes.append(f"{_label(row_key)} − {reference}, {where}: {result.mean * scale:+.2f} {ci}, {p}, "
                 f"{result.n} seed{'s' if result.n != 1 else ''}")
    return result.mark()
