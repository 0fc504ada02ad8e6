import numpy as np
import pandas as pd
import pytest

from fer_bench.data.noise import noisy_labels
from fer_bench.store import Store
from fer_bench.tables import load_benchmark, mean_std, paper_table, summarize


def test_store_roundtrip_and_status_transitions(tmp_path):
    spec = '{"method": "m", "dataset_label": "d", "seed": 0, "label_noise": 0.0, "profile": "test", "overrides_label": ""}'
    with Store(tmp_path / "results.sqlite") as store:
        store.mark_running("a", spec)
        assert store.status("a") == "running"
        store.record_failed("a", spec, "boom", "Traceback ...", 1.0)
        assert store.cell("a")["error"] == "boom"
        store.mark_running("a", spec)
        store.record_done("a", spec, {"accuracy": 0.5, "nmi": 0.25}, {"pred": "cells/a/pred.npy"}, 2.0, {"x": 1})
        cell = store.cell("a")
        assert cell["status"] == "done" and cell["error"] is None and cell["info"] == {"x": 1}
        assert store.metrics("a") == {"accuracy": 0.5, "nmi": 0.25}
        assert store.artifacts("a") == {"pred": "cells/a/pred.npy"}
        frame = store.metrics_frame()
        assert sorted(frame["metric"]) == ["accuracy", "nmi"] and store.integrity_ok()
        assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _long(rows):
    """A long metrics frame from rows without the ``init`` column (every cell from scratch)."""
    frame = pd.DataFrame(rows, columns=["cell_id", "method", "dataset", "seed", "label_noise", "profile", "overrides",
                                        "metric", "value"])
    return frame.assign(init="scratch")


def test_summarize_mean_std_n_over_seeds():
    long = _long([["a", "m", "d", 0, 0.0, "q", "", "accuracy", 0.5], ["b", "m", "d", 1, 0.0, "q", "", "accuracy", 0.7]])
    row = summarize(long).iloc[0]
    assert row["mean"] == pytest.approx(0.6) and row["std"] == pytest.approx(np.std([0.5, 0.7], ddof=1)) and row["n"] == 2


def test_paper_table_published_ours_delta():
    long = _long([["a", "m", "d", 0, 0.0, "q", "", "accuracy", 0.80], ["b", "m", "d", 1, 0.0, "q", "", "accuracy", 0.90],
                  ["c", "k", "d", 0, 0.0, "q", "", "accuracy", 0.5]])
    table = {"metric": "accuracy", "scale": 100, "rows": ["method", "dataset"],
             "published": [{"method": "m", "dataset": "d", "value": 87.5, "source": "Paper, Table 2"},
                           {"method": "z", "dataset": "d", "value": 60.0, "source": "Paper, Table 2"}]}
    out = paper_table(table, long).set_index("method")
    assert out.loc["m", "ours_mean"] == pytest.approx(85.0) and out.loc["m", "delta"] == pytest.approx(-2.5)
    assert out.loc["m", "ours"].startswith("85.00 ± 7.07 (n=2)")
    assert out.loc["z", "ours"] == "missing" and np.isnan(out.loc["k", "published"])


def test_benchmark_file_with_unknown_key_is_rejected(tmp_path):
    path = tmp_path / "b.yaml"
    path.write_text("tables:\n  - name: t\n    metric: accuracy\n    grid: {methods: [majority]}\n    colour: red\n")
    with pytest.raises(ValueError, match="unknown key 'colour'"):
        load_benchmark(path)
    path.write_text("tables:\n  - name: t\n    metric: accuracy\n    grid: {methods: [majority]}\n"
                    "    published: [{method: majority, value: 1.0}]\n")
    with pytest.raises(ValueError, match="needs 'value' and 'source'"):
        load_benchmark(path)


@pytest.mark.parametrize("kind", ["symmetric", "pairflip"])
def test_label_noise_rate_and_purity(kind):
    labels = np.arange(20000) % 7
    noisy = noisy_labels(labels, 7, 0.3, kind, seed=3)
    assert abs((noisy != labels).mean() - 0.3) < 0.015
    assert np.array_equal(noisy, noisy_labels(labels, 7, 0.3, kind, seed=3))
    flipped = noisy[noisy != labels]
    if kind == "pairflip":
        assert np.array_equal(flipped, (labels[noisy != labels] + 1) % 7)
    else:  # every other class about equally likely
        counts = np.bincount((noisy - labels)[noisy != labels] % 7, minlength=7)[1:]
        assert counts.min() > 0.8 * counts.mean()


def test_asymmetric_noise_matrix_from_csv_follows_the_dataset_class_order(tmp_path):
    from fer_bench import labels as L
    from fer_bench.data.noise import confusion_for, noisy_labels, read_noise_matrix
    path = tmp_path / "m.csv"
    path.write_text(",Neutral,happy,sad\nhappy,3,0,1\nsad,1,0,0\nneutral,0,0,0\n")
    matrix = read_noise_matrix(str(path))
    assert matrix == {"happy": {"neutral": 3.0, "sad": 1.0}, "sad": {"neutral": 1.0}, "neutral": {}}
    classes = (L.SAD, L.NEUTRAL, L.HAPPY, L.ANGER)   # another order, and a class the matrix does not name
    m = confusion_for(matrix, classes)
    assert m.tolist() == [[0, 1, 0, 0], [0, 0, 0, 0], [1, 3, 0, 0], [0, 0, 0, 0]]
    labels = np.repeat(np.arange(4), 500)
    noisy = noisy_labels(labels, 4, 0.5, "asymmetric", seed=0, confusion=m)
    flipped = noisy != labels
    assert set(zip(labels[flipped], noisy[flipped])) <= {(0, 1), (2, 0), (2, 1)}   # only where the matrix allows
    assert not flipped[labels == 1].any() and not flipped[labels == 3].any()        # rows without mass keep labels
    happy = labels == 2
    assert (noisy[happy & flipped] == 1).mean() == pytest.approx(0.75, abs=0.06)    # 3 : 1 toward neutral


