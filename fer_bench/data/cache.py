"""The caches of fer-bench (DESIGN.md section 2): decode (or render) a dataset's images once, parse its
annotation tables once.

Every adapter turns its files into one uint8 array ``(N, H, W, 3)`` and asks :func:`cached_images` for
it, keyed by the dataset fingerprint. The first call builds the array and stores it under
``cache_dir() / "decoded"`` (``$FER_BENCH_CACHE`` or ``~/.cache/fer_bench``); later calls return a
read-only ``np.memmap`` of the stored copy without building anything.

One entry is two files:

- ``<key>.npy``: the array in NumPy's ``.npy`` format (header + raw C-order bytes), and
- ``<key>.json``: its manifest (format, key, shape, dtype, producer version, byte count, sha256 of the
  array bytes, and a cheap "sample" digest over a few evenly spaced blocks).

Both are written to a temporary file in the same folder and moved into place with ``os.replace``
(:func:`fer_bench.fileio.atomic_path`, flushed to disk first), so a reader sees either no entry or a
complete one, never a half-written file, whatever the number of concurrent writers. A POSIX advisory
lock (``<key>.lock``) makes a second process wait for the first builder instead of building the same
entry twice; it is an optimisation, not what keeps the entry whole. On read the manifest is checked
against the request (key, shape, dtype, version) and against the file (size, header, digest).
Anything that does not match is logged as a warning and rebuilt, never used.

The digest checked on read is the full sha256 for arrays up to ``FULL_CHECK_BYTES`` (256 MiB, about
0.5 s here) and the sample digest beyond that (``verify="auto"``); ``verify="full"`` or ``"sample"``
forces one or the other.

:func:`cached_table` keeps the arrays an adapter parses from a big annotation file (AffectNet's 300 MB
CSV) under ``cache_dir() / "index"``, keyed by the files' sizes and modification times.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, Union

import numpy as np

from fer_bench.data.dataset import fingerprint_of
from fer_bench.fileio import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

CACHE_ENV = "FER_BENCH_CACHE"
FORMAT = 1                      # bump when the on-disk layout of an entry changes
FULL_CHECK_BYTES = 256 << 20    # up to this size the full sha256 is verified on every read
SAMPLE_BLOCKS = 64              # blocks read for the sample digest
SAMPLE_BLOCK_BYTES = 4096
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")

# A builder returns the whole array, or an iterable of (start, chunk) pairs that together cover
# rows 0..N-1 exactly once (in any order); chunks are written as they arrive.
Chunks = Iterable[tuple[int, np.ndarray]]
Builder = Callable[[], Union[np.ndarray, Chunks]]


class CacheError(RuntimeError):
    """A builder produced something that does not fit the requested entry."""


def cache_dir() -> Path:
    """The cache folder: ``$FER_BENCH_CACHE`` or ``~/.cache/fer_bench``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "fer_bench")


