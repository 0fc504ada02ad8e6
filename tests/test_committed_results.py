"""The committed paper tables are what their committed stores say: ``fer-bench tables B --no-run`` on a
fresh checkout rewrites every table of every benchmark byte for byte (a method whose profile changed
without its benchmark being rerun shows up here as rows that vanish)."""
import shutil
from pathlib import Path

import pytest

from fer_bench.tables import load_benchmark, tuned_grids, write_paper_tables
from fer_bench.tuning import SUMMARY_FILE

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = sorted((ROOT / "benchmarks").glob("*.yaml"))


@pytest.mark.parametrize("bench_file", BENCHMARKS, ids=[b.stem for b in BENCHMARKS])
def test_committed_tables_regenerate_from_the_committed_store(bench_file, tmp_path):
    name = load_benchmark(bench_file)["name"]
    store = ROOT / "results" / name / "run" / "results.sqlite"
    if not store.is_file():
        pytest.skip(f"no committed store for {name}")
    (tmp_path / name / "run").mkdir(parents=True)
    shutil.copyfile(store, tmp_path / name / "run" / "results.sqlite")
    for _, search_dir in tuned_grids(load_benchmark(bench_file), ROOT / "results"):   # a tuned table's best configs
        copy = tmp_path / search_dir.relative_to(ROOT / "results")
        copy.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(search_dir / SUMMARY_FILE, copy / SUMMARY_FILE)
    written = write_paper_tables(bench_file, tmp_path, run=False)
    tables = [p for p in written if p.parent == tmp_path / name]
    assert tables
    for path in tables:
        committed = ROOT / "results" / name / path.name
        assert committed.is_file(), f"{committed} is not committed"
        assert path.read_text() == committed.read_text(), f"{committed} differs from what its store gives"
