"""The networks of the PaCa study (see :mod:`fer_bench_methods.paca`): patch-to-cluster attention, the
transformer block, PaCa-ViT's learned clustering head, the convolutional patch stem and the ViT around them."""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from fer_bench import clustering as PC


def assignment_pooling(assign: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard assignments (B, N) in 0..m-1 -> row-normalised pooling matrix (B, m, N) and valid mask (B, m)."""
    onehot = F.one_hot(assign.long(), m).float()                          # (B, N, m)
    counts = onehot.sum(1)                                                # (B, m)
    z = onehot.transpose(1, 2) / counts.clamp_min(1).unsqueeze(-1)       # (B, m, N), rows sum to 1 (or 0)
    return z, counts > 0


class PatchToClusterAttention(nn.Module):
    """Multi-head attention with queries from ``x`` (B, T, C) and keys / values from ``kv`` (B, M, C_kv).

    ``mask`` (B, M) bool marks the keys that exist (False: an empty cluster, never attended to).
    ``A = softmax(Q K^T / sqrt(d))`` over the M keys, then the output projection.
    """

    def __init__(self, dim: int, heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"The token width {dim} must be divisible by the number of heads {heads}.")
        self.heads, self.attn_drop = heads, attn_drop
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj, self.drop = nn.Linear(dim, dim), nn.Dropout(proj_drop)

    def split(self, t: torch.Tensor) -> torch.Tensor:
        b, n, c = t.shape
        return t.view(b, n, self.heads, c // self.heads).transpose(1, 2)  # (B, h, n, d)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Projected q (B, T, C), k and v (B, M, C), mask (B, M) -> (B, T, C)."""
        attn_mask = None if mask is None else mask[:, None, None, :]      # (B, 1, 1, M) broadcast over heads, queries
        out = F.scaled_dot_product_attention(self.split(q), self.split(k), self.split(v), attn_mask=attn_mask,
                                             dropout_p=self.attn_drop if self.training else 0.0)  # (B, h, T, d)
        b, _, t, _ = out.shape
        return self.drop(self.proj(out.transpose(1, 2).reshape(b, t, -1)))   # (B, T, C)

    def forward(self, x: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.attend(self.q(x), self.k(kv), self.v(kv), mask)


class Block(nn.Module):
    """Pre-norm transformer block whose attention keys / values are [class token] + cluster tokens.

    mode "none": the cluster tokens are the patch tokens (patch-to-patch); "pooled" / "learned": the
    pooling matrix z (B, M, N) pools the normalised patch tokens, then LayerNorm; "static": the cluster
    tokens are given centroids (B, M, D_e), projected by this block's own ``k_static`` / ``v_static``.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float, drop: float, mode: str, static_dim: int | None,
                 cluster_norm: bool):
        super().__init__()
        self.mode = mode
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = PatchToClusterAttention(dim, heads, attn_drop=drop, proj_drop=drop)
        self.cluster_norm = nn.LayerNorm(dim) if cluster_norm and mode in ("pooled", "learned") else nn.Identity()
        if mode == "static":
            self.k_static, self.v_static = nn.Linear(static_dim, dim), nn.Linear(static_dim, dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(drop), nn.Linear(hidden, dim), nn.Dropout(drop))

    def forward(self, x: torch.Tensor, z: torch.Tensor | None, mask: torch.Tensor | None,
                centroids: torch.Tensor | None) -> torch.Tensor:
        h = self.norm1(x)                                                 # (B, 1+N, C)
        cls, patches = h[:, :1], h[:, 1:]                                 # (B, 1, C), (B, N, C)
        a = self.attn
        full_mask = None if mask is None else torch.cat([mask.new_ones(len(mask), 1), mask], 1)  # (B, 1+M)
        if self.mode == "none":
            k, v = a.k(h), a.v(h)                                         # (B, 1+N, C)
        elif self.mode == "static":
            k = torch.cat([a.k(cls), self.k_static(centroids)], 1)        # (B, 1+M, C)
            v = torch.cat([a.v(cls), self.v_static(centroids)], 1)
        else:
            c = self.cluster_norm(z @ patches)                            # (B, M, C)
            kv = torch.cat([cls, c], 1)                                   # (B, 1+M, C)
            k, v = a.k(kv), a.v(kv)
        x = x + a.attend(a.q(h), k, v, full_mask)
        return x + self.mlp(self.norm2(x))


class LearnedClustering(nn.Module):
    """PaCa-ViT's clustering head: patch tokens (B, N, C) on a g x g grid -> z (B, M, N), softmax over N."""

    def __init__(self, dim: int, m: int, grid: int, kind: str):
        super().__init__()
        self.grid, self.kind = grid, kind
        if kind == "conv":        # P2CConv2d
            self.net = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, groups=dim), nn.GELU(),
                                     nn.Conv2d(dim, dim, 1), nn.GELU(), nn.Conv2d(dim, m, 1, bias=False))
        elif kind == "linear":    # P2CLinear
            self.net = nn.Linear(dim, m, bias=False)
        else:
            raise ValueError(f"learned_head must be 'conv' or 'linear'. Got {kind!r} instead.")

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        b, n, c = patches.shape
        if self.kind == "conv":
            grid = patches.transpose(1, 2).reshape(b, c, self.grid, self.grid)   # (B, C, g, g)
            logits = self.net(grid).flatten(2)                            # (B, M, N)
        else:
            logits = self.net(patches).transpose(1, 2)                    # (B, M, N)
        return logits.softmax(dim=-1)                                     # each cluster: a convex combination of patches