def key_part(text: str) -> str:
    """``text`` (a dataset name) as the start of a cache key: letters, digits, '.', '_', '-'; at most 40."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:40] or "x"


def cached_images(key: str, n: int, shape: tuple[int, int, int], build: Builder, *,
                  version: str = "", root: str | Path | None = None, verify: str = "auto") -> np.ndarray:
    """The images of one dataset split, built once and memory-mapped from the cache afterwards.

    Args:
      key: the dataset fingerprint (letters, digits, '.', '_', '-'); names the entry.
      n, shape: the expected array is uint8 ``(n, *shape)``, e.g. ``(7000, 64, 64, 3)``.
      build: called only when the entry is missing or invalid; returns the uint8 array or an
        iterable of ``(start, chunk)`` pairs (see ``Builder``).
      version: the producer's version (generator / adapter); a different version is a miss.
      root: the cache folder; default ``cache_dir()`` (honours ``$FER_BENCH_CACHE``).
      verify: "auto", "full" or "sample" (see the module docstring).

    Returns a read-only ``np.memmap`` uint8 ``(n, *shape)`` (a plain empty array when ``n == 0``).
    """
    if not isinstance(key, str) or not _KEY.match(key):
        raise ValueError(f"cache key {key!r} must be 1-200 letters, digits, '.', '_' or '-' "
                         f"(use the dataset fingerprint).")
    if verify not in ("auto", "full", "sample"):
        raise ValueError(f"verify={verify!r} is not allowed; use 'auto', 'full' or 'sample'.")
    full_shape = (int(n), *(int(s) for s in shape))
    if n == 0:
        return np.zeros(full_shape, dtype=np.uint8)
    if root is None:
        root = cache_dir()
    folder = Path(root).expanduser() / "decoded"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(f"cannot create the decode cache folder {str(folder)!r} ({exc.strerror}); "
                      f"set FER_BENCH_CACHE to a writable folder.") from None

    entry = _read_entry(folder, key, full_shape, version, verify)
    if entry is not None:
        return entry
    with _lock(folder / f"{key}.lock"):
        # Another process may have finished the same entry while we waited for the lock.
        entry = _read_entry(folder, key, full_shape, version, verify, quiet=True)
        if entry is not None:
            return entry
        t0 = time.perf_counter()
        _write_entry(folder, key, full_shape, build, version)
        log.info("cached %s %s in %.1f s under %s", key[:16], full_shape, time.perf_counter() - t0, folder)
    entry = _read_entry(folder, key, full_shape, version, verify)
    if entry is None:
        raise CacheError(f"decode cache entry {key!r} in {str(folder)!r} is invalid right after it was "
                         f"written; check the disk (free space, permissions) or FER_BENCH_CACHE.")
    return entry


def entry_paths(key: str, root: str | Path | None = None) -> tuple[Path, Path]:
    """The ``(.npy, .json)`` paths of the entry ``key`` (for tools and tests)."""
    if root is None:
        root = cache_dir()
    folder = Path(root).expanduser() / "decoded"
    return folder / f"{key}.npy", folder / f"{key}.json"


# ---------------------------------------------------------------------------------------------
# reading


def _read_entry(folder: Path, key: str, shape: tuple[int, ...], version: str, verify: str,
                quiet: bool = False) -> np.ndarray | None:
    """The valid entry as a read-only memmap, or None (with a warning when an entry was present)."""
    data, manifest_path = folder / f"{key}.npy", folder / f"{key}.json"
    if not data.exists() and not manifest_path.exists():
        return None
    reason = _check(data, manifest_path, key, shape, version, verify)
    if reason is None:
        return np.load(data, mmap_mode="r")
    if not quiet:
        log.warning("decode cache entry %s is not usable (%s); rebuilding it", data, reason)
    return None


def _check(data: Path, manifest_path: Path, key: str, shape: tuple[int, ...], version: str,
           verify: str) -> str | None:
    """None when the entry is valid, else the reason (one phrase)."""
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        return "manifest missing"
    except (OSError, ValueError) as exc:
        return f"manifest unreadable: {exc}"
    expected = {"format": FORMAT, "key": key, "shape": list(shape), "dtype": "uint8", "version": version}
    for field, want in expected.items():
        if manifest.get(field) != want:
            return f"manifest {field} is {manifest.get(field)!r}, expected {want!r}"
    try:
        array = np.load(data, mmap_mode="r")
    except FileNotFoundError:
        return "array file missing"
    except (OSError, ValueError) as exc:     # truncated file, bad header
        return f"array file unreadable: {exc}"
    nbytes = int(np.prod(shape))
    if array.shape != tuple(shape) or array.dtype != np.uint8 or not array.flags.c_contiguous:
        return f"array is {array.dtype} {array.shape}, expected uint8 {tuple(shape)}"
    size = data.stat().st_size
    if size != array.offset + nbytes:
        return f"array file has {size} bytes, expected {array.offset + nbytes}"
    full = verify == "full" or (verify == "auto" and nbytes <= FULL_CHECK_BYTES)
    if full:
        digest = _sha256(array)
        if digest != manifest.get("sha256"):
            return "sha256 of the array bytes does not match the manifest"
    elif _sample_digest(array) != manifest.get("sample"):
        return "sample digest of the array bytes does not match the manifest"
    return None


def _sha256(array: np.ndarray, chunk_rows: int | None = None) -> str:
    h = hashlib.sha256()
    flat = array.reshape(len(array), -1)
    step = chunk_rows or max(1, (16 << 20) // max(1, flat.shape[1]))   # ~16 MB at a time
    for start in range(0, len(flat), step):
        h.update(np.ascontiguousarray(flat[start:start + step]).data)
    return h.hexdigest()


def _sample_digest(array: np.ndarray) -> str:
    """sha256 of SAMPLE_BLOCKS evenly spaced blocks of the raw bytes (plus the byte count)."""
    flat = array.reshape(-1)
    h = hashlib.sha256(str(flat.size).encode())
    if flat.size <= SAMPLE_BLOCKS * SAMPLE_BLOCK_BYTES:
        h.update(np.ascontiguousarray(flat).data)
        return h.hexdigest()
    starts = np.linspace(0, flat.size - SAMPLE_BLOCK_BYTES, SAMPLE_BLOCKS).astype(np.int64)
    for s in starts:
        h.update(np.ascontiguousarray(flat[s:s + SAMPLE_BLOCK_BYTES]).data)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# writing


def _write_entry(folder: Path, key: str, shape: tuple[int, ...], build: Builder, version: str) -> None:
    """Build into a temporary .npy in ``folder``, then move array and manifest into place."""
    with atomic_path(folder / f"{key}.npy", fsync=True) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        _fill(out, build, shape)
        out.flush()
        manifest = {"format": FORMAT, "key": key, "shape": list(shape), "dtype": "uint8",
                    "version": version, "bytes": int(out.nbytes), "sha256": _sha256(out),
                    "sample": _sample_digest(out), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        del out
    atomic_write_text(folder / f"{key}.json", json.dumps(manifest, indent=1), fsync=True)


def _fill(out: np.ndarray, build: Builder, shape: tuple[int, ...]) -> None:
    result = build()
    if isinstance(result, np.ndarray):
        if result.shape != shape or result.dtype != np.uint8:
            raise CacheError(f"the builder returned {result.dtype} {result.shape}; expected uint8 {shape}.")
        out[:] = result
        return
    written = np.zeros(shape[0], dtype=bool)
    for start, chunk in result:
        chunk = np.asarray(chunk)
        stop = start + len(chunk)
        if chunk.dtype != np.uint8 or chunk.shape[1:] != shape[1:] or start < 0 or stop > shape[0]:
            raise CacheError(f"the builder yielded rows {start}:{stop} as {chunk.dtype} {chunk.shape}; "
                             f"expected uint8 rows inside 0:{shape[0]} of shape {shape[1:]}.")
        if written[start:stop].any():
            raise CacheError(f"the builder yielded rows {start}:{stop} twice.")
        out[start:stop] = chunk
        written[start:stop] = True
    if not written.all():
        missing = np.flatnonzero(~written)
        raise CacheError(f"the builder left {len(missing)} of {shape[0]} rows unwritten "
                         f"(first missing row {missing[0]}).")


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` where the platform has one (POSIX), else nothing."""
    try:
        import fcntl
    except ImportError:   # Windows: the atomic rename alone keeps entries whole
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------
# A small cache of parsed annotation tables (big CSVs are parsed once)


def cached_table(name: str, files: Sequence[Path], parser_version: str,
                 build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Arrays parsed from ``files``, stored under ``cache_dir()/index`` keyed by the files' sizes and
    modification times, so a 300 MB CSV is parsed once. Arrays must not be object dtype."""
    sig = []
    for f in files:
        info = os.stat(f)
        sig.append([str(Path(f).resolve()), info.st_size, info.st_mtime_ns])
    key = f"{key_part(name)}-{fingerprint_of(parser_version, sig)[:40]}"
    path = cache_dir() / "index" / f"{key}.npz"
    with contextlib.suppress(OSError, ValueError, KeyError, EOFError):
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    table = build()
    with atomic_path(path) as tmp:
        np.savez(tmp, **table)
    return table
