"""Shared fixtures: every test runs on CPU with its own cache folder and no network."""
import os

import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # The decode cache of one session, shared by its tests (renders once), never the user's.
    monkeypatch.setenv("FER_BENCH_CACHE", str(tmp_path_factory.getbasetemp() / "fer_bench_cache"))
    monkeypatch.delenv("FER_BENCH_DATA", raising=False)
    yield


@pytest.fixture
def toy():
    from fer_bench.checks import toy_dataset
    return toy_dataset(n=96, size=24, num_classes=3), toy_dataset(n=30, size=24, num_classes=3, split="test")


def pytest_configure(config):
    # Two cores here: keep torch from oversubscribing when pytest-xdist is not used.
    os.environ.setdefault("OMP_NUM_THREADS", "2")
