"""Tests of the decode cache (fer_bench/data/cache.py): build once, verify on read, atomic writes."""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pytest

from fer_bench.data import cache as C

SHAPE = (8, 8, 3)


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *SHAPE), dtype=np.uint8)


class Counting:
    """A builder that counts its calls."""

    def __init__(self, array: np.ndarray):
        self.array, self.calls = array, 0

    def __call__(self) -> np.ndarray:
        self.calls += 1
        return self.array


@pytest.fixture
def cache_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FER_BENCH_CACHE", str(tmp_path))
    return tmp_path


def test_second_call_reads_the_cache_without_building(cache_root: Path) -> None:
    data = _images(20)
    build = Counting(data)
    first = C.cached_images("k1", 20, SHAPE, build, version="v1")
    second = C.cached_images("k1", 20, SHAPE, build, version="v1")
    assert build.calls == 1
    assert isinstance(second, np.memmap) and not second.flags.writeable
    np.testing.assert_array_equal(first, data)
    np.testing.assert_array_equal(second, data)
    npy, manifest = C.entry_paths("k1")
    assert npy.parent == cache_root / "decoded"          # FER_BENCH_CACHE is honoured
    meta = json.loads(manifest.read_text())
    assert meta["shape"] == [20, *SHAPE] and meta["dtype"] == "uint8" and meta["version"] == "v1"
    assert len(meta["sha256"]) == 64


def test_chunked_builder_in_any_order(cache_root: Path) -> None:
    data = _images(10)

    def chunks():
        for start in (6, 0, 3):
            yield start, data[start:start + (4 if start == 6 else 3)]

    out = C.cached_images("chunks", 10, SHAPE, chunks)
    np.testing.assert_array_equal(out, data)


@pytest.mark.parametrize("bad", ["missing", "twice", "shape"])
def test_bad_builders_are_refused(cache_root: Path, bad: str) -> None:
    data = _images(6)

    def chunks():
        if bad == "missing":
            yield 0, data[:3]
        elif bad == "twice":
            yield 0, data[:4]
            yield 2, data[2:6]
        else:
            yield 0, data[:, :4]

    with pytest.raises(C.CacheError):
        C.cached_images(f"bad-{bad}", 6, SHAPE, chunks)
    npy, manifest = C.entry_paths(f"bad-{bad}")
    assert not npy.exists() and not manifest.exists()
    assert not list((cache_root / "decoded").glob("*.tmp*"))      # the temporary file is cleaned up


