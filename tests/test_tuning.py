"""Equal-effort tuning (issue #22): declared spaces, bad input before any trial, resume after kill -9, and the
same best configuration from the same sampler seed."""
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from inprocess import fer_bench_in_process

from fer_bench.params import ParameterError
from fer_bench.registry import METHODS, get_method
from fer_bench.tuning import search_space

ROOT = Path(__file__).resolve().parents[1]
TINY = "synthetic:size=32,n_train=240,n_val=60,n_test=90"
TUNE = ["tune", "--methods", "baseline", "--trials", "3", "--profile", "test", "--seeds", "0", "--dataset", TINY,
        "--parallel-trials", "1", "--device", "cpu"]


def cli(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "fer_bench.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_every_torch_method_searches_the_shared_training_loop_space():
    for name in METHODS.names():
        if "lr" in get_method(name).params:
            space = search_space(name)
            assert {k: s.describe() for k, s in space.items() if k in ("lr", "weight_decay", "scheduler")} == {
                "lr": "log:0.0001:0.01", "weight_decay": "choice:0.0|1e-05|0.0001|0.001",
                "scheduler": "choice:none|cosine|exponential"}, name
            # augmentation too, except where it would move pixels away from cached per-image clusterings
            assert ("augment" in space) == (name != "paca"), name
    assert search_space("triplet", {"margin": "uniform:0.1:0.5"})["margin"].describe() == "uniform:0.1:0.5"


@pytest.mark.parametrize("space, message", [
    ("baseline.lrr=log:1e-4:1e-2", "--space baseline.lrr: baseline has no parameter 'lrr'"),
    ("baseline.lr=log:1e-2:1e-4", "the search space of baseline.lr (log:0.01:0.0001) is empty or inverted"),
    ("baseline.scheduler=choice:none|cos", "'cos' is outside what baseline.scheduler allows"),
    ("baseline.lr=uniform:-1:1", "-1.0 is outside what baseline.lr allows"),
    ("baseline.lr=1e-3", "search space '1e-3' is not one of"),
])
def test_bad_spaces_are_one_line_usage_errors_before_any_trial(space, message, tmp_path):
    out = tmp_path / "tune"
    proc = fer_bench_in_process(*TUNE, "--space", space, "--out", str(out))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr, proc.stderr
    assert not (out / "trials").exists()


def test_killed_tuning_resumes_without_rerunning_finished_trials_and_a_rerun_finds_the_same_best(tmp_path):
    out = tmp_path / "tune"
    args = [sys.executable, "-m", "fer_bench.cli", *TUNE, "--set", "baseline.epochs=4", "--out", str(out)]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    store = out / "trials" / "results.sqlite"
    deadline = time.time() + 300
    try:
        while time.time() < deadline:                          # kill once the first trial's cell has finished
            if store.is_file():
                with sqlite3.connect(store) as db:
                    if db.execute("SELECT count(*) FROM cells WHERE status='done'").fetchone()[0] >= 1:
                        break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        else:
            raise AssertionError("no trial finished")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with sqlite3.connect(store) as db:
        before = dict(db.execute("SELECT id, finished FROM cells WHERE status='done'"))
    cli(*TUNE, "--set", "baseline.epochs=4", "--out", str(out))
    with sqlite3.connect(store) as db:
        after = dict(db.execute("SELECT id, finished FROM cells WHERE status='done'"))
    assert all(after[cell] == when for cell, when in before.items())   # finished trials were not run again
    resumed = json.loads((out / "tuning.json").read_text())["methods"]["baseline"]
    assert [t["state"] for t in resumed["trials"]] == ["COMPLETE"] * 3 and len(after) == 3

    # a rerun from scratch with the same seed: the same proposals, scores and best as the killed-then-resumed one
    cli(*TUNE, "--set", "baseline.epochs=4", "--out", str(tmp_path / "again"))
    again = json.loads((tmp_path / "again" / "tuning.json").read_text())["methods"]["baseline"]
    assert [t["params"] for t in resumed["trials"]] == [t["params"] for t in again["trials"]]  # as if never killed
    assert [t["value"] for t in resumed["trials"]] == [t["value"] for t in again["trials"]]
    assert resumed["best_params"] == again["best_params"] and resumed["best_value"] == again["best_value"]


class _KilledInsideAsk(Exception):
    pass


@pytest.mark.parametrize("stored_before_kill", [0, 1, 3])
@pytest.mark.parametrize("startup_trials", [10, 2])          # random start-up draws, and TPE's own
def test_a_trial_left_half_asked_by_a_kill_gets_the_parameters_the_uninterrupted_ask_drew(
        tmp_path, monkeypatch, stored_before_kill, startup_trials):
    import optuna

    from fer_bench.tuning import _finish_interrupted_ask, _sampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    distributions = {name: space.distribution() for name, space in search_space("triplet").items()}
    assert len(distributions) > stored_before_kill

    def study_with_history(name):
        storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / name}.sqlite")
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
        for number in range(3):
            study.sampler = _sampler(7, number, startup_trials)
            study.tell(study.ask(distributions), 0.1 * number)
        study.sampler = _sampler(7, 3, startup_trials)
        return study, storage

    uninterrupted, _ = study_with_history("a")
    expected = uninterrupted.ask(distributions).params

    killed, storage = study_with_history("b")
    calls = []
    real_suggest = optuna.trial.Trial._suggest

    def suggest_then_die(self, name, distribution):         # the process dies before storing parameter n + 1
        if len(calls) == stored_before_kill:
            raise _KilledInsideAsk
        calls.append(name)
        return real_suggest(self, name, distribution)

    monkeypatch.setattr(optuna.trial.Trial, "_suggest", suggest_then_die)
    with pytest.raises(_KilledInsideAsk):
        killed.ask(distributions)
    monkeypatch.undo()
    left = killed.trials[3]
    assert left.state == optuna.trial.TrialState.RUNNING and len(left.params) == stored_before_kill

    _finish_interrupted_ask(killed, storage, left, distributions, _sampler(7, 3, startup_trials))
    assert killed.trials[3].params == expected


