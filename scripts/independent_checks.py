"""Independent checks behind the #16 floor findings: plain PyTorch loops, written apart from fer-bench's
trainer, samplers, heads and classifiers, on the same embedded dataset and the same shared budget
(550 steps of 128 images = 10 epochs of the 7,000 training images).

    python scripts/independent_checks.py siamese --init torch     # 2-D contrastive net, PyTorch's fc init
    python scripts/independent_checks.py siamese --init xavier    # the same with the paper's Xavier init
    python scripts/independent_checks.py siamese --trunk-weights synthetic-faces   # trunk from the shipped weights
    python scripts/independent_checks.py vit --stem linear        # ViT, linear projection of 16 px patches
    python scripts/independent_checks.py vit --stem conv          # the same ViT with a stride-2 conv stem
    python scripts/independent_checks.py qcs_base --lr 2e-4       # QCS's base network alone, cross-entropy
    python scripts/independent_checks.py sgm --trunk-weights synthetic-faces   # SGM loss, 18 images per class
    python scripts/independent_checks.py dgms --trunk-weights synthetic-faces  # SGM, then EM sub-classes (3 levels)
    python scripts/independent_checks.py paca_static --trunk-weights synthetic-faces   # static cluster tokens
    python scripts/independent_checks.py siamese --trunk-weights synthetic-faces --lr 1.25e-3 --margin 0.29 \
        --weight-decay 1e-3 --freeze-epochs 2                    # the quick profile's values from that trunk
    python scripts/independent_checks.py siamese ... --label-noise 0.3   # 30 % symmetric noise on training labels

Only the data comes from fer-bench (``load_dataset``), for ``sgm`` and ``dgms`` the registry's ``smallcnn``
trunk (with a linear 64-d head written here; ``dgms`` splits classes with scikit-learn's ``GaussianMixture``
called here), for ``paca_static`` the frozen patch-embedding network and the ViT's conv stem (as modules, with
their shipped weights; the patch cutting, the per-image scikit-learn k-means, the centroids and the
transformer with patch-to-cluster attention are written here) and for ``qcs_base`` the network: QCS's base branch
(the quick trunk and ViT, no cross-similarity modules, built by the qcs plugin with ``connection='off'``, the
module its parity tests pin to the official code), trained here with plain Adam and cross-entropy, no SAM. Each prints test accuracy and mean class accuracy along
the way and the process CPU seconds. One torch thread; about 1-2 CPU-minutes (siamese) and 4-5 (vit) here.
"""
from __future__ import annotations

import argparse
import copy
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MEAN = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
STD = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)


