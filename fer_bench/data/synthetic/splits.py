"""Rendering whole splits of the synthetic dataset: in chunks, in this process or on worker processes.

Both give the same bytes: image ``i`` is a pure function of ``(seed, split, i, options)``.
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Iterator, Sequence

import numpy as np

from fer_bench.data.synthetic.factors import check_options, sample_factors
from fer_bench.data.synthetic.renderer import render

BATCH = 64          # images per vectorised render call (arrays stay in the L2 cache)
CHUNK = 512         # images per worker task
PARALLEL_MIN = 4096  # below this many images a split is rendered in the calling process (a spawned
                     # worker costs ~0.6 s of imports, more than it saves on a smaller split)


def render_images(split: str, index: np.ndarray | Sequence[int], **options: Any) -> np.ndarray:
    """Images ``index`` of ``split``, uint8 (N, size, size, 3), rendered in this process.

    Image ``i`` is the same whatever else is rendered with it (``index`` may be any list).
    """
    opts = check_options(options)
    index = np.asarray(index, dtype=np.int64).reshape(-1)
    size = opts["size"]
    out = np.empty((len(index), size, size, 3), dtype=np.uint8)
    for start in range(0, len(index), CHUNK):              # sampling is cheaper in long runs
        F = sample_factors(split, index[start:start + CHUNK], **opts)
        for b in range(0, len(F["index"]), BATCH):
            rows = {k: v[b:b + BATCH] for k, v in F.items()}
            out[start + b:start + b + BATCH] = render(rows, size, opts["supersample"])
    return out


def _worker_init() -> None:
    """Worker processes keep freed memory for reuse instead of returning it to the OS.

    The renderer allocates many short-lived arrays; with glibc's default trimming, each batch
    page-faults them in again (about a third of the render time). ``mallopt(M_TOP_PAD)`` changes this
    for the worker process only (it is ours), never for the caller's process.
    """
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-2, 256 << 20)          # M_TOP_PAD = -2: keep 256 MiB at the top of the heap
    except (OSError, AttributeError):        # not glibc: nothing to tune
        pass


def _render_chunk(split: str, start: int, stop: int, options: dict[str, Any]) -> tuple[int, np.ndarray]:
    return start, render_images(split, np.arange(start, stop), **options)


def resolve_workers(workers: int, n: int) -> int:
    """Processes to use for ``n`` images: ``workers`` if set, else all cores for big splits, else 1; always 1
    inside a daemonic process (a cell of the local executor's pool: the cores are busy with cells already,
    and such a process may not start children)."""
    import multiprocessing
    if multiprocessing.current_process().daemon:
        return 1
    if workers:
        return workers
    if n < PARALLEL_MIN:
        return 1
    return max(1, min(os.cpu_count() or 1, -(-n // CHUNK)))


def iter_split(split: str, n: int, **options: Any) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, images)`` chunks covering images 0..n-1 of ``split``, in any order.

    With one worker (option ``workers``; 0 = all cores for big splits) the chunks are rendered here;
    with more, on a pool of spawned processes (at most two chunks in flight per worker). Both give
    the same bytes.
    """
    opts = check_options(options)
    workers = resolve_workers(opts["workers"], n)
    chunks = [(s, min(s + CHUNK, n)) for s in range(0, n, CHUNK)]
    if workers <= 1:
        for s, e in chunks:
            yield s, render_images(split, np.arange(s, e), **opts)
        return
    import multiprocessing
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_worker_init) as pool:
        pending: set = set()
        todo = iter(chunks)
        for s, e in todo:
            pending.add(pool.submit(_render_chunk, split, s, e, opts))
            if len(pending) >= 2 * workers:
                break
        while pending:
            done = next(iter(as_completed(pending)))
            pending.remove(done)
            yield done.result()
            nxt = next(todo, None)
            if nxt is not None:
                pending.add(pool.submit(_render_chunk, split, nxt[0], nxt[1], opts))


def render_split(split: str, n: int | None = None, **options: Any) -> np.ndarray:
    """All images of ``split`` (or the first ``n``), uint8 (N, size, size, 3), without the cache."""
    opts = check_options(options)
    n = opts[f"n_{split}"] if n is None else n
    out = np.empty((n, opts["size"], opts["size"], 3), dtype=np.uint8)
    for start, chunk in iter_split(split, n, **opts):
        out[start:start + len(chunk)] = chunk
    return out
