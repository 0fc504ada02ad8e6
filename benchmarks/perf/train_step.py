"""Where a training step of the main job's methods spends its time, and what channels-last memory layout buys.

For each method (default: the main job's ``qcs,sgm,sceald``) at its ``quick`` profile, on random images of the
profile's size and batch (QCS: 128 quadruplets, 512 images), one torch thread, the script times one optimiser
step (the method's own ``loss``, backward, Adam) with the network and inputs in the default contiguous layout and
in channels-last, alternating, median of ``--repeats``. For QCS it also splits the step into its parts (forward +
backward of the trunk and token projection, of the base ViT, of the cross-similarity path).

Channels-last is not a fer-bench option: it changes the convolution kernels' summation order, so a cell's numbers
would change with it; it would have to become a named, recorded option (and part of the cell id) to be used.

    python benchmarks/perf/train_step.py [--methods qcs,sgm,sceald] [--repeats 3]

Recorded on the 2-core development VM (AMD EPYC, no GPU, torch 2.14.1), 2026-12-04, load average 0.42, nothing
else running:

    qcs: batch of 128 anchors; fetch + augment 52 ms; step: contiguous 913 ms, channels-last 787 ms, ratio 1.16
    sgm: batch of 126 anchors; fetch + augment 9 ms; step: contiguous 159 ms, channels-last 99 ms, ratio 1.60
    sceald: batch of 128 anchors; fetch + augment 13 ms; step: contiguous 160 ms, channels-last 105 ms, ratio 1.52
    qcs parts (fwd + bwd, 4 branches): trunk and tokens 442 ms, + base ViT 712 ms, + cross path 945 ms

The QCS step is about 47 % trunk (qcs_small at 48 px on 512 images; its 16-channel 24x24 convolutions are the
slowest kernels, mkldnn being inefficient at so few channels), 28 % base ViT and 25 % cross path. Channels-last
pays 1.5-1.6x on the smallcnn methods and 1.16x on QCS. The main job's wall time is one QCS cell (550 such steps,
about 500 of its 587 train CPU-seconds), so channels-last alone would take it from about 610 s to about 540 s;
issue #18's 5 minutes needs the QCS step at about half its cost. The smallcnn methods' cells spend as much again
outside their steps (sgm 184 train CPU-s for 550 x 159 ms = 87 s of steps): their learning-curve evaluations
embed the 7,000 training images as the kNN gallery at each of the 10 points; sceald also trains its autoencoder.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from fer_bench.registry import get_method


def _method(name: str, train):
    """The method at its quick profile, ready to step: training data loaded, network built (``start_fit``)."""
    cls = get_method(name)
    method = cls(**cls.resolve_params("quick", overrides={"device": "cpu"}))
    method.start_fit(train)
    return method


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) or (B, K, 3, S, S) with channels stored last (each branch of a K-tuple a channels-last view)."""
    if x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)


def _batch(method, train) -> tuple[dict[str, torch.Tensor], float]:
    """One batch from the method's own sampler and ``make_batch`` (fetch and augmentation), and its seconds."""
    g = torch.Generator().manual_seed(0)
    index = next(iter(method.sampler(train, g)))
    start = time.perf_counter()
    batch = method.make_batch(index, g)
    return batch, time.perf_counter() - start


def _step_seconds(method, batch, optimizer) -> float:
    start = time.perf_counter()
    loss = method.loss(batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def compare_layouts(name: str, train, repeats: int) -> None:
    method = _method(name, train)
    optimizer = torch.optim.Adam(method.model_.parameters(), 1e-4)
    batch, data_seconds = _batch(method, train)
    layouts = {"contiguous": torch.contiguous_format, "channels-last": torch.channels_last}
    batches = {"contiguous": batch, "channels-last": {**batch, "x": _channels_last(batch["x"])}}
    times: dict[str, list[float]] = {k: [] for k in layouts}
    for layout in layouts:                                                   # warm-up
        method.model_.to(memory_format=layouts[layout])
        _step_seconds(method, batches[layout], optimizer)
    for _ in range(repeats):
        for layout in layouts:
            method.model_.to(memory_format=layouts[layout])
            times[layout].append(_step_seconds(method, batches[layout], optimizer))
    a, b = (statistics.median(times[k]) for k in layouts)
    print(f"{name}: batch of {len(batch['index'])} anchors; fetch + augment {data_seconds * 1e3:.0f} ms; step: "
          f"contiguous {a * 1e3:.0f} ms, channels-last {b * 1e3:.0f} ms, ratio {a / b:.2f}", flush=True)


def qcs_parts(train, repeats: int) -> None:
    method = _method("qcs", train)
    net = method.model_
    xs = _batch(method, train)[0]["x"].unbind(1)

    def timed(fn) -> float:
        fn()
        out = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
        return statistics.median(out) * 1e3

    trunk = timed(lambda: sum(net.tokens(x).mean() for x in xs).backward())
    branches = timed(lambda: sum(net.branch(x)[0].mean() for x in xs).backward())

    def full():
        base, cross = net.train_forward(xs)
        sum(v.mean() for v in base + cross).backward()
    print(f"qcs parts (fwd + bwd, 4 branches): trunk and tokens {trunk:.0f} ms, + base ViT {branches:.0f} ms, "
          f"+ cross path {timed(full):.0f} ms", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="qcs,sgm,sceald")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"load average {os.getloadavg()[0]:.2f}, torch {torch.__version__}, 1 thread", flush=True)
    from fer_bench.data import load_dataset
    train = load_dataset("synthetic", "train")
    for name in args.methods.split(","):
        compare_layouts(name, train, args.repeats)
    if "qcs" in args.methods.split(","):
        qcs_parts(train, args.repeats)


if __name__ == "__main__":
    main()
