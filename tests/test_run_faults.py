"""Issue #19: faults and bad inputs around a run directory, each one line and nothing computed lost."""
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from inprocess import fer_bench_in_process

from fer_bench.store import Store

ROOT = Path(__file__).resolve().parents[1]
TINY = "synthetic:size=32,n_train=240,n_val=60,n_test=90"


def fer_bench(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "fer_bench.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def majority(out: Path, *extra: str, check=True):
    return fer_bench("run", "--methods", "majority", "--profile", "test", "--dataset", TINY, "--out", str(out),
                     "--device", "cpu", *extra, check=check)


def majority_refused(out: Path, *extra: str):
    """A run of ``majority`` expected to stop with a usage error before any work (in this process: fast)."""
    return fer_bench_in_process("run", "--methods", "majority", "--profile", "test", "--dataset", TINY,
                                "--out", str(out), "--device", "cpu", *extra)


def one_line(proc, code: int, text: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code and len(lines) == 1 and text in lines[0], (proc.returncode, proc.stderr)


def test_a_done_cell_whose_folder_was_deleted_is_run_again(tmp_path):
    out = tmp_path / "run"
    majority(out)
    shutil.rmtree(out / "cells")
    again = majority(out)
    assert "run again (cells/" in again.stdout and ": done in" in again.stdout
    assert list((out / "cells").glob("*/test_labels.npy"))


def test_a_second_run_on_the_same_out_refuses_and_a_dead_runs_lock_is_taken_over(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from fer_bench.runner import run_dir_lock\n"
        "with run_dir_lock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(120)"), str(out)],
        stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "locked"
        one_line(majority(out, check=False), 2, f"is in use by fer-bench (pid {holder.pid}")
        assert not (out / "results.sqlite").exists()
    finally:
        holder.kill()
        holder.wait()
    majority(out)  # the killed holder's lock is released by the OS: taken over


@pytest.mark.parametrize("where", ["file", "under a file"])
def test_out_that_is_a_file_or_under_a_file_is_one_line(tmp_path, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    out = blocker if where == "file" else blocker / "run"
    one_line(majority_refused(out), 2, "not a folder")


def test_a_corrupt_store_is_one_line_and_left_as_it_was(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.sqlite").write_bytes(b"this is not a database" * 100)
    proc = majority_refused(out)
    one_line(proc, 2, f"cannot open for writing the results store {out / 'results.sqlite'}")
    assert "move the file away" in proc.stderr
    assert (out / "results.sqlite").read_bytes() == b"this is not a database" * 100


def test_reused_run_directories_are_opened_read_only(tmp_path):
    earlier = tmp_path / "earlier"
    majority(earlier)
    before = (earlier / "results.sqlite").read_bytes()
    with Store(earlier / "results.sqlite", readonly=True) as store:
        assert len(list(store.cells())) == 1
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            store.mark_running("x", "{}")
    again = majority(tmp_path / "now", "--reuse", str(earlier))
    assert "import (from" in again.stdout
    assert (earlier / "results.sqlite").read_bytes() == before


@pytest.mark.parametrize("body, line, what", [
    ("x = 1\ndef broken(:\n    pass\n", 2, "SyntaxError"),
    ("import os\n\nraise RuntimeError('no weights here')\n", 3, "RuntimeError: no weights here")])
def test_a_plugin_that_does_not_import_names_its_file_and_line(tmp_path, body, line, what):
    plugin = tmp_path / "mine.py"
    plugin.write_text(body)
    proc = fer_bench("run", "--methods", "majority", "--plugin", str(plugin), "--out", str(tmp_path / "r"), check=False)
    one_line(proc, 2, f"plugin {plugin}:{line} failed to load: {what}")


def test_a_noise_matrix_that_flips_nothing_is_refused(tmp_path):
    matrix = tmp_path / "m.csv"
    matrix.write_text(",happy,sad\nhappy,1,0\nsad,0,2\n")
    proc = majority_refused(tmp_path / "r", "--label-noise", "0.2", "--noise-kind", "asymmetric", "--noise-matrix",
                            str(matrix))
    one_line(proc, 2, "flips nothing")


def test_interrupted_cells_are_named_in_the_summary_and_the_store_is_one_file_after_a_run(tmp_path):
    out = tmp_path / "run"
    majority(out)
    assert not (out / "results.sqlite-wal").exists() or (out / "results.sqlite-wal").stat().st_size == 0
    with Store(out / "results.sqlite") as store:  # a cell left 'running' by a killed run
        store.mark_running("0123456789abcdef", '{"method": "baseline"}')
    proc = fer_bench("plot", str(out))
    assert "1 cell(s) were interrupted" in proc.stdout
    assert "1 cell(s) were interrupted" in (out / "summary.md").read_text()


def test_an_unwritable_out_is_refused_before_any_work(tmp_path, monkeypatch):
    """Root (as in these tests' containers) may write anywhere, so the permission is simulated."""
    from fer_bench.method import ParameterError
    from fer_bench.runner import check_run_dir
    locked = tmp_path / "readonly"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if Path(path) == locked else real_access(path, mode))
    with pytest.raises(ParameterError, match=f"--out {locked / 'run'}: {locked} is not writable"):
        check_run_dir(locked / "run")
    assert check_run_dir(tmp_path / "elsewhere" / "run") == tmp_path / "elsewhere" / "run"
