"""Building blocks of QCS / DCS (Wang et al., "QCS: Feature Refining from Quadruplet Cross Similarity for
Facial Expression Recognition", AAAI 2025), as the official code (github birdwcp/QCS, commit 293f28f)
computes them; the paper-versus-code differences are documented in ``notes/qcs-official-code.md``.

What is here:

- the functional weight maps of Cross Similarity Attention (CSA): Euclidean distances between the QK
  vectors of two images, the shift by the minimum and "similarity = maximum minus distance" (Eq. 1, 2,
  7), the L2 normalisation of each partner row over the target positions and the sum (Eq. 3, 5, 8), the
  fusion ``S + (1 + tanh(gamma * theta)) * D`` (Eq. 9) and the softmax over positions
  (``qcs_weight_maps``, ``dcs_weight_maps``), plus the ViT scaled dot-product cross-attention of the
  SDPA ablation (``sdpa_maps``);
- ``CrossSimilarityAttention``: one CSA module (LayerNorm, one Linear giving QK and V, the maps, the
  gate on V, LayerNorm, MLP) for 2 (DCS) or 4 (QCS) branches, with the named options of the paper /
  code differences;
- ``POSTERViT``: the POSTER++-style ViT of the official code (class token, learned positions, pre-norm
  blocks with 8 heads, final LayerNorm, an SE gate on the class token, a linear head);
- ``ThreeScaleTokens``: the front end that turns three backbone stages into 3 x g x g tokens (three
  stride-2 3x3 convolutions, then ``embed_q`` (two stride-2 convs), ``embed_k`` (one) and ``embed_v``
  (a 1x1 projection)), as QCS keeps it from POSTER++ without the landmark branch;
- ``BilinearPooling``: the bilinear-pooling connection of the paper's Table 1.

The CPU trunks of the quick and test profiles (``qcs_small``, ``qcs_tiny``) are registry backbones in
:mod:`fer_bench.models.three_stage`.

Token grids: with stage maps of m, m/2 and m/4 pixels, every scale gives g = ceil(m / 8) tokens a side
(IR-50 on 112 px: m = 56, g = 7, 147 tokens, as in the paper).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fer_bench.models.backbones import Backbone

REDUCE = ("batch", "sample")
MATRICES = ("SD", "S", "D")
GATES = ("spatial", "pool")
RESIDUALS = ("normed", "prenorm")
ATTENTIONS = ("csa", "sdpa")


def _check(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"The {name!r} option of QCS blocks must be one of {', '.join(map(repr, allowed))}. "
                         f"Got {value!r} instead.")


# --------------------------------------------------------------------------------------------------
# Functional weight maps


def _extreme(d: Tensor, reduce: str, fn: str) -> Tensor:
    """``d.min()`` / ``d.max()`` over the whole batch tensor (official) or per sample, broadcastable."""
    if reduce == "batch":
        return getattr(d, fn)()                                        # () : one value for the whole batch
    return getattr(d.flatten(1), fn)(dim=1).values.view(-1, 1, 1)       # (B, 1, 1)


def shifted_distance(qk_rows: Tensor, qk_cols: Tensor, reduce: str = "batch") -> Tensor:
    """``cdist(rows, cols)`` minus its minimum (Eq. 1, 7): (B, Nr, C), (B, Nc, C) -> (B, Nr, Nc).

    ``torch.cdist`` in its default mode, as the official code: for more than 25 positions it uses the
    matrix-product formula, which differs from the difference formula by ~1e-6 in float32.
    """
    d = torch.cdist(qk_rows, qk_cols)                                  # (B, Nr, Nc)
    return d - _extreme(d, reduce, "min")


def similarity(d_shifted: Tensor, reduce: str = "batch") -> Tensor:
    """``max - D`` of a shifted distance matrix (Eq. 2): high where the two positions are close."""
    return _extreme(d_shifted, reduce, "max") - d_shifted             # (B, Nr, Nc)


def to_columns(m: Tensor) -> Tensor:
    """Weights of the column image: each row L2-normalised over the columns, rows summed -> (B, Nc)."""
    return F.normalize(m, dim=2).sum(1)


def to_rows(m: Tensor) -> Tensor:
    """Weights of the row image: each column L2-normalised over the rows, columns summed -> (B, Nr)."""
    return F.normalize(m, dim=1).sum(2)


def qcs_weight_maps(qk_a: Tensor, qk_p: Tensor, qk_n: Tensor, qk_n2: Tensor, k: Tensor | float,
                    matrix: str = "SD", reduce: str = "batch") -> list[Tensor]:
    """The four QCS weight maps (official ``Attn_QCS_SD`` / ``_S`` / ``_D``), each (B, N) summing to 1.

    Only four matrices are computed, each used by both of its images (the cycle a -S- p -D- n2 -S- n -D- a):
    S21 = sim(p, a), S43 = sim(n2, n) (same class) and D31 = dist(n, a), D42 = dist(n2, p) (different
    classes), rows = the first image. ``k`` is ``tanh(gamma * theta)``; SD = S + (1 + k) D (Eq. 9);
    ``matrix='S'`` or ``'D'`` keeps one term (Table 2; the D-only map has no (1 + k) factor, as in the code).
    """
    _check("matrix", matrix, MATRICES)
    _check("reduce", reduce, REDUCE)
    d21 = shifted_distance(qk_p, qk_a, reduce)                         # (B, Np, Na)
    d43 = shifted_distance(qk_n2, qk_n, reduce)                        # (B, Nn2, Nn)
    s21, s43 = similarity(d21, reduce), similarity(d43, reduce)
    d31 = shifted_distance(qk_n, qk_a, reduce)                         # (B, Nn, Na)
    d42 = shifted_distance(qk_n2, qk_p, reduce)                        # (B, Nn2, Np)
    s = [to_columns(s21), to_rows(s21), to_columns(s43), to_rows(s43)]   # a, p, n, n2: (B, N) each
    d = [to_columns(d31), to_columns(d42), to_rows(d31), to_rows(d42)]
    if matrix == "S":
        fused = s
    elif matrix == "D":
        fused = d
    else:
        fused = [sb + (1 + k) * db for sb, db in zip(s, d)]
    return [torch.softmax(f, dim=-1) for f in fused]


def dcs_weight_maps(qk_a: Tensor, qk_p: Tensor, reduce: str = "batch") -> list[Tensor]:
    """The two DCS weight maps (official ``Attn_DCS_S``): anchor and positive, (B, N) each."""
    _check("reduce", reduce, REDUCE)
    s = similarity(shifted_distance(qk_p, qk_a, reduce), reduce)       # (B, Np, Na)
    return [torch.softmax(to_columns(s), dim=-1), torch.softmax(to_rows(s), dim=-1)]


def sdpa_maps(qk_a: Tensor, qk_p: Tensor) -> tuple[Tensor, Tensor]:
    """ViT scaled dot-product cross attention between two images (official ``Attn_HW``).

    I = QK_p QK_a^T / sqrt(C) (B, Np, Na). Returns ``softmax(I, 1)^T`` (B, Na, Np): the anchor's
    attention over the partner's positions, and ``softmax(I, 2)`` (B, Np, Na): the partner's over the
    anchor's. Output of the anchor = first @ V_p, of the partner = second @ V_a.
    """
    i = qk_p @ qk_a.transpose(1, 2) / math.sqrt(qk_a.shape[-1])       # (B, Np, Na)
    return torch.softmax(i, dim=1).transpose(1, 2), torch.softmax(i, dim=2)


# --------------------------------------------------------------------------------------------------
# The CSA module


class Mlp(nn.Module):
    """fc1 -> GELU (erf) -> dropout -> fc2 -> dropout."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.act, self.drop = nn.GELU(), nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class CrossSimilarityAttention(nn.Module):
    """One CSA module for 4 (QCS) or 2 (DCS) branches of one scale; weights shared by all branches.

    Per branch (official, ``residual='normed'``): ``x = norm1(x)``; ``QK, V = proj(x)`` (rows [:C] of
    ``proj`` give QK, rows [C:] give V); ``y = norm2(x + m[..., None] * V)``; ``y = y + mlp(y)``, where
    ``m`` (B, N) is the branch's weight map. Options:

    - ``residual='prenorm'``: the standard form of the official DCS FERPlus / AffectNet-8 files,
      ``x = x + m * V(norm1 x)``; ``x = x + mlp(norm2 x)``;
    - ``gate='pool'``: the paper's matrix-product form of Eq. 4 / 6, ``m^T V`` (B, 1, C), a weighted sum over
      positions added to every position (the code instead gates V position by position);
    - ``attention='sdpa'``: the SDPA ablation of Table 1, ViT cross attention ``softmax(QK QK'^T / sqrt C) V'``
      between the same-class pairs (a, p) and (n, n2), in place of the CSA maps;
    - ``matrix``: SD (Eq. 9), S or D (Table 2); ``reduce``: min / max over the batch (official) or per sample;
    - ``gamma``: the gamma of tanh(gamma * theta) (the code has none: gamma = 1).

    ``forward(*xs)`` returns ``(outputs, maps, k)``: the branch outputs (B, N, C) each, the weight maps
    (B, N) each (``None`` for SDPA) and k = tanh(gamma * theta) (None for DCS).
    """

    def __init__(self, dim: int, branches: int = 4, matrix: str = "SD", reduce: str = "batch", gate: str = "spatial",
                 residual: str = "normed", attention: str = "csa", gamma: float = 1.0, mlp_ratio: float = 4.0):
        super().__init__()
        if branches not in (2, 4):
            raise ValueError(f"The 'branches' option of CrossSimilarityAttention must be 2 (DCS) or 4 (QCS). "
                             f"Got {branches!r} instead.")
        for name, value, allowed in (("matrix", matrix, MATRICES), ("reduce", reduce, REDUCE), ("gate", gate, GATES),
                                     ("residual", residual, RESIDUALS), ("attention", attention, ATTENTIONS)):
            _check(name, value, allowed)
        self.dim, self.branches, self.matrix, self.reduce = dim, branches, matrix, reduce
        self.gate, self.residual, self.attention, self.gamma = gate, residual, attention, gamma
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, 2 * dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        if branches == 4:
            self.theta = nn.Parameter(torch.zeros(()))

    def forward(self, *xs: Tensor) -> tuple[list[Tensor], list[Tensor] | None, Tensor | None]:
        if len(xs) != self.branches:
            raise ValueError(f"This CrossSimilarityAttention takes {self.branches} inputs (B, N, C); got {len(xs)}.")
        normed = [self.norm1(x) for x in xs]                           # (B, N, C) each
        qk, v = zip(*(self.proj(x).split(self.dim, dim=-1) for x in normed))   # (B, N, C), (B, N, C)
        k = torch.tanh(self.gamma * self.theta) if self.branches == 4 else None
        maps: list[Tensor] | None
        if self.attention == "sdpa":
            maps = None
            pairs = [(0, 1)] if self.branches == 2 else [(0, 1), (2, 3)]
            attended: list[Tensor] = [torch.empty(0)] * self.branches
            for i, j in pairs:                                         # i plays the anchor, j the partner
                w_i, w_j = sdpa_maps(qk[i], qk[j])                     # (B, Ni, Nj), (B, Nj, Ni)
                attended[i], attended[j] = w_i @ v[j], w_j @ v[i]      # (B, N, C)
        else:
            if self.branches == 4:
                maps = qcs_weight_maps(*qk, k=k, matrix=self.matrix, reduce=self.reduce)
            else:
                maps = dcs_weight_maps(qk[0], qk[1], reduce=self.reduce)
            if self.gate == "spatial":
                attended = [m.unsqueeze(-1) * vb for m, vb in zip(maps, v)]              # (B, N, C)
            else:
                attended = [(m.unsqueeze(1) @ vb).expand_as(vb) for m, vb in zip(maps, v)]  # (B, 1, C) -> (B, N, C)
        outs = []
        for x, xn, a in zip(xs, normed, attended):
            if self.residual == "normed":
                y = self.norm2(xn + a)                                 # the residual on the normalised tokens
                y = y + self.mlp(y)
            else:
                y = x + a
                y = y + self.mlp(self.norm2(y))
            outs.append(y)                                             # (B, N, C)
        return outs, maps, k


