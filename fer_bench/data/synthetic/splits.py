"""Rendering whole splits of the synthetic dataset: in chunks, in the calling thread or on a few threads.

Both give the same bytes: image ``i`` is a pure function of ``(seed, split, i, options)``.

Why threads and not processes: numpy releases the GIL inside its loops, about two thirds of a render's
CPU time at 64 px (uprobes on the GIL), so a second thread adds a good part of a second core (the split
columns of benchmarks/perf/synthetic_render.py); a thread starts in microseconds and writes its images
where the caller reads them. A spawned worker process first re-imports the caller's main module and
``fer_bench.data`` (tenths of a second of CPU under the benchmark, over a second under ``fer-bench run``,
whose main module imports torch) and pickles its images back through a pipe: on a 2-core machine that
costs about as much as rendering the default train split on one core.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Iterator, Sequence

import numpy as np

from fer_bench.data.synthetic.canvas import F32, _noise_bank, _texture_bank
from fer_bench.data.synthetic.factors import check_options, sample_factors
from fer_bench.data.synthetic.renderer import render

BATCH_PIXELS = 128 * 64 * 64   # canvas pixels per vectorised render call: 128 images at 64 px, 32 at 128 px
                               # (the fastest batch at 32-224 px: fewer calls per image for small images,
                               # arrays that stay in the caches for large ones)
CHUNK = 512          # images per task of a thread (factors are sampled a chunk at a time; a call has a fixed cost)
PARALLEL_MIN = 2 * CHUNK   # a split of fewer images is rendered in the calling thread
MAX_THREADS = 4      # the GIL is held between numpy's loops (about a third of a render's CPU time), which
                     # bounds the speed-up near 3x: more threads only queue for it (measured on 2 cores only)
HEAP_HINT = 16 << 20  # bytes; see _hint_allocator


def _hint_allocator() -> None:
    """Tell glibc's malloc that blocks of ``HEAP_HINT`` bytes are normal here, by allocating one and freeing it.

    A batch allocates and frees up to ~18 MB of temporaries (about three canvases at ``BATCH_PIXELS``).
    glibc returns the free top of its heap to the OS once it exceeds its trim threshold: 128 KB at start,
    raised to twice the largest mmapped block freed so far (up to 32 MB). In a process that had freed
    nothing large, every batch therefore page-faulted its temporaries in again: ~60 faults and ~0.1 ms of
    system time per 64 px image, more than the drawing's own overheads (a worker process of the
    previous design avoided it with ``mallopt``). Freeing one block of this size (never touched, so
    never paged in) raises the threshold to 32 MB, as freeing any large array does: glibc's documented
    dynamic threshold, no ``mallopt``, and a process that has already freed a block this large is
    unchanged. The process may then keep up to 32 MB of freed heap for reuse. Elsewhere than glibc this is
    one short-lived allocation.
    """
    np.empty(HEAP_HINT, np.uint8)


def batch_size(size: int, supersample: int = 1) -> int:
    """Images per vectorised render call at ``size`` px drawn ``supersample`` times larger."""
    return max(1, BATCH_PIXELS // (size * supersample) ** 2)


def render_images(split: str, index: np.ndarray | Sequence[int], out: np.ndarray | None = None,
                  **options: Any) -> np.ndarray:
    """Images ``index`` of ``split``, uint8 (N, size, size, 3), rendered in this thread (into ``out`` if given).

    Image ``i`` is the same whatever else is rendered with it (``index`` may be any list).
    """
    opts = check_options(options)
    index = np.asarray(index, dtype=np.int64).reshape(-1)
    size, k = opts["size"], opts["supersample"]
    if out is None:
        out = np.empty((len(index), size, size, 3), dtype=np.uint8)
    elif out.shape != (len(index), size, size, 3) or out.dtype != np.uint8:
        raise ValueError(f"render_images: 'out' must be uint8 {(len(index), size, size, 3)}; "
                         f"got {out.dtype} {out.shape}.")
    batch = batch_size(size, k)
    _hint_allocator()
    canvas = np.empty((min(batch, len(index)), 3, size * k, size * k), F32)   # one canvas for every batch
    for start in range(0, len(index), CHUNK):              # sampling is cheaper in long runs
        F = sample_factors(split, index[start:start + CHUNK], **opts)
        for b in range(0, len(F["index"]), batch):
            rows = {name: v[b:b + batch] for name, v in F.items()}
            stop = start + b + len(rows["index"])
            render(rows, size, k, out=out[start + b:stop], canvas=canvas)
    return out


def resolve_workers(workers: int, n: int) -> int:
    """Threads to use for ``n`` images: ``workers`` if set, else all cores (at most ``MAX_THREADS``) for splits
    of ``PARALLEL_MIN`` images or more, else 1; always 1 inside a daemonic process (a cell of the local
    executor's pool: the cores are busy with cells already)."""
    import multiprocessing
    if multiprocessing.current_process().daemon:
        return 1
    if workers:
        return workers
    if n < PARALLEL_MIN:
        return 1
    return max(1, min(os.cpu_count() or 1, MAX_THREADS, -(-n // CHUNK)))


def iter_split(split: str, n: int, **options: Any) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, images)`` chunks covering images 0..n-1 of ``split``, in any order.

    With one worker (option ``workers``; 0 = all cores for big splits) the chunks are rendered in the
    calling thread; with more, on that many threads (at most two chunks in flight per thread). Both give
    the same bytes.
    """
    opts = check_options(options)
    workers = resolve_workers(opts["workers"], n)
    chunks = [(s, min(s + CHUNK, n)) for s in range(0, n, CHUNK)]
    if workers <= 1:
        for s, e in chunks:
            yield s, render_images(split, np.arange(s, e), **opts)
        return
    _noise_bank(), _texture_bank(opts["size"] * opts["supersample"])     # built here, not by each thread

    def task(s: int, e: int) -> tuple[int, np.ndarray]:
        return s, render_images(split, np.arange(s, e), **opts)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="synthetic-render") as pool:
        pending: set = set()
        todo = iter(chunks)
        for s, e in todo:
            pending.add(pool.submit(task, s, e))
            if len(pending) >= 2 * workers:
                break
        while pending:
            done = next(iter(as_completed(pending)))
            pending.remove(done)
            yield done.result()
            nxt = next(todo, None)
            if nxt is not None:
                pending.add(pool.submit(task, *nxt))


def render_split(split: str, n: int | None = None, **options: Any) -> np.ndarray:
    """All images of ``split`` (or the first ``n``), uint8 (N, size, size, 3), without the cache."""
    opts = check_options(options)
    n = opts[f"n_{split}"] if n is None else n
    out = np.empty((n, opts["size"], opts["size"], 3), dtype=np.uint8)
    workers = resolve_workers(opts["workers"], n)
    if workers <= 1:
        return render_images(split, np.arange(n), out=out, **opts)
    _noise_bank(), _texture_bank(opts["size"] * opts["supersample"])
    chunks = [(s, min(s + CHUNK, n)) for s in range(0, n, CHUNK)]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="synthetic-render") as pool:
        for done in [pool.submit(render_images, split, np.arange(s, e), out[s:e], **opts) for s, e in chunks]:
            done.result()                   # each thread writes its chunk in place; re-raises a failure
    return out
