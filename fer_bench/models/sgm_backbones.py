"""The architecture rows of the SGMLoss paper that torchvision does not provide: FMPNet, CVGG13, PreActResNet18.

Marrero Fernandez, Ren, Tsang, Guerrero Pena and Cunha, "Deep Metric Structured Learning for Facial
Expression Recognition" (the SGMLoss paper), Tables 1-2 compare five architectures; AlexNet and
ResNet18 are the torchvision backbones in ``backbones.py``, the other three are here, written from
the descriptions of their papers and the layer lists in the first author's model zoo (pytvision):

- ``fmpnet``: the fractional max-pooling network of Yu and Zhang (ICMI 2015) as the authors use it at
  48 px: conv5x5(64) - FMP - BN, 2 x conv3x3(64) - FMP - BN, 2 x conv3x3(128) - FMP - BN, every FMP
  (Graham 2014) with a 3x3 window and output ratio 1/2. Fractional max-pooling draws its pooling
  regions at random; during training they come from torch's global generator (seeded per epoch by the
  trainer); in eval mode every region uses the fixed sample 0.5 (option ``eval_sample``), so
  inference is deterministic (PyTorch's module would draw new regions on every call, even in eval).
- ``cvgg13``: the VGG-13 variant of Barsoum et al. (ICMI 2016, FER+): conv3x3 blocks 64-64 / 128-128 /
  256-256-256 / 256-256-256, each followed by a 2x2 max-pool (64 px -> 4 x 4), ReLU after every conv,
  optional BatchNorm (the authors' default is without). He-normal conv init as in their code.
- ``preactresnet18``: the pre-activation ResNet-18 of He et al. (ECCV 2016) in its small-image form
  (3x3 stride-1 stem, no max-pool, stages of 64/128/256/512 with strides 1/2/2/2, a final BN-ReLU).

Each returns ``(feature_map, global average)`` like every fer-bench backbone; the authors' embedding
nets flatten the last map instead (its size depends on the input size); the methods put their own
linear embedding layer on the averaged vector. No ImageNet weights exist for these three.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fer_bench.models.backbones import Backbone, register_backbone, with_stages


# ----------------------------------------------------------------------------------------------
# FMPNet


class FractionalMaxPool(nn.Module):
    """Fractional max-pooling (Graham 2014) with random regions in training and fixed ones in eval."""

    def __init__(self, kernel_size: int = 3, output_ratio: float = 0.5, eval_sample: float = 0.5):
        super().__init__()
        if not 0.0 < output_ratio < 1.0:
            raise ValueError(f"The 'output_ratio' parameter of FractionalMaxPool must be in (0, 1). Got {output_ratio!r} instead.")
        if not 0.0 <= eval_sample < 1.0:
            raise ValueError(f"The 'eval_sample' parameter of FractionalMaxPool must be in [0, 1). Got {eval_sample!r} instead.")
        self.kernel_size, self.output_ratio, self.eval_sample = kernel_size, output_ratio, eval_sample

    def forward(self, x: Tensor) -> Tensor:
        samples = None
        if not self.training:
            samples = torch.full((x.shape[0], x.shape[1], 2), self.eval_sample, dtype=x.dtype, device=x.device)
        return F.fractional_max_pool2d(x, self.kernel_size, output_ratio=(self.output_ratio, self.output_ratio),
                                       _random_samples=samples)            # (B, C, H/2, W/2)


class FMPNet(Backbone):
    """Three conv stages, each ending in fractional max-pooling and BatchNorm (48 px -> 6 x 6 x 128)."""

    min_size = 12                                                   # the third 3x3 pooling window needs 3 rows

    def __init__(self, eval_sample: float = 0.5):
        super().__init__()

        def pool(c: int) -> list[nn.Module]:
            return [FractionalMaxPool(3, 0.5, eval_sample), nn.BatchNorm2d(c)]

        def conv(c_in: int, c_out: int, k: int = 3) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, k, padding=k // 2), nn.ReLU(inplace=True)]

        self.stage1 = nn.Sequential(*conv(3, 64, 5), *pool(64))
        self.stage2 = nn.Sequential(*conv(64, 64), *conv(64, 64), *pool(64))
        self.stage3 = nn.Sequential(*conv(64, 128), *conv(128, 128), *pool(128))
        self.out_dim = self.map_channels = 128

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        s1 = self.stage1(x)                                          # (B, 64, H/2, W/2)
        s2 = self.stage2(s1)                                         # (B, 64, H/4, W/4)
        return [s1, s2, self.stage3(s2)]                             # last: (B, 128, H/8, W/8)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.forward_stages(x)[-1]


# ----------------------------------------------------------------------------------------------
# CVGG13

CVGG13_CFG: tuple = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 256, 256, 256, "M")


class CVGG13(Backbone):
    """Barsoum et al.'s VGG-13 for 64 px faces; BatchNorm after each conv when ``batch_norm``."""

    min_size = 16

    def __init__(self, cfg: Sequence = CVGG13_CFG, batch_norm: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            conv = nn.Conv2d(c_in, int(v), 3, padding=1)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # N(0, 2 / (k*k*C_out))
            nn.init.zeros_(conv.bias)
            layers += [conv, nn.BatchNorm2d(int(v)), nn.ReLU(inplace=True)] if batch_norm else [conv, nn.ReLU(inplace=True)]
            c_in = int(v)
        self.features = nn.Sequential(*layers)
        self.out_dim = self.map_channels = c_in

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)                                      # (B, 256, H/16, W/16)


# ----------------------------------------------------------------------------------------------
# PreActResNet18


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3, BN-ReLU-conv3x3, identity (or 1x1 projection of the activated input) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)                                        # (B, c_out, H/s, W/s)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + skip


class PreActResNet(Backbone):
    """Pre-activation ResNet for small images: 3x3 stem, four stages, final BN-ReLU."""

    min_size = 8

    def __init__(self, blocks: Sequence[int] = (2, 2, 2, 2), widths: Sequence[int] = (64, 128, 256, 512)):
        super().__init__()
        self.stem = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        stages, c_in = [], widths[0]
        for i, (n, c_out) in enumerate(zip(blocks, widths)):
            strides = [1 if i == 0 else 2] + [1] * (n - 1)
            layers = []
            for s in strides:
                layers.append(PreActBlock(c_in, c_out, s))
                c_in = c_out
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.bn = nn.BatchNorm2d(c_in)
        self.out_dim = self.map_channels = c_in

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)                                             # (B, 64, H, W)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)                                             # (B, w_i, H / 2^i, W / 2^i)
            outs.append(F.relu(self.bn(x)) if i == len(self.stages) - 1 else x)
        return outs                                                  # last: (B, 512, H/8, W/8)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.forward_stages(x)[-1]


# ----------------------------------------------------------------------------------------------
# Registrations


@register_backbone
@with_stages
def fmpnet(in_size: int = 48, eval_sample: float = 0.5) -> Backbone:
    return FMPNet(eval_sample)


@register_backbone
def cvgg13(in_size: int = 64, batch_norm: bool = False) -> Backbone:
    return CVGG13(CVGG13_CFG, batch_norm)


@register_backbone
@with_stages
def preactresnet18(in_size: int = 48) -> Backbone:
    return PreActResNet((2, 2, 2, 2))