def test_an_interrupted_search_names_its_trials_store_beside_the_run_store(tmp_path, capsys):
    from fer_bench.cli import interrupted

    with pytest.raises(SystemExit) as stop:
        interrupted(tmp_path / "run", tmp_path / "tune" / "trials")
    err = capsys.readouterr().err
    assert stop.value.code == 130 and err.count("results.sqlite") == 2 and str(tmp_path / "tune" / "trials") in err


def test_an_unknown_space_kind_is_refused_in_python_too():
    with pytest.raises(ParameterError, match="is not one of log:LOW:HIGH"):
        search_space("baseline", {"lr": "exp:1:2"})


def test_the_report_of_a_tuning_run_shows_the_search_history(tmp_path):
    from fer_bench.report import write_report
    out = tmp_path / "tune"
    cli(*TUNE, "--out", str(out))
    page = write_report(out).read_text()
    assert "Equal-effort tuning: 3 trials per method" in page and "plots/tuning_history.png" in page
    assert (out / "plots" / "tuning_history.png").stat().st_size > 5_000


def test_a_trials_cell_takes_method_sets_over_star_sets_and_its_own_values_over_both():
    from fer_bench.tuning import _trial_spec
    grid = {"sets": {"*": {"epochs": "2", "margin": "0.3"}, "baseline": {"epochs": "3", "lr": "0.5"}}, "device": "cpu"}
    spec = _trial_spec("baseline", TINY, "test", 0, {"lr": 0.00123}, grid)       # '*'.margin: baseline has none
    assert spec.params["epochs"] == 3 and spec.params["lr"] == 0.00123


@pytest.mark.parametrize("held, message", [
    (("--set", "baseline.lr=-1"), "The 'lr' parameter of baseline must be a float in (0, inf). Got '-1' instead."),
    (("--set", "*.margn=1"), "--set '*.margn': no method of this run has a parameter 'margn'"),
    (("--label-noise", "1.5"), "label-noise rate 1.5 is out of range"),
])
def test_bad_fixed_values_are_usage_errors_before_any_trial(held, message, tmp_path):
    out = tmp_path / "tune"
    proc = fer_bench_in_process(*TUNE, *held, "--out", str(out))
    assert proc.returncode == 2 and message in proc.stderr and not (out / "trials").exists(), proc.stderr


TUNED_BENCHMARK = f"""
name: tuned-demo
tables:
  - name: accuracy
    metric: accuracy
    rows: [method, setting, dataset]
    layout: {{columns: setting}}
    grid:
      methods: [baseline, majority]
      datasets: ["{TINY}"]
      seeds: [0, 1]
      profile: test
      tuned: {{dir: tuned-demo/tune, trials: 2, startup_trials: 1, budget: "epochs=1", space: {{baseline.lr: "log:1e-3:1e-2"}}}}
"""