# --------------------------------------------------------------------------------------------------
# POSTER++ ViT


class Attention(nn.Module):
    """Multi-head self attention: one ``qkv`` Linear (rows [q; k; v], heads contiguous), then ``proj``."""

    def __init__(self, dim: int, heads: int = 8, proj_drop: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"The ViT width {dim} must be divisible by the number of heads {heads}; "
                             f"choose embed_dim as a multiple of {heads}.")
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)  # (B, h, N, d) each
        attn = torch.softmax(q @ k.transpose(-2, -1) * self.scale, dim=-1)                        # (B, h, N, N)
        return self.proj_drop(self.proj((attn @ v).transpose(1, 2).reshape(b, n, c)))          # (B, N, C)


class Block(nn.Module):
    """Pre-norm transformer block (LayerNorm eps 1e-6): x + attn(norm1 x); x + mlp(norm2 x)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, proj_drop)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SEGate(nn.Module):
    """v * sigmoid(fc2(relu(fc1 v))) with C -> C -> C layers (no reduction), on the class token."""

    def __init__(self, dim: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, v: Tensor) -> Tensor:
        return v * torch.sigmoid(self.fc2(F.relu(self.fc1(v))))


class POSTERViT(nn.Module):
    """The ViT of POSTER++ / QCS on ``num_tokens`` tokens: cls + pos -> blocks -> LN -> SE(cls) -> head.

    ``forward(tokens)`` returns ``(logits (B, K), tokens_out (B, N, C) after the final LayerNorm without
    the class token, feature (B, C) = SE(cls), the input of the head)``. Init as the official
    ``_init_vit_weights``: Linear weights truncated normal std 0.01, biases 0; cls / pos std 0.02.
    The unused submodules of the official class (patch_embed, CON1, IRLinear1/2, eca_block, per-block
    conv) are not built.
    """

    def __init__(self, num_tokens: int, dim: int, num_classes: int, depth: int, heads: int = 8,
                 mlp_ratio: float = 4.0, drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens + 1, dim))
        self.pos_drop = nn.Dropout(drop)
        self.blocks = nn.Sequential(*(Block(dim, heads, mlp_ratio, drop, proj_drop) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.se = SEGate(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], dim=1) + self.pos_embed  # (B, N+1, C)
        x = self.norm(self.blocks(self.pos_drop(x)))                                                  # (B, N+1, C)
        feature = self.se(x[:, 0])                                                                    # (B, C)
        return self.head(feature), x[:, 1:], feature


# --------------------------------------------------------------------------------------------------
# Front end: three backbone stages -> 3 x g x g tokens


class ThreeScaleTokens(nn.Module):
    """conv{1,2,3} (c -> c, 3x3, stride 2) on the three stage maps, then ``embed_q`` (two stride-2 3x3
    convs to ``dim``), ``embed_k`` (one) and ``embed_v`` (1x1), flattened and concatenated:
    (B, c1, m, m), (B, c2, m/2, m/2), (B, c3, m/4, m/4) -> (B, 3 g^2, dim) with g = ceil(m / 8).
    No activation or normalisation in between, as in the official code."""

    def __init__(self, channels: Sequence[int], dim: int):
        super().__init__()
        c1, c2, c3 = channels
        self.reduce = nn.ModuleList(nn.Conv2d(c, c, 3, 2, 1) for c in (c1, c2, c3))
        self.embed_q = nn.Sequential(nn.Conv2d(c1, dim, 3, 2, 1), nn.Conv2d(dim, dim, 3, 2, 1))
        self.embed_k = nn.Sequential(nn.Conv2d(c2, dim, 3, 2, 1))
        self.embed_v = nn.Conv2d(c3, dim, 1)

    def forward(self, maps: Sequence[Tensor]) -> Tensor:
        f1, f2, f3 = (conv(m) for conv, m in zip(self.reduce, maps))   # (B, c_s, m/2^s, m/2^s)
        t = [self.embed_q(f1), self.embed_k(f2), self.embed_v(f3)]    # (B, dim, g, g) each
        if len({tuple(x.shape[2:]) for x in t}) != 1:
            raise ValueError(f"The three token grids differ ({', '.join(str(tuple(x.shape[2:])) for x in t)}); the "
                             f"backbone stages must halve the resolution twice (m, m/2, m/4), e.g. image_size 56.")
        return torch.cat([x.flatten(2).transpose(1, 2) for x in t], dim=1)   # (B, 3 g^2, dim)


def token_grid(stage_size: int) -> int:
    """Tokens per side of the front end for a first-stage map of ``stage_size`` pixels."""
    g = stage_size
    for _ in range(3):
        g = (g - 1) // 2 + 1
    return g


# --------------------------------------------------------------------------------------------------
# Connection of Table 1: bilinear pooling


class BilinearPooling(nn.Module):
    """Bilinear pooling of two token sets: (x^T y) / N (C x C), signed square root, L2 normalisation,
    then Linear(C^2, K) (the official ``Fusion``, unused by the released models)."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(dim * dim, num_classes)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        z = (x.transpose(1, 2) @ y).flatten(1) / x.shape[1]            # (B, C*C)
        z = torch.sign(z) * torch.sqrt(z.abs() + 1e-12)
        return self.fc(F.normalize(z, dim=1))                          # (B, K)


