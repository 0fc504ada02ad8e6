"""Decode cache: first load of a dataset split (decode every file) vs a cached load (map the cache).

Writes RAF-DB-shaped data in the official layout (``basic/EmoLabel/list_patition_label.txt`` and
100x100 textured JPEGs under ``Image/aligned``) and a FER2013-shaped ``fer2013.csv``, then loads one
split through ``fer_bench.data.load_dataset`` with an empty cache (the first decode, timed once per
fresh cache folder) and again with the cache in place (median of ``--repeats``). The cached load
still parses the annotation file, confines every path, stats every file (to notice replaced files)
and checks the cache manifest; it decodes nothing. Target: first / cached >= 20.

    python benchmarks/perf/decode_cache.py [--n 3068 --size 112 --repeats 5 --workers 0]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from fer_bench.data import fer2013, load_dataset, rafdb  # noqa: F401  (imports register the two adapters)


def write_raf(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    aligned = root / "basic" / "Image" / "aligned"
    aligned.mkdir(parents=True)
    (root / "basic" / "EmoLabel").mkdir(parents=True)
    yy, xx = np.mgrid[0:100, 0:100]
    lines = []
    for i in range(1, n + 1):
        base = (yy * rng.uniform(0.5, 2) + xx * rng.uniform(0.5, 2)) % 256
        img = np.clip(base[..., None] + rng.normal(0, 20, (100, 100, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(aligned / f"test_{i:04d}_aligned.jpg", quality=90)
        lines.append(f"test_{i:04d}.jpg {1 + i % 7}")
    (root / "basic" / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")


def write_fer(root: Path, n: int) -> None:
    rng = np.random.default_rng(1)
    folder = root / "fer2013"
    folder.mkdir(parents=True)
    with open(folder / "fer2013.csv", "w") as fh:
        fh.write("emotion,pixels,Usage\n")
        for i in range(n):
            fh.write(f"{i % 7},{' '.join(map(str, rng.integers(0, 256, 2304)))},PrivateTest\n")


def timed(name: str, split: str, root: Path, options: dict) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the whole process) of one load."""
    wall, cpu = time.perf_counter(), time.process_time()
    ds = load_dataset(name, split, root, **options)
    np.asarray(ds.images[-1]).sum()       # touch the data
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(name: str, split: str, root: Path, options: dict, repeats: int) -> tuple[tuple, tuple]:
    """((wall, cpu) of the first decode, median (wall, cpu) of the cached loads)."""
    with tempfile.TemporaryDirectory() as cache:
        os.environ["FER_BENCH_CACHE"] = cache     # this script's own process only
        first = timed(name, split, root, options)
        runs = [timed(name, split, root, options) for _ in range(repeats)]
    return first, (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3068, help="images (RAF-DB test has 3,068)")
    parser.add_argument("--n-fer", type=int, default=3589, help="FER2013 rows (PrivateTest has 3,589)")
    parser.add_argument("--size", type=int, default=112, help="stored size")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=0, help="decode threads (0: automatic)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        raf, fer = Path(tmp) / "raf", Path(tmp) / "fer"
        write_raf(raf, args.n)
        write_fer(fer, args.n_fer)
        rows = []
        for label, name, root, split, size in (("rafdb (JPEG files)", "rafdb", raf, "test", args.size),
                                               ("fer2013 (CSV pixels)", "fer2013", fer, "test", 48)):
            first, cached = measure(name, split, root, {"size": size, "workers": args.workers}, args.repeats)
            rows.append((label, size, first, cached))
    print(f"{'dataset':<22} {'size':>5} {'first decode (wall / cpu)':>27} {'cached load (wall / cpu)':>26} "
          f"{'speed-up (wall / cpu)':>22}")
    for label, size, first, cached in rows:
        print(f"{label:<22} {size:>5} {first[0]:>12.3f}s / {first[1]:>8.3f}s {cached[0]:>11.4f}s / {cached[1]:>8.4f}s "
              f"{first[0] / cached[0]:>10.1f}x / {first[1] / cached[1]:>6.1f}x")


if __name__ == "__main__":
    main()
