"""The local executor: cells in worker processes give the numbers of cells run one after another."""
import subprocess
import sys
from pathlib import Path

from fer_bench.runner import LocalExecutor, expand_grid, run_grid
from fer_bench.store import Store

ROOT = Path(__file__).resolve().parents[1]
TINY = "synthetic:size=32,n_train=240,n_val=60,n_test=90"
COST = ("seconds", "infer_ms", "memory", "images_per_s")


def _metrics(store_path: Path) -> dict[tuple, dict[str, float]]:
    with Store(store_path) as store:
        cells = list(store.cells())
        assert all(c["status"] == "done" for c in cells), [c["error"] for c in cells]
        return {(c["spec"]["method"], c["spec"]["seed"]): {k: v for k, v in store.metrics(c["id"]).items()
                                                           if not any(part in k for part in COST)} for c in cells}


def test_parallel_cells_give_the_numbers_of_sequential_cells(tmp_path):
    specs = expand_grid(["majority", "baseline"], [TINY], [0, 1], [0.0], "test", {}, "cpu")
    one = run_grid(specs, tmp_path / "one", LocalExecutor(jobs=1))
    two = run_grid(specs, tmp_path / "two", LocalExecutor(jobs=2))
    assert sorted(one["done"]) == sorted(two["done"]) == sorted(s.cell_id for s in specs)
    assert _metrics(tmp_path / "one" / "results.sqlite") == _metrics(tmp_path / "two" / "results.sqlite")
    with Store(tmp_path / "two" / "results.sqlite") as store:
        assert {c["info"]["torch_threads"] for c in store.cells()} == {1}


def test_executor_options_of_the_other_executor_and_bad_thread_counts_are_usage_errors(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "fer_bench.cli", "run", "--methods", "majority", "--profile", "test",
                               "--dataset", TINY, "--out", str(tmp_path / "r"), *args], capture_output=True, text=True,
                              cwd=ROOT, timeout=300)
    proc = run("--executor", "ray", "--jobs", "2")
    assert proc.returncode == 2 and "--jobs applies to --executor local only" in proc.stderr
    proc = run("--threads-per-cell", "0")
    assert proc.returncode == 2 and "--threads-per-cell must be at least 1" in proc.stderr
    proc = run("--jobs", "0")
    assert proc.returncode == 2 and "--jobs must be at least 1" in proc.stderr
    assert not (tmp_path / "r" / "results.sqlite").exists()


def test_a_cell_in_the_local_executors_pool_renders_in_its_own_process():
    """Pool workers are daemonic and may not start the renderer's process pool (the main job's cells failed so)."""
    import multiprocessing

    from fer_bench.data.synthetic import PARALLEL_MIN, resolve_workers
    assert resolve_workers(0, 4 * PARALLEL_MIN) > 1 or multiprocessing.cpu_count() == 1
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.apply(resolve_workers, (0, 4 * PARALLEL_MIN)) == 1
        assert pool.apply(resolve_workers, (4, 4 * PARALLEL_MIN)) == 1