def test_truncated_file_is_detected_and_rebuilt(cache_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = _images(30)
    build = Counting(data)
    C.cached_images("trunc", 30, SHAPE, build)
    npy, _ = C.entry_paths("trunc")
    with open(npy, "r+b") as f:
        f.truncate(npy.stat().st_size - 100)
    with caplog.at_level(logging.WARNING, logger="fer_bench.data.cache"):
        out = C.cached_images("trunc", 30, SHAPE, build)
    assert build.calls == 2
    assert "rebuilding" in caplog.text
    np.testing.assert_array_equal(out, data)


def test_flipped_byte_is_detected_and_rebuilt(cache_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = _images(30)
    build = Counting(data)
    C.cached_images("flip", 30, SHAPE, build)
    npy, _ = C.entry_paths("flip")
    raw = bytearray(npy.read_bytes())
    raw[-7] ^= 0xFF                                          # same size, one byte changed
    npy.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, logger="fer_bench.data.cache"):
        out = C.cached_images("flip", 30, SHAPE, build)
    assert build.calls == 2 and "sha256" in caplog.text
    np.testing.assert_array_equal(out, data)


def test_sample_digest_catches_a_changed_block(cache_root: Path) -> None:
    data = _images(3000)                                      # > 64 blocks of 4 KiB
    build = Counting(data)
    C.cached_images("sample", 3000, SHAPE, build, verify="sample")
    npy, _ = C.entry_paths("sample")
    with open(npy, "r+b") as f:                              # the first byte of the data is always sampled
        f.seek(npy.stat().st_size - data.nbytes)
        f.write(bytes([data.reshape(-1)[0] ^ 0xFF]))
    C.cached_images("sample", 3000, SHAPE, build, verify="sample")
    assert build.calls == 2


@pytest.mark.parametrize("change", ["version", "shape", "manifest_missing", "manifest_garbage"])
def test_mismatched_entries_are_rebuilt(cache_root: Path, change: str) -> None:
    data = _images(12)
    build = Counting(data)
    C.cached_images("mm", 12, SHAPE, build, version="v1")
    _, manifest = C.entry_paths("mm")
    version, n = "v1", 12
    if change == "version":
        version = "v2"
    elif change == "shape":
        n = 11
        build.array = data[:11]
    elif change == "manifest_missing":
        manifest.unlink()
    else:
        manifest.write_text("{not json")
    out = C.cached_images("mm", n, SHAPE, build, version=version)
    assert build.calls == 2
    np.testing.assert_array_equal(out, build.array)


def test_key_and_verify_are_checked(cache_root: Path) -> None:
    with pytest.raises(ValueError, match="cache key"):
        C.cached_images("../escape", 1, SHAPE, lambda: _images(1))
    with pytest.raises(ValueError, match="verify"):
        C.cached_images("ok", 1, SHAPE, lambda: _images(1), verify="never")


def test_empty_entry_needs_no_file(cache_root: Path) -> None:
    out = C.cached_images("empty", 0, SHAPE, lambda: pytest.fail("must not build"))
    assert out.shape == (0, *SHAPE)


# --- concurrency -------------------------------------------------------------------------------


def _slow_chunks(n: int):
    data = _images(n, seed=7)
    for start in range(0, n, 10):
        time.sleep(0.01)
        yield start, data[start:start + 10]


def _write_unlocked(folder: str, n: int) -> None:
    # Bypass the lock: only the temporary file + os.replace protect the entry here.
    C._write_entry(Path(folder), "race", (n, *SHAPE), lambda: _slow_chunks(n), "v")


def _cached_with_marker(root: str, n: int, marker: str) -> None:
    def build():
        with open(marker, "a") as f:
            f.write("built\n")
        return _slow_chunks(n)
    out = C.cached_images("locked", n, SHAPE, build, root=root)
    assert np.array_equal(out, _images(n, seed=7))


def test_concurrent_writers_never_expose_a_partial_entry(tmp_path: Path) -> None:
    n = 200
    folder = tmp_path / "decoded"
    folder.mkdir()
    ctx = multiprocessing.get_context("fork" if hasattr(os, "fork") else "spawn")
    procs = [ctx.Process(target=_write_unlocked, args=(str(folder), n)) for _ in range(2)]
    for p in procs:
        p.start()
    seen_complete = 0
    while any(p.is_alive() for p in procs):
        npy = folder / "race.npy"
        if npy.exists():                      # whenever the array is in place it is whole
            arr = np.load(npy, mmap_mode="r")
            assert arr.shape == (n, *SHAPE)
            np.testing.assert_array_equal(arr, _images(n, seed=7))
            seen_complete += 1
        time.sleep(0.005)
    for p in procs:
        p.join()
        assert p.exitcode == 0
    out = C.cached_images("race", n, SHAPE, lambda: pytest.fail("entry should be valid"), version="v",
                          root=tmp_path)
    np.testing.assert_array_equal(out, _images(n, seed=7))
    assert not list(folder.glob("*.tmp*"))


def test_concurrent_callers_build_once(tmp_path: Path) -> None:
    n = 200
    marker = tmp_path / "builds.txt"
    ctx = multiprocessing.get_context("fork" if hasattr(os, "fork") else "spawn")
    procs = [ctx.Process(target=_cached_with_marker, args=(str(tmp_path), n, str(marker))) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert marker.read_text().count("built") == 1
