"""QCS / DCS cost: inference latency against the base network, and the cost of one training step.

Inference. QCS and DCS keep only the base branch at test time (the paper's claim: "no increase in
inference time"). Side by side, with the same backbone and the same weights initialisation:
  base  - the IR50/small + tokens + ViT network alone (``connection='off'``: no cross module built);
  qcs   - the network as ``QCS.fit`` leaves it (cross modules built for training, then dropped),
          called through the same ``logits`` hook ``predict_proba`` uses.
Both run in eval mode under ``torch.no_grad``, alternating, median of ``--repeats`` timings of
``--iters`` forward passes. Target: qcs / base <= 1.05.

Training. One optimiser step (SAM around Adam: two forward / backward passes) on B anchors:
  base  - cross-entropy of the base head on the B anchors;
  dcs   - B pairs (2B images), 4 heads;  qcs - B quadruplets (4B images), 8 heads.
The ratio qcs / base is the price of the quadruplet training (about 4x the images, plus the cross path).

    python benchmarks/perf/qcs_inference.py [--config quick|paper] [--batch 1 64] [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

import fer_bench_methods.qcs as Q
from fer_bench.train import SAM

CONFIGS = {
    # the quick profile's network (qcs_small, 48 px, C = 64) and the paper's (IR-50 3 stages, 224 -> 112 px, C = 768)
    "quick": dict(Q.QUICK),
    "paper": {**Q.PAPER, "epochs": 1, "batch_size": 24},
}


def network(name: str, config: dict, connection: str, num_classes: int = 7, seed: int = 0) -> torch.nn.Module:
    method = Q.QCS(**{**config, "connection": connection, "device": "cpu"}) if name == "qcs" else \
        Q.DCS(**{**config, "connection": connection, "device": "cpu"})
    torch.manual_seed(seed)
    return method.build(num_classes)


def strip(net: torch.nn.Module) -> torch.nn.Module:
    """What ``QCS._fit`` does after training: drop the cross modules."""
    for part in Q._CROSS_PARTS:
        if hasattr(net, part):
            delattr(net, part)
    net.connection = "off"
    return net


@torch.no_grad()
def time_forward(net: torch.nn.Module, x: torch.Tensor, iters: int) -> float:
    net.eval()
    net(x)                                                             # warm-up
    start = time.perf_counter()
    for _ in range(iters):
        net(x)
    return (time.perf_counter() - start) / iters / len(x) * 1e3       # ms per image


def inference(config: dict, batch: int, iters: int, repeats: int) -> dict:
    size = config["image_size"]
    base = network("qcs", config, "off")
    qcs = strip(network("qcs", config, "vit"))
    x = torch.randn(batch, 3, size, size)
    times = {"base": [], "qcs": []}
    for _ in range(repeats):
        times["base"].append(time_forward(base, x, iters))
        times["qcs"].append(time_forward(qcs, x, iters))
    med = {k: statistics.median(v) for k, v in times.items()}
    params = {k: sum(p.numel() for p in n.parameters()) for k, n in (("base", base), ("qcs", qcs))}
    return {"batch": batch, "base_ms_per_image": med["base"], "qcs_ms_per_image": med["qcs"],
            "ratio": med["qcs"] / med["base"], "base_params": params["base"], "qcs_inference_params": params["qcs"]}


def train_step_seconds(kind: str, config: dict, batch: int, repeats: int) -> tuple[float, int]:
    size = config["image_size"]
    net = network("dcs" if kind == "dcs" else "qcs", config, "off" if kind == "base" else "vit")
    net.train()
    k = {"base": 1, "dcs": 2, "qcs": 4}[kind]
    xs = [torch.randn(batch, 3, size, size) for _ in range(k)]
    ys = [torch.randint(0, 7, (batch,)) for _ in range(k)]
    opt = SAM(net.parameters(), torch.optim.Adam, rho=0.05, lr=1e-5)

    def loss() -> torch.Tensor:
        base, cross = net.train_forward(xs)
        heads = list(zip(base, ys)) + list(zip(cross, ys))
        return sum(torch.nn.functional.cross_entropy(l, y) for l, y in heads) / len(heads)

    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        opt.zero_grad()
        loss().backward()
        opt.first_step()
        opt.zero_grad()
        loss().backward()
        opt.second_step()
        if i:                                                          # the first step warms up
            times.append(time.perf_counter() - start)
    return statistics.median(times), sum(p.numel() for p in net.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="quick")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--train-batch", type=int, default=None, help="anchors per train step (default: the profile's)")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = CONFIGS[args.config]
    report = {"config": args.config, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "machine": platform.processor() or platform.machine(), "inference": [], "train": {}}
    for batch in args.batch:
        row = inference(config, batch, args.iters, args.repeats)
        report["inference"].append(row)
        print(f"inference batch {batch}: base {row['base_ms_per_image']:.3f} ms/img, qcs {row['qcs_ms_per_image']:.3f} "
              f"ms/img, ratio {row['ratio']:.3f} (params {row['base_params']} vs {row['qcs_inference_params']})")
    tb = args.train_batch or config["batch_size"]
    steps = {kind: train_step_seconds(kind, config, tb, max(2, args.repeats // 2)) for kind in ("base", "dcs", "qcs")}
    for kind, (sec, n) in steps.items():
        report["train"][kind] = {"seconds_per_step": sec, "train_params": n}
        print(f"train step ({tb} anchors, SAM+Adam) {kind}: {sec:.3f} s, {n} parameters")
    report["train"]["ratio_qcs_base"] = steps["qcs"][0] / steps["base"][0]
    report["train"]["ratio_dcs_base"] = steps["dcs"][0] / steps["base"][0]
    print(f"train step ratio qcs/base {report['train']['ratio_qcs_base']:.2f}, dcs/base {report['train']['ratio_dcs_base']:.2f}")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