def test_noise_matrix_is_part_of_the_cell_id_only_when_given():
    from fer_bench.runner import expand_grid
    plain, = expand_grid(["majority"], ["synthetic"], [0], [0.3], "test", {}, "cpu")
    asym, = expand_grid(["majority"], ["synthetic"], [0], [0.3], "test", {}, "cpu", noise_kind="asymmetric",
                        noise_matrix={"happy": {"neutral": 1.0}})
    assert plain.noise_matrix is None and asym.noise_matrix and plain.cell_id != asym.cell_id


def test_copy_cell_figures_takes_the_smallest_seed_of_each_grid_point(tmp_path):
    import json

    from fer_bench.tables import copy_cell_figures
    run = tmp_path / "run"
    cells = {"a": ("siamese", "synthetic:classes=6", 2), "d": ("siamese", "synthetic:classes=6", 1),
             "c": ("baseline", "synthetic", 0)}                    # not asked for
    with Store(run / "results.sqlite") as store:
        for cid, (method, dataset, seed) in cells.items():
            spec = json.dumps({"method": method, "dataset_label": dataset, "seed": seed, "label_noise": 0.0,
                               "overrides_label": ""})
            (run / "cells" / cid / "extra").mkdir(parents=True)
            (run / "cells" / cid / "extra" / "snap.png").write_bytes(cid.encode())
            (run / "cells" / cid / "extra" / "snap.npz").write_bytes(b"npz")
            store.record_done(cid, spec, {}, {"extra/snap.png": f"cells/{cid}/extra/snap.png",
                                              "extra/snap.npz": f"cells/{cid}/extra/snap.npz"}, 1.0, {})
        store.mark_running("b", json.dumps({"method": "siamese", "dataset_label": "synthetic", "seed": 0,
                                            "label_noise": 0.0, "overrides_label": ""}))  # not finished
        copied = copy_cell_figures(store, run, tmp_path / "figures", ["a", "b", "c", "d"], {"siamese"})
    assert [p.name for p in copied] == ["snap_synthetic-classes-6_seed1.png"]
    assert copied[0].read_bytes() == b"d"


def test_threads_are_part_of_the_cell_id_only_when_not_the_default():
    from pathlib import Path
    from fer_bench.runner import DEFAULT_THREADS, expand_grid
    one = expand_grid(["majority"], ["synthetic"], [0], [0.0], "quick", {}, "cpu")[0]
    assert one.threads == DEFAULT_THREADS == 1
    committed = Path(__file__).resolve().parents[1] / "results" / "acceptance" / "results.sqlite"
    with Store(committed) as store:  # the committed cells keep their ids
        assert store.status(one.cell_id) == "done"
    two = expand_grid(["majority"], ["synthetic"], [0], [0.0], "quick", {}, "cpu", threads=2)[0]
    assert two.threads == 2 and two.cell_id != one.cell_id


def test_terminal_summary_fits_100_columns_and_points_to_the_full_table(tmp_path):
    from fer_bench.tables import terminal_summary
    long = pd.DataFrame([{"method": "paca_learned", "dataset": dataset, "init": init,
                          "label_noise": 0.3, "profile": "quick", "overrides": "lr=0.001,weight_decay=0.0001",
                          "metric": metric, "value": value, "seed": seed}
                         for dataset in ("synthetic:size=48,n_train=3000,nuisance=2.0", "synthetic:seed=1")
                         for init in ("scratch", "synthetic-faces") for seed in (0, 1, 2) for metric, value in
                         (("accuracy", 0.8123), ("mean_class_accuracy", 0.6789), ("train_seconds", 1234.5))])
    text = terminal_summary(summarize(long), [], tmp_path / "summary.md")
    assert max(len(line) for line in text.splitlines() if not line.startswith("full table:")) <= 100, text
    assert "81.2 ± 0.0" in text and "20.6" in text and str(tmp_path / "summary.md") in text


def test_mean_std_over_seeds_by_hand():
    long = pd.DataFrame({"method": ["a", "a", "a", "b", None], "value": [0.2, 0.4, 0.9, 0.5, 0.7]})
    out = mean_std(long, ["method"])
    # a: mean 0.5, sample std sqrt(((-.3)^2 + (-.1)^2 + .4^2) / 2) = sqrt(0.13); b, one value: std 0; the missing
    # key is a group of its own
    assert out["method"].tolist()[:2] == ["a", "b"] and pd.isna(out["method"].iloc[2])
    assert out["n"].tolist() == [3, 1, 1]
    np.testing.assert_allclose(out["mean"], [0.5, 0.5, 0.7])
    np.testing.assert_allclose(out["std"], [0.13 ** 0.5, 0.0, 0.0])
