"""The metric registry: every recorded metric is declared, reports run by what a cell has, benchmark files checked."""
import sqlite3
from pathlib import Path

import numpy as np
import pytest

import fer_bench.reports  # noqa: F401
from fer_bench import evaluation as E
from fer_bench.registry import METHODS
from fer_bench.tables import HEADLINE, load_benchmark

ROOT = Path(__file__).resolve().parents[1]


def _all_specs():
    return E.known_metric_specs(METHODS.get(n) for n in METHODS.names())


def test_every_metric_in_the_committed_stores_is_declared():
    names = set()
    for store in ROOT.glob("results/**/results.sqlite"):
        with sqlite3.connect(store) as db:
            names |= {row[0] for row in db.execute("SELECT DISTINCT name FROM metrics")}
    assert len(names) > 80
    specs = _all_specs()
    assert sorted(n for n in names if E.metric_spec(n, specs) is None) == []


def test_patterns_match_a_family_and_exact_names_win():
    assert E.metric_spec("recall@16").name == "recall@{k}"
    assert E.metric_spec("recall@1").headline is not None             # declared on its own: a summary column
    assert E.metric_spec("recall_class3").name == "recall_class{c}"
    assert E.metric_spec("recal@1") is None
    assert not E.metric_spec("train_steps").percent and E.metric_spec("accuracy").percent


def test_the_summary_columns_come_from_the_registry_in_order():
    assert list(HEADLINE)[:3] == ["accuracy", "mean_class_accuracy", "macro_f1"]
    assert HEADLINE["params"].digits == 0 and not HEADLINE["circumplex_tau"].percent


def test_a_report_runs_only_when_the_cell_has_its_inputs():
    calls = []

    @E.register_report("probe_needs_label_dist", needs=("proba",),
                       metrics=[E.MetricSpec("probe_value", "a test probe", percent=False)])
    def probe(x):
        calls.append(1)
        return {"probe_value": 1.0}

    try:
        base = dict(scored_true=np.array([0, 1]), scored_pred=np.array([0, 0]), num_scored=2, seed=0)
        out = E.evaluate(E.EvalInputs(**base))
        assert out["accuracy"] == 0.5 and "probe_value" not in out and not calls
        out = E.evaluate(E.EvalInputs(**base, proba=np.eye(2, dtype=np.float32)))
        assert out["probe_value"] == 1.0 and calls == [1]
    finally:
        del E.REPORTS["probe_needs_label_dist"]
        E.METRICS[:] = [s for s in E.METRICS if s.name != "probe_value"]


def test_a_report_must_name_inputs_that_exist():
    with pytest.raises(ValueError, match="needs 'probabilities', which EvalInputs does not have"):
        E.register_report("bad", needs=("probabilities",), metrics=[])


def test_a_benchmark_file_naming_an_unknown_metric_fails_with_did_you_mean(tmp_path):
    path = tmp_path / "bench.yaml"
    path.write_text("tables:\n  - name: t\n    metric: mean_class_acuracy\n    grid: {methods: [baseline]}\n")
    with pytest.raises(ValueError, match=r"bench.yaml table 't': unknown metric 'mean_class_acuracy'\. "
                                         r"Did you mean 'mean_class_accuracy'"):
        load_benchmark(path)
    path.write_text("tables:\n  - name: t\n    metric: ncm_acc\n    grid: {methods: [sgm]}\n")
    assert load_benchmark(path)["tables"][0]["metric"] == "ncm_acc"   # a method's own declared metric


def test_every_committed_benchmark_file_names_declared_metrics():
    for path in ROOT.glob("benchmarks/*.yaml"):
        load_benchmark(path)