def prepare(images: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> normalised float (N, 3, size, size)."""
    x = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float()
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (x.round().clamp(0, 255) / 255.0 - MEAN) / STD


def symmetric_noise(y: torch.Tensor, classes: int, rate: float, seed: int) -> torch.Tensor:
    """round(rate * N) labels, chosen at random, each replaced by one of the other classes drawn uniformly."""
    rng = np.random.default_rng([seed, 17])
    out = y.numpy().copy()
    flip = rng.choice(len(out), size=round(rate * len(out)), replace=False)
    out[flip] = (out[flip] + rng.integers(1, classes, size=len(flip))) % classes      # never the true class
    print(f"label noise: {len(flip)} of {len(out)} training labels replaced", flush=True)
    return torch.from_numpy(out).long()


def scores(y: torch.Tensor, pred: torch.Tensor) -> tuple[float, float]:
    acc = float((pred == y).float().mean())
    mca = float(np.mean([float((pred[y == c] == c).float().mean()) for c in torch.unique(y)]))
    return acc, mca


def siamese_net(init: str, trunk_weights: str | None = None) -> nn.Module:
    """small3 with BatchNorm (conv5/2-pool, conv5-pool, conv3) -> fc 512 -> 128 -> 2."""
    def conv(c_in, c_out, k, stride=1):
        return [nn.Conv2d(c_in, c_out, k, stride, k // 2), nn.BatchNorm2d(c_out), nn.ReLU()]
    trunk = nn.Sequential(*conv(3, 32, 5, 2), nn.MaxPool2d(3, 2), *conv(32, 64, 5), nn.MaxPool2d(3, 2), *conv(64, 96, 3))
    if trunk_weights == "synthetic-faces":        # the shipped file (same layer indices)
        from fer_bench.models.pretrained import synthetic_faces_state
        trunk.load_state_dict(synthetic_faces_state("siamese_small3_w32_bn")[0])
    elif trunk_weights:                           # a state_dict file of the same trunk
        trunk.load_state_dict(torch.load(trunk_weights, weights_only=True))
    width = trunk(torch.zeros(1, 3, 48, 48)).numel()
    net = nn.Sequential(trunk, nn.Flatten(), nn.Linear(width, 512), nn.ReLU(), nn.Linear(512, 128), nn.ReLU(),
                        nn.Linear(128, 2))
    if init == "xavier":
        for m in net:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
    return net


def hadsell_all_pairs(z: torch.Tensor, y: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """1/2 D^2 for same-class pairs, 1/2 max(0, m - D)^2 otherwise, mean over the B(B-1)/2 pairs."""
    d2 = torch.cdist(z, z).pow(2)
    same = y[:, None] == y[None, :]
    per = torch.where(same, d2, F.relu(margin - (d2 + 1e-12).sqrt()).pow(2))
    upper = torch.ones_like(same).triu(1)
    return 0.5 * per[upper].mean()


class Stem(nn.Module):
    """log2(patch) x (3x3 stride-2 conv, BatchNorm, ReLU), widths 16, 32, ... up to dim, then a 1x1 conv."""

    def __init__(self, patch: int, dim: int):
        super().__init__()
        layers, c_in, width = [], 3, 16
        for _ in range(int(math.log2(patch))):
            c_out = min(width, dim)
            layers += [nn.Conv2d(c_in, c_out, 3, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
            c_in, width = c_out, width * 2
        self.net = nn.Sequential(*layers, nn.Conv2d(c_in, dim, 1))

    def forward(self, x):
        return self.net(x)


class PlainViT(nn.Module):
    """Pre-norm transformer encoder over patch tokens, mean of the final normalised tokens, linear head."""

    def __init__(self, stem: str, size=96, patch=16, dim=64, depth=6, heads=4, dropout=0.1, classes=7):
        super().__init__()
        self.stem = Stem(patch, dim) if stem == "conv" else nn.Conv2d(3, dim, patch, patch)  # conv k=s=p: linear
        self.pos = nn.Parameter(torch.randn(1, (size // patch) ** 2, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, classes)

    def forward(self, x):
        t = self.stem(x).flatten(2).transpose(1, 2) + self.pos                       # (B, N, C)
        return self.head(self.norm(self.encoder(t)).mean(1))


class SmallcnnEmbedding(nn.Module):
    """fer-bench's ``smallcnn`` trunk (random or its shipped face-pretrained weights) -> pooled -> linear 64-d."""

    def __init__(self, trunk_weights: str | None):
        super().__init__()
        from fer_bench.models import build_backbone
        self.trunk = build_backbone("smallcnn", pretrained=trunk_weights, in_size=48)
        self.head = nn.Linear(self.trunk.out_dim, 64)

    def forward(self, x):
        return self.head(self.trunk(x)[1])


def sgm_objective(z: torch.Tensor, y: torch.Tensor, sigma: float = 0.5, reg: float = 1e-3) -> torch.Tensor:
    """SGMLoss Eq. 4 as read from the paper: batch class means mu_c, q_ic = softmax_c(-||z_i - mu_c||^2 / 2 sigma^2),
    mean_i sum_c (q_ic - [y_i = c])^2 + reg * mean_i ||z_i||."""
    classes = torch.unique(y)
    mu = torch.stack([z[y == c].mean(0) for c in classes])
    q = torch.softmax(-torch.cdist(z, mu).pow(2) / (2 * sigma ** 2), dim=1)
    target = (y[:, None] == classes[None, :]).float()
    return (q - target).pow(2).sum(1).mean() + reg * z.norm(dim=1).mean()


def rescale_head(net: SmallcnnEmbedding, x: torch.Tensor, target: float, sigma: float = 0.5) -> None:
    """Scale the linear head so that the mean ||z_i - z_j||^2 / (2 sigma^2) over ``x`` is ``target`` (distances
    are linear in the head); measured in training mode with BatchNorm's running statistics put back."""
    saved = copy.deepcopy(net.state_dict())
    with torch.no_grad():
        z = net.train()(x)
        net.load_state_dict(saved)
        factor = math.sqrt(target / float(torch.cdist(z, z).pow(2).mean() / (2 * sigma ** 2)))
        net.head.weight.mul_(factor)
        net.head.bias.mul_(factor)


def split_subclasses(z: np.ndarray, classes: np.ndarray, level: int, mc: int = 10, seed: int = 0) -> np.ndarray:
    """DGMS's step (Algorithm 2): each class's embeddings split by EM (full covariance) into min(level, n // mc)
    components; sub-class ids numbered class after class. Returns sub-class labels (N,)."""
    from sklearn.mixture import GaussianMixture
    out, offset = np.zeros(len(classes), dtype=np.int64), 0
    for c in np.unique(classes):
        rows = np.flatnonzero(classes == c)
        m = max(1, min(level, len(rows) // mc))
        parts = (GaussianMixture(m, covariance_type="full", reg_covar=1e-3, random_state=seed)
                 .fit_predict(z[rows].astype(np.float64)) if m > 1 else np.zeros(len(rows), dtype=np.int64))
        parts = np.unique(parts, return_inverse=True)[1].reshape(-1)
        out[rows] = parts + offset
        offset += int(parts.max()) + 1
    return out


def static_cluster_tokens(x: torch.Tensor, k: int = 4, patch: int = 16, seed: int = 0) -> torch.Tensor:
    """PaCa's static cluster tokens: normalised images (N, 3, 96, 96) -> the 36 patches of 16 px embedded by the
    frozen, shipped ``smallcnn_tiny`` (pooled 64-d), clustered per image by scikit-learn's k-means (k-means++,
    one init) -> the k centroids of each image's patch embeddings (N, k, 64)."""
    from sklearn.cluster import KMeans
    from fer_bench.models import build_backbone
    net = build_backbone("smallcnn_tiny", pretrained="synthetic-faces", in_size=patch).eval()
    g = x.shape[-1] // patch
    out = []
    with torch.no_grad():
        for a in range(0, len(x), 256):
            b = x[a:a + 256]
            cells = b.unfold(2, patch, patch).unfold(3, patch, patch)            # (b, 3, g, g, p, p)
            cells = cells.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, patch, patch)  # row-major grid order
            emb = net(cells)[1].view(len(b), g * g, -1).numpy()                  # (b, 36, 64)
            for e in emb:
                lab = KMeans(k, n_init=1, random_state=seed).fit_predict(e.astype(np.float32))
                out.append(np.stack([e[lab == j].mean(0) for j in range(k)]))
    return torch.from_numpy(np.stack(out)).float()


class StaticPaCa(nn.Module):
    """Conv-stem patch tokens + class token, depth x pre-norm blocks in which every token queries only the class
    token and the k frozen centroids (LayerNorm'd once, mapped to the token width by each block), MLP 4x;
    the mean of the final normalised patch tokens -> linear head."""

    def __init__(self, classes: int, dim=64, depth=6, heads=4, dropout=0.1, tokens=36, centroid_dim=64):
        super().__init__()
        from fer_bench.models.pretrained import load_trunk
        from fer_bench_methods.paca.blocks import ConvStem
        self.stem = ConvStem(16, dim)
        load_trunk(self.stem, "synthetic-faces", f"paca_convstem_p16_d{dim}")
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, 1 + tokens, dim) * 0.02)
        self.centroid_norm = nn.LayerNorm(centroid_dim)
        self.blocks = nn.ModuleList(nn.ModuleDict({
            "norm1": nn.LayerNorm(dim), "to_dim": nn.Linear(centroid_dim, dim),
            "attn": nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True),
            "norm2": nn.LayerNorm(dim),
            "mlp": nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim)),
        }) for _ in range(depth))
        self.drop, self.norm, self.head = nn.Dropout(dropout), nn.LayerNorm(dim), nn.Linear(dim, classes)

    def forward(self, x, centroids):
        t = torch.cat([self.cls.expand(len(x), -1, -1), self.stem(x)], 1) + self.pos      # (B, 1+N, C)
        c = self.centroid_norm(centroids)
        for blk in self.blocks:
            h = blk["norm1"](t)
            kv = torch.cat([h[:, :1], blk["to_dim"](c)], 1)                               # (B, 1+k, C)
            t = t + self.drop(blk["attn"](h, kv, kv, need_weights=False)[0])
            t = t + self.drop(blk["mlp"](blk["norm2"](t)))
        return self.head(self.norm(t)[:, 1:].mean(1))