def test_a_benchmark_table_shows_default_against_tuned_and_regenerates_without_running(tmp_path):
    from fer_bench.tables import write_paper_tables

    bench = tmp_path / "tuned-demo.yaml"
    bench.write_text(TUNED_BENCHMARK)
    results = tmp_path / "results"
    write_paper_tables(bench, results, run=True, device="cpu")
    record = json.loads((results / "tuned-demo" / "tune" / "tuning.json").read_text())
    assert list(record["methods"]) == ["baseline"] and len(record["methods"]["baseline"]["trials"]) == 2
    assert record["startup_trials"] == 1                                           # the file's, passed to TPE
    assert record["methods"]["baseline"]["space"]["lr"] == "log:0.001:0.01"       # the file's space over the declared
    table = (results / "tuned-demo" / "accuracy.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| method"))
    assert "default" in header and "tuned" in header, table
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    assert rows["baseline"].count("(n=2)") == 2 and rows["majority"].count("(n=2)") == 1   # majority: nothing to tune
    search = pd.read_csv(results / "tuned-demo" / "accuracy_search.csv")
    assert list(search["method"]) == ["baseline"] and search.loc[0, "trials"] == 2 and search.loc[0, "failed"] == 0
    best = record["methods"]["baseline"]
    assert search.loc[0, "best_trial"] == best["best_trial"] and search.loc[0, "search_val"] == pytest.approx(
        best["best_value"], abs=1e-4)
    assert 0 <= search.loc[0, "default_val"] <= 1 and 0 <= search.loc[0, "tuned_val"] <= 1   # both settings ran
    default_lr = get_method("baseline").resolve_params("test")["lr"]
    assert f"lr: {default_lr:.3g} -> {best['best_params']['lr']:.3g}" in search.loc[0, "changed"]
    before = {p: p.read_bytes() for p in (results / "tuned-demo").glob("*.*")}
    write_paper_tables(bench, results, run=False)
    assert {p: p.read_bytes() for p in (results / "tuned-demo").glob("*.*")} == before
    for cells in (results / "tuned-demo").rglob("cells"):      # a checkout: stores committed, per-cell artifacts not
        shutil.rmtree(cells)
    events = []
    write_paper_tables(bench, results, run=True, device="cpu", on_event=lambda what, spec, result: events.append(what))
    assert events and not [e for e in events if not e.startswith("skip")], events   # nothing trained again


def test_a_tuned_grid_must_keep_default_and_tuned_apart(tmp_path):
    from fer_bench.tables import load_benchmark

    bench = tmp_path / "bad.yaml"
    bench.write_text(TUNED_BENCHMARK.replace("rows: [method, setting, dataset]", "rows: [method, dataset]")
                     .replace("layout: {columns: setting}", "layout: {columns: dataset}"))
    with pytest.raises(ValueError, match="add 'setting' to the table's rows"):
        load_benchmark(bench)
    bench.write_text(TUNED_BENCHMARK.replace("trials: 2,", ""))
    with pytest.raises(ValueError, match="must be a mapping with at least 'dir'"):
        load_benchmark(bench)


def test_a_tuned_grid_on_noisy_labels_searches_and_trains_on_them(tmp_path):
    from fer_bench.tables import load_benchmark, table_settings
    from fer_bench.tuning import SUMMARY_FILE, _study_name, _trial_spec

    noisy = {"device": "cpu", "label_noise": 0.3, "noise_kind": "symmetric"}
    assert _trial_spec("baseline", TINY, "test", 0, {"lr": 1e-3}, noisy).label_noise == 0.3
    assert _study_name("baseline", "synthetic", "quick", 0, {}) == "baseline|synthetic|quick|seed0"   # as before
    assert _study_name("baseline", "synthetic", "quick", 0, noisy) == "baseline|synthetic|quick|seed0|noise0.3-symmetric"
    bench = tmp_path / "tuned-demo.yaml"
    bench.write_text(TUNED_BENCHMARK.replace("profile: test", "profile: test\n      label_noise: [0.3]"))
    table = load_benchmark(bench)["tables"][0]
    results = tmp_path / "results"
    (results / "tuned-demo" / "tune").mkdir(parents=True)
    (results / "tuned-demo" / "tune" / SUMMARY_FILE).write_text(json.dumps(
        {"methods": {"baseline": {"best_params": {"lr": 0.005}}}}))
    settings = table_settings(table, device="cpu", results_root=results)
    assert {(name, s.method, s.label_noise) for name, s in settings} == {
        ("default", "baseline", 0.3), ("default", "majority", 0.3), ("tuned", "baseline", 0.3)}
    bench.write_text(TUNED_BENCHMARK.replace("profile: test", "profile: test\n      label_noise: [0, 0.3]"))
    with pytest.raises(ValueError, match="a tuned grid has one label_noise rate"):
        load_benchmark(bench)


def test_startup_trials_below_one_is_a_usage_error_before_any_trial(tmp_path):
    out = tmp_path / "tune"
    proc = fer_bench_in_process(*TUNE, "--startup-trials", "0", "--out", str(out))
    assert proc.returncode == 2 and "--startup-trials must be at least 1, got 0" in proc.stderr, proc.stderr
    assert not (out / "trials").exists()
