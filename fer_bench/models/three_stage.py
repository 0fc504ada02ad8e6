"""A small three-stage CNN with the interface of IR-50's first three stages, for QCS / DCS on a CPU.

``qcs_small`` (quick profile) and ``qcs_tiny`` (test profile): three stages of conv3x3-BN-ReLU twice, each
starting with stride 2, maps at 1/2, 1/4 and 1/8 of the input (``forward_stages``), as QCS's token front end
expects from IR-50 (112 px in -> 56 / 28 / 14 px maps).
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from fer_bench.models.backbones import Backbone, register_backbone, with_stages


class SmallThreeStage(Backbone):
    """Three stages of conv3x3-BN-ReLU twice, each starting with stride 2: maps at 1/2, 1/4 and 1/8 of the
    input with ``widths`` channels, the interface of IR-50's first three stages (64 px in -> 32/16/8 maps,
    4 x 4 tokens per scale; 112 px -> 56/28/14, 7 x 7 as in the paper)."""

    def __init__(self, widths: Sequence[int] = (16, 32, 64)):
        super().__init__()
        def unit(c_in: int, c_out: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                                 nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))
        w1, w2, w3 = widths
        self.body1, self.body2, self.body3 = unit(3, w1, 2), unit(w1, w2, 2), unit(w2, w3, 2)
        self.stage_channels = (w1, w2, w3)
        self.out_dim = self.map_channels = w3
        self.min_size = 4

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        f1 = self.body1(x)                                             # (B, w1, H/2, W/2)
        f2 = self.body2(f1)                                            # (B, w2, H/4, W/4)
        return [f1, f2, self.body3(f2)]                                # ..., (B, w3, H/8, W/8)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.forward_stages(x)[-1]


@register_backbone
@with_stages
def qcs_small(in_size: int = 64, widths: Sequence[int] = (16, 32, 64)) -> Backbone:
    return SmallThreeStage(widths)


@register_backbone
@with_stages
def qcs_tiny(in_size: int = 24, widths: Sequence[int] = (8, 8, 16)) -> Backbone:
    """The ``test`` profile's variant: seconds on a CPU."""
    return SmallThreeStage(widths)