# --------------------------------------------------------------------------------------------------
# The network


CONNECTIONS = ("off", "none", "add_gap", "bilinear", "vit")


class QCSNetwork(nn.Module):
    """Backbone trunk -> three-scale tokens -> base ViT (depth 2), and for training the cross path.

    ``forward(x)`` / ``features(x)``: the base branch only (inference never touches the cross modules).
    ``branch(x)`` -> (base logits, base tokens (B, 3 g^2, C), base feature). ``cross(tokens)`` runs one CSA
    module per scale on the per-branch tokens and the connection of Table 1:

    - ``vit`` (official): z_b = tokens_b + CSA_b, through its own ViT (``vit_cross``, depth 1) and head;
    - ``add_gap``: z_b = tokens_b + CSA_b, global average over tokens, linear head;
    - ``bilinear``: bilinear pooling of (tokens_b, CSA_b), linear head;
    - ``none``: no residual: CSA_b alone, global average, linear head;
    - ``off``: no cross module at all (the IR50 + ViT baseline of Table 1 row 1).

    ``trunk``: a Backbone with ``forward_stages`` (its first three stages are used). ``trunk_input``:
    when set, images are resized (nearest) to this size before the trunk, as IR-50 does 224 -> 112.
    """

    def __init__(self, trunk: Backbone, image_size: int, num_classes: int, dim: int = 768, branches: int = 4,
                 depth_base: int = 2, depth_cross: int = 1, heads: int = 8, drop_base: float = 0.0,
                 drop_cross: float = 0.0, connection: str = "vit", trunk_input: int | None = None, **csa_options):
        super().__init__()
        _check("connection", connection, CONNECTIONS)
        self.trunk, self.trunk_input, self.connection = trunk, trunk_input, connection
        with torch.no_grad():                                          # stage sizes from one dry run in eval mode
            was_training = trunk.training
            trunk.eval()
            size = trunk_input or image_size
            maps = trunk.forward_stages(torch.zeros(1, 3, size, size))[:3]
            trunk.train(was_training)
        channels = [m.shape[1] for m in maps]
        sizes = [m.shape[-1] for m in maps]
        self.grid = token_grid(sizes[0])
        if [token_grid(2 * sizes[1]), token_grid(4 * sizes[2])] != [self.grid, self.grid]:
            raise ValueError(f"Backbone {getattr(trunk, 'name', '?')!r} gives stage maps {sizes}; QCS needs three stages "
                             f"at m, m/2, m/4 pixels. Use a backbone with stages (ir50_s3, qcs_small).")
        self.tokens_per_scale = self.grid ** 2
        n = 3 * self.tokens_per_scale
        self.front = ThreeScaleTokens(channels, dim)
        self.vit_base = POSTERViT(n, dim, num_classes, depth_base, heads, drop=drop_base)
        if connection != "off":
            self.csa = nn.ModuleList(CrossSimilarityAttention(dim, branches, **csa_options) for _ in range(3))
        if connection == "vit":
            self.vit_cross = POSTERViT(n, dim, num_classes, depth_cross, heads, drop=drop_cross)
        elif connection in ("add_gap", "none"):
            self.cross_head = nn.Linear(dim, num_classes)
        elif connection == "bilinear":
            self.cross_head = BilinearPooling(dim, num_classes)

    def tokens(self, x: Tensor) -> Tensor:
        if self.trunk_input is not None and x.shape[-1] != self.trunk_input:
            x = F.interpolate(x, size=self.trunk_input)                # nearest, as the official IR-50
        return self.front(self.trunk.forward_stages(x)[:3])           # (B, 3 g^2, C)

    def branch(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.vit_base(self.tokens(x))                          # (B, K), (B, 3 g^2, C), (B, C)

    def forward(self, x: Tensor) -> Tensor:
        return self.branch(x)[0]                                       # (B, K): base branch only

    def features(self, x: Tensor) -> Tensor:
        return self.branch(x)[2]                                       # (B, C): the input of the base head

    def cross(self, tokens: Sequence[Tensor]) -> tuple[list[Tensor], list, list]:
        """Cross logits of every branch from the base tokens; also the weight maps and k per scale."""
        if self.connection == "off":
            return [], [], []
        n = self.tokens_per_scale
        per_scale = [torch.split(t, n, dim=1) for t in tokens]        # branch -> 3 x (B, g^2, C)
        outs: list[list[Tensor]] = [[] for _ in tokens]
        maps, ks = [], []
        for s, module in enumerate(self.csa):
            o, m, k = module(*(p[s] for p in per_scale))
            for b, ob in enumerate(o):
                outs[b].append(ob)
            maps.append(m)
            ks.append(k)
        logits = []
        for t, o in zip(tokens, outs):
            c = torch.cat(o, dim=1)                                    # (B, 3 g^2, C)
            if self.connection == "vit":
                logits.append(self.vit_cross(t + c)[0])
            elif self.connection == "add_gap":
                logits.append(self.cross_head((t + c).mean(1)))
            elif self.connection == "none":
                logits.append(self.cross_head(c.mean(1)))
            else:
                logits.append(self.cross_head(t, c))
        return logits, maps, ks

    def train_forward(self, xs: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """(base logits per branch, cross logits per branch); each branch runs the trunk separately,
        so BatchNorm statistics are per branch, as in the official code."""
        base, tokens = [], []
        for x in xs:
            logit, tok, _ = self.branch(x)
            base.append(logit)
            tokens.append(tok)
        return base, self.cross(tokens)[0]
