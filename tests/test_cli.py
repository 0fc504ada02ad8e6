"""End-to-end runs of the command line on tiny settings (real training, real files)."""
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from inprocess import fer_bench_in_process

ROOT = Path(__file__).resolve().parents[1]
TINY = "synthetic:size=32,n_train=240,n_val=60,n_test=90"


def fer_bench(*args, cwd=None, check=True, env=None):
    proc = subprocess.run([sys.executable, "-m", "fer_bench.cli", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=env or os.environ.copy(), timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def test_version_and_list():
    assert re.search(r"version \d+\.\d+", fer_bench("--version").stdout)
    out = fer_bench("list").stdout
    assert re.search(r"majority\s+\[test, quick, paper\]", out)
    assert re.search(r"baseline\s+\[test, quick, paper\]", out)
    assert "synthetic" in out


def test_run_writes_the_run_directory_and_a_rerun_trains_nothing(tmp_path):
    out = tmp_path / "run"
    args = ["run", "--methods", "majority,baseline", "--seeds", "0,1", "--profile", "test", "--dataset", TINY,
            "--out", str(out), "--device", "cpu"]
    first = fer_bench(*args)
    assert first.stdout.count(": done in") == 4
    for name in ("results.sqlite", "metrics_long.csv", "summary.csv", "summary.md", "manifest.json"):
        assert (out / name).is_file(), name
    assert list((out / "plots").glob("confusion_*.png")) and list((out / "plots").glob("recall_at_k_*.png"))
    summary = pd.read_csv(out / "summary.csv")
    acc = summary[summary.metric == "accuracy"].set_index("method")
    assert set(acc.index) == {"majority", "baseline"} and (acc["n"] == 2).all()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["versions"]["torch"] and len(manifest["cells"]) == 4
    assert all(c["fingerprints"]["train"] for c in manifest["cells"])

    second = fer_bench(*args)
    assert second.stdout.count("skip (done)") == 4 and ": done in" not in second.stdout
    assert _summary_table(second.stdout) == _summary_table(first.stdout)


def test_budget_gives_every_method_the_same_anchor_images_and_curves_are_stored_and_drawn(tmp_path):
    out = tmp_path / "run"
    fer_bench("run", "--methods", "baseline,sgm,triplet", "--profile", "test", "--budget", "epochs=2", "--dataset", TINY,
              "--out", str(out), "--device", "cpu")
    with sqlite3.connect(out / "results.sqlite") as db:
        anchors = dict(db.execute("SELECT json_extract(c.spec, '$.method'), m.value FROM metrics m JOIN cells c "
                                  "ON c.id = m.cell_id WHERE m.name = 'train_anchor_images'"))
        epochs = dict(db.execute("SELECT json_extract(spec, '$.method'), json_extract(spec, '$.params.epochs') FROM cells"))
        points = dict(db.execute("SELECT json_extract(c.spec, '$.method'), count(*) FROM curves v JOIN cells c "
                                 "ON c.id = v.cell_id GROUP BY c.id"))
        names = {r[0] for r in db.execute("SELECT DISTINCT name FROM metrics")}
    assert set(epochs.values()) == {2}
    # class-balanced batches (8 per class x 7 classes) fit 4 times in 240 images: 224 anchors an epoch against 240;
    # at the default size the difference is 1 % (69,300 against 70,000)
    assert max(anchors.values()) <= 1.10 * min(anchors.values()) and min(anchors.values()) >= 0.9 * 2 * 240
    assert {"train_steps", "train_forward_images", "train_cpu_seconds", "at_floor", "val_floor_accuracy"} <= names
    assert all(n >= 2 for n in points.values()) and set(points) == {"baseline", "sgm", "triplet"}
    assert len(list((out / "plots").glob("curves_*.png"))) == 1


@pytest.mark.parametrize("budget, message", [("epochs", "of the form epochs=N"), ("steps=3", "budget key 'steps'"),
                                             ("epochs=0", "whole number >= 1")])
def test_bad_budget_is_a_usage_error(budget, message, tmp_path):
    proc = fer_bench_in_process("run", "--methods", "baseline", "--budget", budget, "--out", str(tmp_path))
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def _summary_table(stdout: str) -> str:
    return stdout[stdout.index("method "):]


def test_plugin_example_from_the_readme_runs_through_the_cli(tmp_path):
    example = (ROOT / "examples" / "focal_plugin.py").read_text()
    assert example.strip() in (ROOT / "README.md").read_text(), "the README must show examples/focal_plugin.py verbatim"
    proc = fer_bench("run", "--plugin", "examples/focal_plugin.py", "--methods", "focal", "--profile", "test",
                     "--dataset", TINY, "--out", str(tmp_path / "run"), "--device", "cpu")
    assert "focal on" in proc.stdout and ": done in" in proc.stdout


def test_dataset_plugin_example_from_the_readme_runs_through_the_cli(tmp_path):
    example = (ROOT / "examples" / "dataset_plugin.py").read_text()
    assert example.strip() in (ROOT / "README.md").read_text(), "the README must show examples/dataset_plugin.py verbatim"
    out = tmp_path / "run"
    proc = fer_bench("run", "--plugin", "examples/dataset_plugin.py", "--dataset", "mouths:n=60", "--methods",
                     "majority,baseline", "--profile", "test", "--out", str(out), "--device", "cpu")
    assert "baseline on mouths:n=60 seed 0" in proc.stdout and (out / "report.html").is_file()


def test_metric_plugin_example_from_the_readme_adds_its_metric_to_every_cell(tmp_path):
    example = (ROOT / "examples" / "brier_metric.py").read_text()
    assert example.strip() in (ROOT / "README.md").read_text(), "the README must show examples/brier_metric.py verbatim"
    out = tmp_path / "run"
    fer_bench("run", "--plugin", "examples/brier_metric.py", "--methods", "majority", "--profile", "test",
              "--dataset", TINY, "--out", str(out), "--device", "cpu")
    with sqlite3.connect(out / "results.sqlite") as db:
        (value,) = db.execute("SELECT value FROM metrics WHERE name = 'brier'").fetchone()
    assert 0.0 < value < 2.0


@pytest.mark.parametrize("args, message", [
    (["run", "--methods", "baselin"], "Unknown method 'baselin'. Did you mean 'baseline'?"),
    (["run", "--dataset", "synthetc"], "Unknown dataset 'synthetc'. Did you mean 'synthetic'?"),
    (["run", "--set", "baseline.lrr=1"], "has no parameter 'lrr'"),
    (["run", "--set", "baseline.lr=-1"], "The 'lr' parameter of baseline must be a float in (0, inf). Got '-1' instead."),
    (["run", "--dataset", "synthetic:sise=32"], "Dataset 'synthetic' has no option 'sise'"),
    (["run", "--seeds", "a"], "--seeds 'a' must be a comma-separated list"),
    (["run", "--set", "baseline.seed=3"], "--set baseline.seed: the seed of every cell comes from --seeds"),
    (["run", "--set", "*.device=cpu"], "--set *.device: the device of every cell comes from --device"),
])
def test_bad_input_is_one_line_with_exit_code_2(args, message, tmp_path):
    proc = fer_bench_in_process(*args, "--out", str(tmp_path / "x"))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr


DIVERGING_PLUGIN = '''
from fer_bench.registry import register_method
from fer_bench_methods.baseline import Baseline

@register_method("diverging")
class Diverging(Baseline):
    """A baseline whose loss becomes NaN at its third step."""
    def loss(self, batch):
        self.steps = getattr(self, "steps", 0) + 1
        loss = super().loss(batch)
        return loss * float("nan") if self.steps == 3 else loss
'''


@pytest.mark.parametrize("option, value, message", [
    ("--label-noise", "-0.1", "label-noise rate -0.1 is out of range"),
    ("--label-noise", "0,1.0", "label-noise rate 1 is out of range"),
    ("--seeds", "", "--seeds is empty"),
    ("--seeds", "99999999999999999999", "is out of range"),
    ("--methods", ",", "--methods is empty")])
def test_bad_grid_axes_are_usage_errors_before_any_data_loads(option, value, message, tmp_path):
    """#19 items 1 and 7: a negative noise rate was recorded but never applied; empty axes ran 0 cells."""
    out = tmp_path / "run"
    proc = fer_bench_in_process("run", "--methods", "majority", option, value, "--dataset", TINY, "--out", str(out))
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (out / "results.sqlite").exists()


def test_a_diverging_cell_fails_alone_and_is_listed(tmp_path):
    plugin = tmp_path / "diverging.py"
    plugin.write_text(DIVERGING_PLUGIN)
    out = tmp_path / "run"
    proc = fer_bench("run", "--plugin", str(plugin), "--methods", "diverging,majority", "--profile", "test",
                     "--set", "diverging.batch_size=32", "--dataset", TINY, "--out", str(out), "--device", "cpu",
                     check=False)
    assert proc.returncode == 1
    assert "diverged at epoch 0 step 2" in proc.stdout
    assert "majority on" in proc.stdout and ": done in" in proc.stdout
    summary = (out / "summary.md").read_text()
    assert "Failed cells" in summary and "diverged at epoch 0 step 2" in summary
    with sqlite3.connect(out / "results.sqlite") as db:
        assert sorted(db.execute("SELECT status FROM cells")) == [("done",), ("failed",)]
        assert "Traceback" in db.execute("SELECT traceback FROM cells WHERE status='failed'").fetchone()[0]
    # #19 item 3: the rerun skips the failed cell but still exits 1 and says how to retry it
    again = fer_bench("run", "--plugin", str(plugin), "--methods", "diverging,majority", "--profile", "test",
                      "--set", "diverging.batch_size=32", "--dataset", TINY, "--out", str(out), "--device", "cpu",
                      check=False)
    assert again.returncode == 1 and "skip (failed)" in again.stdout
    assert "1 cell(s) failed (1 in an earlier run, skipped)" in again.stderr and "--retry-failed" in again.stderr


def test_kill_minus_9_then_the_same_command_resumes(tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "fer_bench.cli", "run", "--methods", "majority,baseline", "--profile", "test",
            "--set", "baseline.epochs=15", "--dataset", TINY, "--out", str(out), "--device", "cpu"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoints = out / "cells"
    deadline = time.time() + 300
    try:
        while time.time() < deadline:  # wait until the baseline cell has written a checkpoint
            found = list(checkpoints.glob("*/checkpoint/last.pt"))
            if found:
                time.sleep(0.5)
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        else:
            raise AssertionError("no checkpoint appeared")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with sqlite3.connect(out / "results.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        states = dict(db.execute("SELECT json_extract(spec, '$.method'), status FROM cells"))
    assert states == {"majority": "done", "baseline": "running"}

    again = fer_bench(*args[3:])
    assert "majority on" in again.stdout and "skip (done)" in again.stdout
    assert "(resumed from its checkpoint at epoch" in again.stdout  # #19 item 7: said without -v
    with sqlite3.connect(out / "results.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        info = json.loads(db.execute("SELECT info FROM cells WHERE json_extract(spec, '$.method')='baseline'").fetchone()[0])
        assert db.execute("SELECT count(*) FROM cells WHERE status='done'").fetchone()[0] == 2
    assert info["resumed_from_epoch"] >= 1
    assert len(info["history"]) == 15


def test_tables_runs_missing_cells_then_no_run_regenerates_identical_csv(tmp_path):
    bench = tmp_path / "tiny.yaml"
    bench.write_text(f"""
name: tiny
tables:
  - name: accuracy
    metric: accuracy
    rows: [method]
    grid: {{methods: [majority], datasets: ["{TINY}"], seeds: [0, 1], profile: test}}
    published: [{{method: majority, value: 40.0, source: "made up for this test"}}]
""")
    results = tmp_path / "results"
    first = fer_bench("tables", str(bench), "--results", str(results), "--device", "cpu")
    assert first.stdout.count(": done") == 2
    csv = (results / "tiny" / "accuracy.csv").read_bytes()
    table = pd.read_csv(results / "tiny" / "accuracy.csv")
    assert table.loc[0, "published"] == 40.0 and table.loc[0, "n"] == 2
    assert table.loc[0, "delta"] == pytest.approx(table.loc[0, "ours_mean"] - 40.0, abs=1e-3)
    (results / "tiny" / "accuracy.csv").unlink()
    again = fer_bench("tables", str(bench), "--results", str(results), "--no-run")
    assert ": done" not in again.stdout
    assert (results / "tiny" / "accuracy.csv").read_bytes() == csv


def test_tables_import_finished_cells_of_reused_run_directories_and_grids_may_be_lists(tmp_path):
    results = tmp_path / "results"
    fer_bench("run", "--methods", "majority", "--seeds", "0,1", "--profile", "test", "--dataset", TINY,
              "--out", str(results / "earlier"), "--device", "cpu")
    bench = tmp_path / "reuse.yaml"
    bench.write_text(f"""
name: reuse
reuse: [earlier, not-there]
tables:
  - name: accuracy
    metric: accuracy
    rows: [method]
    grid:
      - {{methods: [majority], datasets: ["{TINY}"], seeds: [0, 1], profile: test}}
      - {{methods: [majority], datasets: ["{TINY}"], seeds: [2], profile: test}}
""")
    out = fer_bench("tables", str(bench), "--results", str(results), "--device", "cpu").stdout
    assert out.count("import (from") == 2 and out.count(": done") == 1      # seed 2 trained, 0 and 1 copied
    run = results / "reuse" / "run"
    with sqlite3.connect(run / "results.sqlite") as db, sqlite3.connect(results / "earlier" / "results.sqlite") as old:
        rows = db.execute("SELECT id, info FROM cells WHERE status='done'").fetchall()
        imported = {cid for cid, info in rows if json.loads(info).get("imported_from", "").endswith("earlier")}
        assert len(rows) == 3 and len(imported) == 2
        for cid in imported:
            query = "SELECT name, value FROM metrics WHERE cell_id=? ORDER BY name"
            assert db.execute(query, (cid,)).fetchall() == old.execute(query, (cid,)).fetchall()
            assert (run / "cells" / cid / "test_pred.npy").is_file()             # artifacts came along
    assert pd.read_csv(results / "reuse" / "accuracy.csv").loc[0, "n"] == 3
    again = fer_bench("run", "--methods", "majority", "--seeds", "0", "--profile", "test", "--dataset", TINY,
                      "--out", str(tmp_path / "x"), "--reuse", str(tmp_path / "missing"), check=False)
    assert again.returncode != 0 and "--reuse" in again.stderr and "results.sqlite" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
