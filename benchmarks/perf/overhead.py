"""Harness overhead: ``baseline`` trained through fer-bench vs the same model in a minimal PyTorch loop.

Both train the same network (smallcnn + linear head, the same initial weights), on the same uint8
tensors, with the same optimizer, batch size, batch order and number of steps; augmentation is off
in both so that the ratio measures the harness alone (parameter checks, seeded generators, batch
assembly, the NaN guard, progress, per-epoch checkpoints). Runs alternate harness / minimal and the
median of each is compared. Target: harness / minimal <= 1.10.

    python benchmarks/perf/overhead.py [--n 4096 --size 48 --epochs 3 --repeats 3 --checkpoint]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from fer_bench.data import FERDataset
from fer_bench.method import IMAGENET_MEAN, IMAGENET_STD
from fer_bench.registry import get_method
from fer_bench.train import epoch_generator


def make_data(n: int, size: int, classes: int = 7) -> FERDataset:
    rng = np.random.default_rng(0)
    return FERDataset(images=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
                      labels=rng.integers(0, classes, n), classes=tuple(range(classes)), name="random",
                      split="train", fingerprint="random")


def harness(data: FERDataset, params: dict, checkpoint: bool) -> float:
    method = get_method("baseline")(**params)
    with tempfile.TemporaryDirectory() as tmp:
        if checkpoint:
            method.workdir = tmp
        start = time.perf_counter()
        method.fit(data)
        return time.perf_counter() - start


def minimal(data: FERDataset, params: dict) -> float:
    """The loop a researcher would write by hand: the same work, nothing else."""
    start = time.perf_counter()
    template = get_method("baseline")(**params)
    torch.manual_seed(params["seed"])
    model = template.build(len(data.classes))
    optimizer = torch.optim.Adam(model.parameters(), lr=params["lr"])
    x_all = torch.from_numpy(data.images).permute(0, 3, 1, 2).contiguous()  # (N,3,H,W) uint8, size == image_size
    y_all = torch.from_numpy(data.labels)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    model.train()
    for epoch in range(params["epochs"]):
        order = torch.randperm(len(data), generator=epoch_generator(params["seed"], epoch))
        for i in range(0, len(order), params["batch_size"]):
            idx = order[i:i + params["batch_size"]]
            x = (x_all[idx].float() / 255.0 - mean) / std
            loss = F.cross_entropy(model(x), y_all[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--checkpoint", action="store_true", help="let the harness write its per-epoch checkpoints")
    args = parser.parse_args()
    data = make_data(args.n, args.size)
    params = get_method("baseline").resolve_params("quick", overrides={
        "epochs": args.epochs, "image_size": args.size, "augment": "none", "scheduler": "none", "lr": 1e-3,
        "device": "cpu", "amp": False})
    ours, theirs = [], []
    harness(data, params, False)  # warm-up (thread pools, allocator)
    for _ in range(args.repeats):
        ours.append(harness(data, params, args.checkpoint))
        theirs.append(minimal(data, params))
    h, m = statistics.median(ours), statistics.median(theirs)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, N={args.n}, {args.size}px, "
          f"{args.epochs} epochs, batch {params['batch_size']}, checkpoints {'on' if args.checkpoint else 'off'}")
    print(f"harness  median {h:7.2f} s   runs {', '.join(f'{t:.2f}' for t in ours)}")
    print(f"minimal  median {m:7.2f} s   runs {', '.join(f'{t:.2f}' for t in theirs)}")
    print(f"ratio harness/minimal = {h / m:.3f} (target <= 1.10)")


if __name__ == "__main__":
    main()