def qcs_base_network(classes: int, trunk_weights: str | None = None) -> nn.Module:
    """QCS's base branch at its quick profile (trunk qcs_small, 48 px, width 64, 4 heads), nothing else; the trunk
    from random init, or from ``trunk_weights`` ('synthetic-faces': fer-bench's shipped weights)."""
    from fer_bench.registry import get_method
    import fer_bench_methods.qcs  # noqa: F401  (registers qcs)
    cls = get_method("qcs")
    params = cls.resolve_params("quick", overrides={"connection": "off", "device": "cpu", "pretrained": trunk_weights})
    return cls(**params).build(classes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", choices=("siamese", "vit", "qcs_base", "sgm", "dgms", "paca_static"))
    ap.add_argument("--init", choices=("torch", "xavier"), default="torch", help="siamese: fc init")
    ap.add_argument("--trunk-weights", default=None,
                    help="siamese, sgm, dgms, qcs_base: start the trunk from 'synthetic-faces' (fer-bench's shipped "
                         "weights; default random init); siamese also a state_dict file (paca_static: always shipped)")
    ap.add_argument("--stem", choices=("linear", "conv"), default="linear", help="vit: patch embedding")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=550)
    ap.add_argument("--lr", type=float, default=None,
                    help="default: 3e-4 siamese, 1e-3 vit / sgm / dgms / paca_static, 2e-4 qcs_base")
    ap.add_argument("--weight-decay", type=float, default=0.0, help="Adam's L2 weight decay")
    ap.add_argument("--margin", type=float, default=1.0, help="siamese: contrastive margin")
    ap.add_argument("--freeze-epochs", type=int, default=0, help="siamese: epochs with the trunk frozen first")
    ap.add_argument("--init-spread", type=float, default=None,
                    help="sgm, dgms: rescale the linear head so that the mean d^2 / (2 sigma^2) over pairs of 512 "
                         "training embeddings is this at the start (default: PyTorch's init)")
    ap.add_argument("--label-noise", type=float, default=0.0,
                    help="replace this fraction of the training labels by a uniformly drawn other class (drawn "
                         "here with numpy, seed --seed; test labels stay clean)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from fer_bench.data import load_dataset
    size = 96 if args.model in ("vit", "paca_static") else 48
    train, test = (load_dataset("synthetic", split, workers=1) for split in ("train", "test"))
    x_train, y_train = prepare(train.images, size), torch.from_numpy(train.labels).long()
    x_test, y_test = prepare(test.images, size), torch.from_numpy(test.labels).long()
    classes = len(train.classes)
    if args.label_noise:
        y_train = symmetric_noise(y_train, classes, args.label_noise, args.seed)
    torch.manual_seed(args.seed)
    if args.model == "paca_static":
        c_train, c_test = static_cluster_tokens(x_train), static_cluster_tokens(x_test)
        print(f"static cluster tokens of {len(x_train) + len(x_test)} images: {time.process_time():.0f} CPU-s",
              flush=True)
    if args.model == "siamese":
        net = siamese_net(args.init, args.trunk_weights)
    elif args.model in ("sgm", "dgms"):
        net = SmallcnnEmbedding(args.trunk_weights)
        if args.init_spread:
            rescale_head(net, x_train[torch.randperm(len(x_train))[:512]], args.init_spread)
    elif args.model == "vit":
        net = PlainViT(args.stem, classes=classes)
    elif args.model == "paca_static":
        net = StaticPaCa(classes)
    else:
        net = qcs_base_network(classes, args.trunk_weights)
    lr = args.lr or {"siamese": 3e-4, "qcs_base": 2e-4}.get(args.model, 1e-3)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=args.weight_decay)
    order = torch.Generator().manual_seed(args.seed)
    labels = y_train.clone()                             # dgms: sub-class labels from its second level on
    forward = (lambda idx: net(x_train[idx], c_train[idx])) if args.model == "paca_static" else (
        lambda idx: net(x_train[idx]))

    def batched(fn, x):
        with torch.no_grad():
            return torch.cat([fn(x[i:i + 512]) for i in range(0, len(x), 512)])

    def evaluate() -> tuple[float, float]:
        net.eval()
        if args.model == "siamese":                      # nearest training-class centroid in the 2-D space
            z_train, z_test = batched(net, x_train), batched(net, x_test)
            centroids = torch.stack([z_train[y_train == c].mean(0) for c in range(classes)])
            pred = torch.cdist(z_test, centroids).argmin(1)
        elif args.model in ("sgm", "dgms"):              # scikit-learn's 11-nearest-neighbour vote over classes
            from sklearn.neighbors import KNeighborsClassifier
            knn = KNeighborsClassifier(11).fit(batched(net, x_train).numpy(), y_train.numpy())
            pred = torch.from_numpy(knn.predict(batched(net, x_test).numpy()))
        elif args.model == "paca_static":
            with torch.no_grad():
                pred = torch.cat([net(x_test[i:i + 512], c_test[i:i + 512]) for i in range(0, len(x_test), 512)])
            pred = pred.argmax(1)
        else:
            pred = batched(net, x_test).argmax(1)
        net.train()
        return scores(y_test, pred)

    start, per_epoch = time.process_time(), len(y_train) // 128
    level_starts = {round(level * 10 / 3) * per_epoch: level + 1 for level in (1, 2)}   # dgms: epochs 3 and 7 of 10
    trunk = net[0] if args.model == "siamese" else None
    for step in range(args.steps):
        if trunk is not None:                            # siamese's two stages: trunk frozen, then everything
            trunk.requires_grad_(step >= args.freeze_epochs * per_epoch)
        if args.model == "dgms" and step in level_starts:
            net.eval()
            z = batched(net, x_train).numpy()
            net.train()
            labels = torch.from_numpy(split_subclasses(z, y_train.numpy(), level_starts[step], seed=args.seed))
            print(f"dgms level {level_starts[step]} at step {step}: {int(labels.max()) + 1} sub-classes", flush=True)
        if args.model in ("sgm", "dgms"):                # n images of every (sub-)class, n = 128 // labels
            if step == 0 or step in level_starts:
                pools = [torch.nonzero(labels == c).flatten() for c in range(int(labels.max()) + 1)]
            n = max(2, 128 // len(pools))
            idx = torch.cat([pool[torch.randint(len(pool), (n,), generator=order)] for pool in pools])
        else:
            if step % per_epoch == 0:
                perm = torch.randperm(len(y_train), generator=order)
            idx = perm[(step % per_epoch) * 128:(step % per_epoch + 1) * 128]
        out = forward(idx)
        if args.model == "siamese":
            loss = hadsell_all_pairs(out, y_train[idx], args.margin)
        elif args.model in ("sgm", "dgms"):
            loss = sgm_objective(out, labels[idx])
        else:
            loss = F.cross_entropy(out, y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % 110 == 0 or step + 1 == args.steps:
            acc, mca = evaluate()
            print(f"{args.model} step {step + 1}: loss {loss.item():.4f}, test accuracy {acc:.3f}, "
                  f"mean class accuracy {mca:.3f}, {time.process_time() - start:.0f} CPU-s", flush=True)

if __name__ == "__main__":
    main()
