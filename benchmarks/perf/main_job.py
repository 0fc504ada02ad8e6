"""The main job, timed as a new user meets it: ``fer-bench run --methods qcs,sgm,sceald`` on the embedded dataset.

The command runs in a subprocess with an empty dataset cache (the first render of the dataset counts) and a
fresh run directory. Then each cell's phases are read from the store (``info.phases``: data, train, evaluate,
write; wall and process-CPU seconds, recorded by the runner), and the script prints

- the job's wall time and CPU time (all its processes), with the load average before and after;
- per cell and phase: wall and CPU seconds; ``outside cells``: the job's wall time not spent inside a cell
  (start-up, the store, summaries and plots: the wall time minus the union of the cells' intervals);
- ``job / reference``: the job's wall time over a fixed hand-written workload measured in the same run (a
  small conv net trained for a fixed number of steps on one thread, before and after the job), so that a
  slower machine does not read as a regression.

Target (issue #18): the job <= 300 s of wall time on a quiet 2-core machine.

    python benchmarks/perf/main_job.py [--methods qcs,sgm,sceald] [--profile quick] [-- extra fer-bench options]

Recorded on the 2-core development VM (AMD EPYC, no GPU, torch 2.14.1), 2026-12-03, load average 0.49
before the run, nothing else running; local executor, two cells at a time, one torch thread each:

    cell                wall s   cpu s   data s (cpu)   train s (cpu)   evaluate s (cpu)   write s
    qcs seed 0           600.0     592     5.2 (5)      587.4 (580)        7.4 (8)          0.0
    sgm seed 0           203.0     195     5.1 (1)      184.4 (182)       13.5 (12)         0.0
    sceald seed 0        313.7     310     0.1 (0)      294.2 (290)       19.3 (19)         0.0
    job wall 611.5 s, CPU 1120 s; outside cells 11.6 s; reference workload 1.60 s; job / reference 381.9

Again on 2026-12-04 (commit 720cf6c, load average 0.12 before, nothing else running; the VM ran the same
reference workload 1.7x faster that day, so compare the ratio, not the seconds):

    cell                wall s   cpu s   data s (cpu)   train s (cpu)   evaluate s (cpu)   write s
    qcs seed 0           317.4     314     3.0 (3)      310.3 (307)        4.1 (4)          0.0
    sgm seed 0           128.3     124     3.0 (0)      116.5 (115)        8.9 (9)          0.0
    sceald seed 0        137.6     136     0.1 (0)      125.5 (124)       11.9 (12)         0.0
    job wall 326.2 s, CPU 594 s; outside cells 8.8 s; reference workload 0.95 s; job / reference 343.0

The target is not met: the job is one QCS cell long (see issue #18's note). Before the parallel executor the
same cells ran one after another (about 1,120 s here); before the equal budget of issue #16 the job was 418 s
with far fewer QCS steps.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

PHASES = ("data", "train", "evaluate", "write")


def reference_workload(steps: int = 40) -> float:
    """Seconds for a fixed small training loop on one thread: 3 conv layers at 48 px, batch 64, Adam."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
                            nn.Conv2d(64, 64, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                            nn.Linear(64, 7))
        opt = torch.optim.Adam(net.parameters(), 1e-3)
        x, y = torch.randn(64, 3, 48, 48), torch.randint(0, 7, (64,))
        start = time.perf_counter()
        for _ in range(steps):
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cell_rows(store: Path) -> list[dict]:
    with sqlite3.connect(store) as db:
        rows = db.execute("SELECT spec, status, seconds, info FROM cells").fetchall()
    out = []
    for spec, status, seconds, info in rows:
        spec, info = json.loads(spec), json.loads(info or "{}")
        out.append({"method": spec["method"], "seed": spec["seed"], "status": status, "seconds": seconds or 0.0,
                    "phases": info.get("phases", {}), "span": info.get("monotonic_span")})
    return sorted(out, key=lambda r: r["span"] or [0.0])


def busy_time(rows: list[dict]) -> float:
    """The wall time the cells kept the machine busy: the union of their [start, end] intervals (the runner's
    ``time.monotonic`` readings, one clock for all processes of the machine)."""
    spans = sorted(tuple(r["span"]) for r in rows if r["span"])
    total, end = 0.0, float("-inf")
    for a, b in spans:
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="qcs,sgm,sceald")
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--keep", default=None, help="keep the run directory here instead of a temporary one")
    ap.add_argument("extra", nargs="*", help="more fer-bench run options, after --")
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()}", flush=True)
    ref_before = reference_workload()
    with tempfile.TemporaryDirectory(prefix="fer_bench_main_job_") as tmp:
        out = Path(args.keep) if args.keep else Path(tmp) / "run"
        env = {**os.environ, "FER_BENCH_CACHE": str(Path(tmp) / "cache")}  # empty cache: the render counts
        command = [sys.executable, "-m", "fer_bench.cli", "run", "--methods", args.methods, "--profile", args.profile,
                   "--out", str(out), *args.extra]
        cpu0, start = children_cpu(), time.perf_counter()
        proc = subprocess.run(command, env=env, capture_output=True, text=True)
        wall, cpu = time.perf_counter() - start, children_cpu() - cpu0
        if proc.returncode != 0:
            sys.exit(f"the job failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        rows = cell_rows(out / "results.sqlite")
    ref_after = reference_workload()
    reference = (ref_before + ref_after) / 2
    print(f"load average after:  {os.getloadavg()}")
    print(f"command: fer-bench {' '.join(command[3:-2])}")
    print(f"\n{'cell':<18}{'wall s':>8}{'cpu s':>8}" + "".join(f"{p + ' s':>16}" for p in PHASES))
    for r in rows:
        phases = "".join(f"{r['phases'].get(p, {}).get('seconds', float('nan')):>8.1f}"
                         f"{'(' + format(r['phases'].get(p, {}).get('cpu_seconds', float('nan')), '.0f') + ')':>8}"
                         for p in PHASES)
        cell_cpu = sum(v.get("cpu_seconds", 0.0) for v in r["phases"].values())
        print(f"{r['method'] + ' seed ' + str(r['seed']):<18}{r['seconds']:>8.1f}{cell_cpu:>8.0f}{phases}")
    print("(phase columns: wall seconds, CPU seconds in brackets)")
    busy = busy_time(rows)
    print(f"\njob wall {wall:.1f} s, CPU {cpu:.0f} s; cells busy {busy:.1f} s, outside cells {wall - busy:.1f} s")
    print(f"reference workload {reference:.2f} s (before {ref_before:.2f}, after {ref_after:.2f}); "
          f"job / reference {wall / reference:.1f}")
    print(f"target: job <= 300 s wall on a quiet 2-core machine: {'met' if wall <= 300 else 'NOT met'}")


if __name__ == "__main__":
    main()
