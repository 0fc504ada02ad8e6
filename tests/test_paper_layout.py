"""Paper tables in the paper's layout (issue #21): ours and published in the cells they belong to."""
import pandas as pd
import pytest

from fer_bench.paper_layout import layout_fields, layout_markdown
from fer_bench.tables import paper_table


def _long(values):
    """metrics_frame-like rows: (method, dataset, seed, accuracy)."""
    return pd.DataFrame([{"cell_id": f"{m}{d}{s}", "method": m, "dataset": d, "seed": s, "label_noise": 0.0,
                          "profile": "quick", "overrides": "", "init": "scratch", "metric": "accuracy", "value": v}
                         for m, d, s, v in values])


TABLE = {"name": "t", "metric": "accuracy", "rows": ["method", "dataset"],
         "layout": {"reference": "baseline", "order": {"dataset": ["ferplus", "rafdb"]}},
         "grid": {"methods": ["qcs", "baseline"], "datasets": ["synthetic", "rafdb"]},
         "published": [{"method": "qcs", "dataset": "rafdb", "value": 92.5, "source": "paper"},
                       {"method": "qcs", "dataset": "ferplus", "value": 91.4, "source": "paper"},
                       {"method": "SCN", "dataset": "rafdb", "value": 87.0, "source": "paper"}]}
LONG = _long([("qcs", "synthetic", 0, 0.60), ("qcs", "synthetic", 1, 0.62), ("qcs", "synthetic", 2, 0.61),
              ("baseline", "synthetic", 0, 0.80), ("baseline", "synthetic", 1, 0.81), ("baseline", "synthetic", 2, 0.82),
              ("qcs", "rafdb", 0, 0.90), ("baseline", "rafdb", 0, 0.85)])


def _markdown(table=TABLE, long=LONG):
    return layout_markdown(table, paper_table(table, long), long, 100.0)


def test_rows_are_methods_and_columns_datasets_with_published_beside_ours_only_on_the_same_dataset():
    text = _markdown()
    ours, published = text.split("Published only")
    header = next(line for line in ours.splitlines() if line.startswith("| method"))
    assert [h.strip() for h in header.strip("|").split("|")] == ["method", "rafdb", "synthetic"]   # paper order
    qcs = next(line for line in ours.splitlines() if line.startswith("| qcs"))
    assert "90.00 ± 0.00 (n=1) [92.50; Δ -2.50]" in qcs                 # same dataset: published and delta
    assert "61.00 ± 1.00 (n=3)*" in qcs and "[" not in qcs.split("|")[3]  # synthetic: no published number
    assert "| ferplus" in published and "91.40" in published and "SCN" not in published  # not run: its own block
    scn = next(line for line in ours.splitlines() if line.startswith("| SCN"))
    assert "— [87.00]" in scn                                            # a column we ran: the paper's row beside ours


def test_significance_needs_three_paired_seeds():
    text = _markdown()
    assert "- qcs − baseline, synthetic: -20.00 [" in text and "p = " in text
    assert "qcs − baseline, rafdb: +5.00 [no interval: one seed], p: n/a, 1 seed" in text
    rafdb_cell = next(line for line in text.splitlines() if line.startswith("| qcs")).split("|")[2]
    assert "*" not in rafdb_cell                                         # one seed: never marked


def test_layout_columns_must_be_row_fields():
    with pytest.raises(ValueError, match="layout column 'label_noise' is not one of its rows"):
        layout_fields({**TABLE, "layout": {"columns": "label_noise"}})


def test_without_published_numbers_there_is_no_published_block():
    table = {**TABLE, "published": []}
    text = _markdown(table)
    assert "Published" not in text and "| baseline" in text
