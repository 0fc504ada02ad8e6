"""Train on one dataset, test on another: label-space alignment, the runner's cross-dataset cells."""
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from fer_bench import labels as L
from fer_bench.checks import toy_dataset
from fer_bench.data import in_label_space
from fer_bench.runner import expand_grid, run_cell
from fer_bench.tables import load_benchmark, table_specs

ROOT = Path(__file__).resolve().parents[1]
TINY = "synthetic:size=32,n_train=240,n_val=60,n_test=90"


def test_in_label_space_drops_foreign_classes_and_moves_label_dist_columns():
    test = toy_dataset(n=12, num_classes=3, split="test")            # canonical 1, 2, 3 (happy, sad, surprise)
    dist = np.full((12, 3), 0.1, dtype=np.float32)
    dist[np.arange(12), test.labels] = 0.8
    test.label_dist = dist
    train_classes = (3, 0, 1)                                          # surprise, neutral, happy: no sad
    out, record = in_label_space(test, train_classes)
    canonical = np.asarray(test.classes)[test.labels]
    keep = canonical != 2
    assert len(out) == keep.sum() and out.classes == train_classes
    assert np.array_equal(np.asarray(train_classes)[out.labels], canonical[keep])
    # columns: surprise <- surprise, neutral <- nothing, happy <- happy; renormalised over kept classes
    expected = np.stack([dist[keep, 2], np.zeros(keep.sum()), dist[keep, 0]], axis=1)
    expected /= expected.sum(1, keepdims=True)
    assert np.allclose(out.label_dist, expected) and np.allclose(out.label_dist.sum(1), 1)
    assert record["test_classes_dropped"] == {L.names([2])[0]: int((canonical == 2).sum())}
    assert record["train_classes_absent_from_test"] == L.names([0])
    assert out.fingerprint != test.fingerprint


def test_in_label_space_with_nothing_shared_is_a_clear_error():
    with pytest.raises(ValueError, match="shares no class"):
        in_label_space(toy_dataset(n=6, num_classes=2, split="test"), (0, 7))


def test_cross_dataset_cell_scores_the_shared_classes_only(tmp_path):
    spec, = expand_grid(["majority"], [TINY], [0], [0.0], "test", {}, "cpu",
                        test_datasets=[TINY + ",classes=6"])            # the test set has no neutral
    result = run_cell(spec, tmp_path)
    cross = result.info["cross_dataset"]
    assert cross["train_classes_absent_from_test"] == [L.DISPLAY[L.NEUTRAL]] and not cross["test_classes_dropped"]
    pred = np.load(tmp_path / "test_pred.npy")
    labels = np.load(tmp_path / "test_labels.npy")
    neutral = result.info["classes"].index(L.NEUTRAL)
    assert not (pred == neutral).any()                                 # never predicts a class the test lacks
    assert result.metrics["accuracy"] == pytest.approx((pred == labels).mean())
    assert result.metrics["mean_class_accuracy"] == pytest.approx(1 / 6)  # the majority rule: one of six classes
    assert " -> synthetic:classes=6" in spec.dataset_label


def test_single_dataset_cells_keep_their_committed_ids():
    bench = load_benchmark(ROOT / "benchmarks" / "synthetic-example.yaml")
    ids = {s.cell_id for t in bench["tables"] for s in table_specs(t)}
    with sqlite3.connect(ROOT / "results" / "synthetic-example" / "run" / "results.sqlite") as db:
        stored = {i: json.loads(spec) for i, spec in db.execute("SELECT id, spec FROM cells")}
    assert ids <= set(stored), "cell ids changed: committed stores would rerun every cell"


def test_a_cross_dataset_cell_reuses_the_model_its_run_already_trained(tmp_path):
    from fer_bench.method import Method
    from fer_bench.runner import LocalExecutor, run_grid
    from fer_bench.store import Store

    shifted = TINY + ",seed=1"
    own, cross = expand_grid(["baseline"], [TINY], [0], [0.0], "test", {}, "cpu", test_datasets=[None, shifted])
    run_grid([own, cross], tmp_path, LocalExecutor())
    with Store(tmp_path / "results.sqlite") as store:
        info = store.cell(cross.cell_id)["info"]
        metrics = store.metrics(cross.cell_id)
        proba = np.load(tmp_path / store.artifacts(cross.cell_id)["test_proba"])
        model = tmp_path / store.artifacts(own.cell_id)["model"]
    assert info["model_from_cell"] == own.cell_id and "train_seconds" not in metrics  # not trained again
    from fer_bench.data import load_dataset
    test = load_dataset("synthetic", "test", **cross.test_dataset_options)
    assert np.allclose(Method.load(model).predict_proba(test), proba, atol=1e-6)
