"""IR-50: the "improved residual" ResNet-50 of ArcFace (Deng et al., CVPR 2019), as used by POSTER / QCS.

Written from the paper's description. The network is a stem (3x3 conv 64, BN, PReLU at full
resolution) followed by four stages of IR units, [3, 4, 14, 3] units with 64 / 128 / 256 / 512
channels; the first unit of every stage halves the resolution, so a 112x112 face gives maps of
56, 28, 14 and 7 pixels. An IR unit is

    residual = BN -> conv3x3 (stride 1) [-> BN] -> PReLU -> conv3x3 (stride s) -> BN
    shortcut = identity subsampled by s (same width) or conv1x1 (stride s) -> BN
    out      = residual + shortcut                       (no activation after the sum)

The ArcFace paper's unit has the bracketed BN; the MS-Celeb-1M IR-50 checkpoint distributed with
POSTER / QCS (``ir50.pth``, from the face.evoLVe training code) has none, so ``mid_bn=False`` is the
default and keeps that file loadable. Parameter names follow that checkpoint (``input_layer``,
``body1..4``, ``res_layer``, ``shortcut_layer``); ``adapt_state_dict`` also reads the single-``body``
numbering of face.evoLVe checkpoints and QCS's ``ir_back.`` prefix. The embedding head
(``output_layer``: BN, dropout, Linear(512*7*7, 512), BN) is tied to 112 px inputs and is not built;
its keys are ignored on load. QCS uses the first three stages only (``ir50_s3``).

Weights come only from a user file: no ImageNet weights exist for this network. ``pretrained="ir50.pth"``
(the QCS / DCS paper profiles) is the MS-Celeb-1M file that POSTER / QCS distribute, read from the weights
folder (``backbones.weights_dir()``: ``$FER_BENCH_WEIGHTS``, default ``~/.cache/fer_bench/weights``). Links:
the QCS README (github.com/birdwcp/QCS, "pretrained model") and the POSTER V2 README (Talented-Q/POSTER_V2,
"Preparing Pretrained Models"). tests/test_ir50_weights.py loads the official definitions' key layouts.
"""
from __future__ import annotations

import logging
import re
from typing import Sequence

from torch import Tensor, nn

from fer_bench.models.backbones import WEIGHTS_FILES, Backbone, register_backbone, with_stages

log = logging.getLogger(__name__)

QCS_README = "https://github.com/birdwcp/QCS#pretrained-model"
IR50_MSCELEB_URL = "https://drive.google.com/file/d/1FV8kUSeVbZ815iWt-YIYiQrCDChrhO2G/view"   # the QCS README's link
WEIGHTS_FILES["ir50.pth"] = (f"the MS-Celeb-1M IR-50 of POSTER / QCS: download it from {IR50_MSCELEB_URL} "
                             f"(linked in the QCS README, {QCS_README})")

IR50_UNITS: tuple[int, ...] = (3, 4, 14, 3)
IR50_WIDTHS: tuple[int, ...] = (64, 128, 256, 512)


class IRUnit(nn.Module):
    """One improved residual unit (see the module docstring); ``stride`` sits on the second conv."""

    def __init__(self, c_in: int, c_out: int, stride: int, mid_bn: bool = False):
        super().__init__()
        if c_in == c_out:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)   # parameter-free subsampling
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        layers: list[nn.Module] = [nn.BatchNorm2d(c_in), nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False)]
        if mid_bn:
            layers.append(nn.BatchNorm2d(c_out))
        layers += [nn.PReLU(c_out), nn.Conv2d(c_out, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out)]
        self.res_layer = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)              # (B, c_out, H/s, W/s)


class IR50(Backbone):
    """IR-50 trunk: ``forward_stages`` returns the output of each built stage (64..512 channels)."""

    def __init__(self, num_stages: int = 4, mid_bn: bool = False,
                 units: Sequence[int] = IR50_UNITS, widths: Sequence[int] = IR50_WIDTHS):
        super().__init__()
        if not 1 <= num_stages <= len(units):
            raise ValueError(f"The 'num_stages' parameter of IR50 must be an int in [1, {len(units)}]. "
                             f"Got {num_stages!r} instead.")
        self.units, self.num_stages = tuple(units), num_stages
        self.input_layer = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False),
                                         nn.BatchNorm2d(widths[0]), nn.PReLU(widths[0]))
        c_in = widths[0]
        for s in range(num_stages):
            blocks = [IRUnit(c_in if i == 0 else widths[s], widths[s], 2 if i == 0 else 1, mid_bn)
                      for i in range(units[s])]
            self.add_module(f"body{s + 1}", nn.Sequential(*blocks))
            c_in = widths[s]
        self.out_dim = self.map_channels = widths[num_stages - 1]
        self.stage_channels = tuple(widths[:num_stages])
        # keys of full checkpoints that this trunk does not build: the embedding head, later stages
        self.head_prefixes = ("output_layer.",) + tuple(f"body{s + 1}." for s in range(num_stages, len(units)))

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        x = self.input_layer(x)                                         # (B, 64, H, W)
        outs = []
        for s in range(self.num_stages):
            x = getattr(self, f"body{s + 1}")(x)                       # (B, widths[s], H/2^(s+1), W/2^(s+1))
            outs.append(x)
        return outs

    def forward_features(self, x: Tensor) -> Tensor:
        return self.forward_stages(x)[-1]

    def adapt_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Strip QCS's ``ir_back.`` prefix and map face.evoLVe's ``body.<k>`` to ``body<s>.<i>``."""
        starts = [sum(self.units[:s]) for s in range(len(self.units))]
        out, renamed = {}, 0
        for key, value in state.items():
            if key.startswith("ir_back."):
                key = key[len("ir_back."):]
            m = re.match(r"body\.(\d+)\.(.*)", key)
            if m:
                k = int(m.group(1))
                s = max(i for i, start in enumerate(starts) if start <= k)
                key = f"body{s + 1}.{k - starts[s]}.{m.group(2)}"
                renamed += 1
            out[key] = value
        if renamed:
            log.info("IR50: renamed %d keys from the single 'body.<k>' numbering.", renamed)
        return out


@register_backbone
@with_stages
def ir50(in_size: int = 112, num_stages: int = 4, mid_bn: bool = False) -> Backbone:
    return IR50(num_stages=num_stages, mid_bn=mid_bn)


@register_backbone
@with_stages
def ir50_s3(in_size: int = 112, mid_bn: bool = False) -> Backbone:
    """The three-stage trunk of POSTER / QCS (outputs at 1/2, 1/4, 1/8 of the input, 64/128/256 ch)."""
    return IR50(num_stages=3, mid_bn=mid_bn)