def conv_stem_steps(patch: int) -> int:
    """The number of stride-2 convolutions that cut ``patch`` x ``patch`` cells (log2 of a power of two >= 2)."""
    if patch < 2 or patch & (patch - 1):
        raise ValueError(f"patch_embed='conv' needs a patch_size that is a power of two (2, 4, 8, 16, ...). "
                         f"Got {patch}; use patch_embed='linear' or change patch_size.")
    return patch.bit_length() - 1


class ConvStem(nn.Module):
    """Overlapping convolutional patch embedding: log2(patch) blocks of 3 x 3 stride-2 convolution, BatchNorm
    and ReLU, widths doubling up to ``dim``, then a 1 x 1 convolution to ``dim`` (the stem of Xiao et al.,
    "Early Convolutions Help Transformers See Better", NeurIPS 2021; PaCa-ViT's own stem is likewise stride-2
    3 x 3 convolutions). One token per ``patch`` x ``patch`` cell, in the row-major grid order of
    ``cut_patches``, so the cached patch assignments still name the same cells."""

    def __init__(self, patch: int, dim: int):
        super().__init__()
        steps = conv_stem_steps(patch)
        layers: list[nn.Module] = []
        width_in = 3
        for i in range(steps):
            width = max(dim // 2 ** (steps - 1 - i), 8)
            layers += [nn.Conv2d(width_in, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
            width_in = width
        layers.append(nn.Conv2d(width_in, dim, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(2).transpose(1, 2)                    # (B, N, C)


class PaCaViT(nn.Module):
    """Patch tokens + class token -> ``depth`` blocks of (patch-to-cluster | patch-to-patch) attention.

    ``readout``: "mean" = mean of the final normalised patch tokens (class token excluded), "cls" = the
    final normalised class token.
    """

    def __init__(self, num_classes: int, image_size: int, patch_size: int, dim: int, depth: int, heads: int,
                 mlp_ratio: float, dropout: float, mode: str, clusters: int, static_dim: int | None = None,
                 cluster_norm: bool = True, learned_head: str = "conv", readout: str = "mean",
                 patch_embed: str = "linear"):
        super().__init__()
        if readout not in ("mean", "cls"):
            raise ValueError(f"readout must be 'mean' or 'cls'. Got {readout!r} instead.")
        self.readout = readout
        self.grid, self.patch, self.mode, self.clusters = image_size // patch_size, patch_size, mode, clusters
        n = self.grid ** 2
        if patch_embed not in ("linear", "conv"):
            raise ValueError(f"patch_embed must be 'linear' or 'conv'. Got {patch_embed!r} instead.")
        self.patch_embed = (nn.Linear(3 * patch_size * patch_size, dim) if patch_embed == "linear"
                            else ConvStem(patch_size, dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + n, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.drop = nn.Dropout(dropout)
        self.centroid_norm = nn.LayerNorm(static_dim) if mode == "static" else None
        self.learned = LearnedClustering(dim, clusters, self.grid, learned_head) if mode == "learned" else None
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, dropout, mode, static_dim, cluster_norm)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, S, S) -> tokens (B, 1+N, C)."""
        if isinstance(self.patch_embed, ConvStem):
            t = self.patch_embed(x)                                       # (B, N, C)
        else:
            t = self.patch_embed(PC.cut_patches(x, self.patch).flatten(2))  # (B, N, 3*p*p) -> (B, N, C)
        t = torch.cat([self.cls_token.expand(len(t), -1, -1), t], 1)      # (B, 1+N, C)
        return self.drop(t + self.pos_embed)

    def features(self, x: torch.Tensor, assign: torch.Tensor | None = None,
                 centroids: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, S, S), assignments (B, N) and, in static mode, centroids (B, M, D_e) -> embedding (B, C)."""
        t = self.tokens(x)
        z = mask = cen = None
        if self.mode in ("pooled", "static"):
            if assign is None:
                raise ValueError(f"Patch-to-cluster mode {self.mode!r} needs the patch assignments (B, N).")
            z, mask = assignment_pooling(assign, self.clusters)          # (B, M, N), (B, M)
            if self.mode == "static":
                if centroids is None:
                    raise ValueError("Static cluster tokens need the centroids (B, M, D_e) of the frozen embeddings.")
                cen = self.centroid_norm(centroids.float())               # (B, M, D_e)
        for i, block in enumerate(self.blocks):
            if self.mode == "learned" and i == 0:
                z = self.learned(block.norm1(t)[:, 1:])                   # (B, M, N), computed in the first block
            t = block(t, z, mask, cen)
        t = self.norm(t)                                                  # (B, 1+N, C)
        return t[:, 1:].mean(1) if self.readout == "mean" else t[:, 0]    # (B, C)

    def forward(self, x: torch.Tensor, assign: torch.Tensor | None = None,
                centroids: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.features(x, assign, centroids))             # (B, classes)
