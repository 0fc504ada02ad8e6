"""Regenerate fer-bench's face-pretrained trunks (``pretrained="synthetic-faces"``), deterministically on CPU.

The analogue of the MS-Celeb-1M / ImageNet initialisation every seed paper fine-tunes from: each trunk a
quick profile uses learns a face task with no expression information, on synthetic faces rendered by the
embedded generator from an identity space disjoint from every benchmark split
(``fer_bench.data.synthetic.pretraining_faces``; expressions and nuisances are drawn as in the dataset and
then discarded). Two tasks are implemented:

- ``identity`` (the MS-Celeb recipe, the shipped one): a linear head on the trunk's pooled features,
  cross-entropy over the pretraining identities, light augmentation (flip, crop).
- ``simclr`` (self-supervised, uses no label at all): two augmented views per image, a 2-layer projection
  head and the NT-Xent loss (Chen et al., 2020), temperature 0.2.

Each trunk is trained in its own process on one thread (CPU results depend on the thread count in the last
bits), from ``torch.manual_seed(SEED)``, so the bytes of every file are a function of this script.
``python scripts/pretrain_trunks.py`` writes ``fer_bench/models/weights/<trunk>.pt`` and
``manifest.json`` (file, sha256, recipe, pretraining figures); ``--out DIR`` writes elsewhere (the slow
test regenerates one trunk and compares hashes); ``--task simclr`` and ``--trunks`` select.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SEED = 0
RECIPE: dict[str, Any] = {
    "faces": {"n_identities": 1000, "per_identity": 16, "seed": SEED, "size": 64},   # dataset defaults otherwise
    "steps": 1500, "batch_size": 128, "optimizer": "adam", "lr": 2e-3, "weight_decay": 5e-4, "scheduler": "cosine",
    "identity": {"augment": "light"},
    "simclr": {"augment": "standard", "temperature": 0.2, "projection": 128},
    "threads": 1,
}


def _pooled(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Features (B, D) of a trunk whose output is a map (B, C, h, w) or tokens (B, N, C)."""
    def features(x: torch.Tensor) -> torch.Tensor:
        out = fn(x)
        return out.mean(dim=(2, 3)) if out.dim() == 4 else out.mean(dim=1)
    return features


def trunk_specs() -> dict[str, dict[str, Any]]:
    """trunk key -> {"build": () -> module, "features": (module, x) -> (B, D), "size": input px}.

    The keys are what the methods ask ``fer_bench.models.pretrained`` for; every trunk of a quick profile.
    """
    from fer_bench.models import build_backbone
    from fer_bench_methods.paca import ConvStem
    from fer_bench_methods.siamese import small3

    def backbone(name: str, size: int) -> dict[str, Any]:
        return {"build": lambda: build_backbone(name, in_size=size), "features": lambda m, x: m(x)[1], "size": size}

    return {
        "smallcnn": backbone("smallcnn", 48),            # baseline, sgm, triplet, dgms, sceald (classifier and AE)
        "smallcnn_tiny": backbone("smallcnn_tiny", 48),  # paca's frozen patch-embedding network
        "qcs_small": backbone("qcs_small", 48),          # qcs, dcs
        "siamese_small3_w32_bn": {"build": lambda: small3(32, False, True),
                                  "features": lambda m, x: _pooled(m)(x), "size": 48},
        "paca_convstem_p16_d64": {"build": lambda: ConvStem(16, 64),     # paca, paca_learned, vit
                                  "features": lambda m, x: _pooled(m)(x), "size": 96},
    }


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent: each view's positive is the other view of its image, the other 2B - 2 are negatives."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)                       # (2B, d)
    sim = z @ z.T / temperature                                        # (2B, 2B)
    sim.fill_diagonal_(float("-inf"))
    b = len(z1)
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(b)])
    return F.cross_entropy(sim, target)


