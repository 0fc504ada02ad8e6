"""Cost figures of a fitted method (DESIGN.md section 5): parameter count, peak memory, inference time."""
from __future__ import annotations

import resource
import sys
import time
from typing import Callable

import numpy as np
import torch

from fer_bench.metrics import _positive_int


def parameter_count(module: torch.nn.Module) -> dict[str, int]:
    """{"total": all parameters, "trainable": those with requires_grad} (shared ones once)."""
    params = list(module.parameters())
    return {"total": sum(p.numel() for p in params),
            "trainable": sum(p.numel() for p in params if p.requires_grad)}


def peak_memory_bytes(device: str | torch.device = "cpu") -> int:
    """Peak memory so far: process RSS peak on CPU, ``max_memory_allocated`` on CUDA."""
    dev = torch.device(device)
    if dev.type == "cpu":
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB
    elif dev.type == "cuda":
        return int(torch.cuda.max_memory_allocated(dev))
    else:
        raise ValueError(f"The 'device' parameter of peak_memory_bytes must be a cpu or cuda "
                         f"device. Got {device!r} instead.")


def inference_ms_per_image(fn: Callable[[torch.Tensor], object], images: torch.Tensor,
                           batch_size: int, repeats: int = 3, warmup: int = 1) -> float:
    """Median over ``repeats`` passes of the time ``fn`` takes per image, in milliseconds.

    One pass calls ``fn`` on consecutive batches of ``images`` (the last may be smaller), under
    ``torch.no_grad``; ``warmup`` untimed calls on the first batch come first. CUDA work is
    synchronised before the clock is read.
    """
    func = "inference_ms_per_image"
    batch_size = _positive_int(batch_size, "batch_size", func)
    repeats = _positive_int(repeats, "repeats", func)
    n = len(images)
    if n == 0:
        raise ValueError(f"The 'images' parameter of {func} must not be empty. Got 0 images instead.")
    sync = images.is_cuda if isinstance(images, torch.Tensor) else False
    times = []
    with torch.no_grad():
        for _ in range(warmup):
            fn(images[:batch_size])
        for _ in range(repeats):
            if sync:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for start in range(0, n, batch_size):
                fn(images[start:start + batch_size])
            if sync:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    return float(np.median(times) / n * 1000.0)