def pretrain(key: str, task: str = "identity", recipe: dict[str, Any] = RECIPE, log_every: int = 100) -> dict[str, Any]:
    """Train trunk ``key`` on ``task``; return {"state": trunk state_dict, "log": figures}."""
    from fer_bench.data.augment import BatchAugment
    from fer_bench.data.synthetic import pretraining_faces
    from fer_bench.models import IMAGENET_MEAN, IMAGENET_STD
    from fer_bench.models.backbones import resize_images

    torch.set_num_threads(recipe["threads"])
    spec = trunk_specs()[key]
    faces = pretraining_faces(**recipe["faces"])
    images = resize_images(faces.images, spec["size"])                # uint8 (N, 3, S, S), as the methods resize
    labels = torch.from_numpy(faces.identity)
    torch.manual_seed(SEED)
    trunk = spec["build"]()
    with torch.no_grad():
        dim = spec["features"](trunk.eval(), torch.zeros(2, 3, spec["size"], spec["size"])).shape[1]
    trunk.train()
    if task == "identity":
        head: nn.Module = nn.Linear(dim, recipe["faces"]["n_identities"])
    elif task == "simclr":
        p = recipe["simclr"]["projection"]
        head = nn.Sequential(nn.Linear(dim, p), nn.ReLU(inplace=True), nn.Linear(p, p))
    else:
        raise ValueError(f"Unknown pretraining task {task!r}; use 'identity' or 'simclr'.")
    params = list(trunk.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    steps = recipe["steps"]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    augment = BatchAugment.from_string(recipe[task]["augment"])
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    gen = torch.Generator().manual_seed(SEED)

    def view(idx: torch.Tensor) -> torch.Tensor:
        return (augment(images[idx].float().div_(255.0), gen) - mean) / std

    history, t0, order, pos = [], time.process_time(), torch.randperm(len(images), generator=gen), 0
    for step in range(steps):
        if pos + recipe["batch_size"] > len(order):
            order, pos = torch.randperm(len(images), generator=gen), 0
        idx = order[pos:pos + recipe["batch_size"]]
        pos += recipe["batch_size"]
        if task == "identity":
            logits = head(spec["features"](trunk, view(idx)))
            loss = F.cross_entropy(logits, labels[idx])
        else:
            z = head(spec["features"](trunk, torch.cat([view(idx), view(idx)])))
            loss = nt_xent(z[:len(idx)], z[len(idx):], recipe["simclr"]["temperature"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps - 1:
            history.append({"step": step, "loss": round(loss.item(), 4)})
            print(f"[{key}/{task}] step {step} loss {loss.item():.4f} ({time.process_time() - t0:.0f} CPU-s)", flush=True)
    state = {k: v.detach().clone().contiguous() for k, v in trunk.state_dict().items()}
    return {"state": state, "log": {"task": task, "history": history, "cpu_seconds": round(time.process_time() - t0, 1),
                                    "input_size": spec["size"], "feature_dim": int(dim),
                                    "parameters": int(sum(p.numel() for p in trunk.parameters()))}}


def _job(args: tuple[str, str, str]) -> tuple[str, dict[str, Any]]:
    key, task, out = args
    result = pretrain(key, task)
    path = Path(out) / f"{key}.pt"
    torch.save(result["state"], path)
    return key, result["log"]


def main(argv: list[str] | None = None) -> int:
    from fer_bench.models import pretrained as P

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trunks", default="all", help="comma-separated trunk keys (default: all)")
    parser.add_argument("--task", default="identity", choices=("identity", "simclr"))
    parser.add_argument("--out", default=str(P.WEIGHTS_DIR), help="folder for the .pt files and manifest.json")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="trunks trained at once (one thread each)")
    args = parser.parse_args(argv)
    specs = trunk_specs()
    keys = list(specs) if args.trunks == "all" else [k.strip() for k in args.trunks.split(",") if k.strip()]
    unknown = [k for k in keys if k not in specs]
    if unknown:
        parser.error(f"unknown trunk {unknown[0]!r}; choose from {', '.join(specs)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(min(args.jobs, len(keys)), maxtasksperchild=1) as pool:
        logs = dict(pool.map(_job, [(k, args.task, str(out)) for k in keys], chunksize=1))
    manifest_path = out / "manifest.json"
    old = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"trunks": {}}
    trunks = dict(old.get("trunks", {}))
    for key in keys:
        path = out / f"{key}.pt"
        trunks[key] = {"file": path.name, "sha256": P.sha256_of(path), "bytes": path.stat().st_size, **logs[key]}
    manifest = {"name": P.SYNTHETIC_FACES, "script": "scripts/pretrain_trunks.py", "recipe": RECIPE,
                "torch": torch.__version__, "trunks": dict(sorted(trunks.items()))}
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    print(f"wrote {len(keys)} trunk(s) to {out} in {time.time() - t0:.0f} s wall "
          f"(load average {os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
