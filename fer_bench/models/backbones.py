"""Backbone factory: one contract for every feature extractor the methods share (DESIGN.md, models/).

A backbone maps float images ``(B, 3, H, W)``, normalised with the ImageNet mean and std (``normalize``
below does it for uint8 dataset batches), to ``(feature_map (B, C, h, w), feature_vector (B, D))``:
the last feature map and its global average. ``out_dim`` is D and ``map_channels`` is C.

Architectures: a small 4-block CNN for CPU profiles (``smallcnn``, ``smallcnn_wide``, ``smallcnn_tiny``);
torchvision's ResNet-18/50 (He et al., 2016), VGG-16 (Simonyan & Zisserman, 2015) and AlexNet
(Krizhevsky et al., 2012) with their classifiers removed; the ArcFace IR-50 in ``ir50.py``.
The registry ``BACKBONES`` is a plain dict of name -> builder filled on import (the timm habit: a
variant is a three-line registration that differs only in arguments).

Weights: ``pretrained=None`` (random init), ``"synthetic-faces"`` (fer-bench's own face-pretrained trunks,
shipped with the package: ``pretrained.py``), ``"imagenet"`` (torchvision's weights API, read from the
torch hub cache when the file is there, else downloaded; offline it fails with one line that names the
file and the folder to put it in), or the path of a state_dict file (``weights_only=True``; mismatching
keys are an error unless ``strict=False``, which loads the rest and logs the keys).
"""
from __future__ import annotations

import difflib
import inspect
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from fer_bench.models.named_weights import SYNTHETIC_FACES, allowed_values, file_record, synthetic_faces_state

log = logging.getLogger(__name__)


def _tv() -> Any:
    """``torchvision.models``, imported on first use: it costs seconds at start-up (CLI, data code)."""
    import torchvision.models
    return torchvision.models


IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


class WeightsUnavailable(RuntimeError):
    """Pretrained weights could not be found in the cache nor downloaded."""


class WeightsMismatch(ValueError):
    """A weights file whose keys or shapes do not match the backbone (raised when ``strict=True``)."""


def resize_images(images: Any, size: int, step: int = 1024) -> Tensor:
    """uint8 (N, H, W, 3) -> uint8 (N, 3, size, size), antialiased bilinear, rounded; on CPU, ``step`` images at
    a time (each image is resized on its own, so the chunking does not change a byte). The one resize of the
    methods, the patch embeddings and the trunk pretraining."""
    import numpy as np
    out = torch.empty((len(images), 3, size, size), dtype=torch.uint8)
    for start in range(0, len(images), step):
        chunk = torch.from_numpy(np.array(images[start:start + step])).permute(0, 3, 1, 2)  # a copy: caches are read-only
        if chunk.shape[-1] != size or chunk.shape[-2] != size:
            chunk = torch.nn.functional.interpolate(chunk.float(), size=(size, size), mode="bilinear", antialias=True,
                                                    align_corners=False).round_().clamp_(0, 255).to(torch.uint8)
        out[start:start + step] = chunk
    return out


def normalize(images: Tensor, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> Tensor:
    """Images -> float32 ``(B, 3, H, W)`` normalised as ``(x - mean) / std`` in the [0, 1] scale.

    Accepts uint8 ``(B, H, W, 3)`` (the ``FERDataset`` layout) or uint8 ``(B, 3, H, W)``, both divided
    by 255, or float ``(B, 3, H, W)`` already in [0, 1] (e.g. the output of ``BatchAugment``). A
    tensor with 3 in dimension 1 is taken as channels-first. Runs on the tensor's device.
    """
    if images.dim() != 4 or 3 not in (images.shape[1], images.shape[-1]):
        raise ValueError(f"normalize expects images (B, H, W, 3) or (B, 3, H, W); got shape {tuple(images.shape)}.")
    if images.shape[1] != 3:
        images = images.permute(0, 3, 1, 2)                          # (B, 3, H, W)
    if images.dtype == torch.uint8:
        x = images.float().div_(255.0)
    elif images.is_floating_point():
        x = images.float()
    else:
        raise ValueError(f"normalize expects uint8 or float images; got {images.dtype}.")
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return ((x - m) / s).contiguous()                                # (B, 3, H, W)


class Backbone(nn.Module):
    """Base class: ``forward(x) -> (feature_map (B, C, h, w), feature_vector (B, D))``.

    ``x`` is float ``(B, 3, H, W)`` normalised with ``mean`` / ``std`` (ImageNet statistics for
    every backbone here; use ``self.normalize(uint8_batch)``). Subclasses implement
    ``forward_features``; those with natural stages also ``forward_stages``.

    Class attributes a subclass may set:
      min_size: smallest H and W the network accepts (its feature map would be empty below);
      head_prefixes: state_dict key prefixes of full-model checkpoints (classifiers, unbuilt stages)
        that this backbone does not have; such keys are dropped on load with an info log;
      imagenet_weights: a torchvision ``WeightsEnum`` member, or None when no ImageNet weights exist.
    """

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    min_size: int = 1
    head_prefixes: tuple[str, ...] = ()
    imagenet_weights: Any = None
    name: str = "?"
    out_dim: int
    map_channels: int

    def forward_features(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """Feature maps of the network's stages, shallow to deep (not every backbone has them)."""
        raise NotImplementedError(f"Backbone {self.name!r} does not expose stage outputs; "
                                  f"use one of {', '.join(n for n, b in BACKBONES.items() if b.has_stages)}.")

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(x)
        fmap = self.forward_features(x)                             # (B, C, h, w)
        return fmap, fmap.mean(dim=(2, 3))                          # (B, C, h, w), (B, C)

    def check_input(self, x: Tensor) -> None:
        """Raise one clear sentence when ``x`` is not float (B, 3, H, W) of at least ``min_size``."""
        if x.dim() != 4 or x.shape[1] != 3 or not x.is_floating_point():
            raise ValueError(f"Backbone {self.name!r} expects float images (B, 3, H, W); "
                             f"got {x.dtype} {tuple(x.shape)}. Use normalize() on uint8 batches.")
        if min(x.shape[2], x.shape[3]) < self.min_size:
            raise ValueError(f"Backbone {self.name!r} needs images of at least {self.min_size}x{self.min_size} "
                             f"pixels; got {x.shape[2]}x{x.shape[3]}. Resize the input or choose another backbone.")

    def normalize(self, images: Tensor) -> Tensor:
        """``normalize(images, self.mean, self.std)``: uint8 or [0, 1] batches -> network input."""
        return normalize(images, self.mean, self.std)

    def adapt_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Hook: rename keys of foreign checkpoint layouts to this module's names (default: none)."""
        return state


# ----------------------------------------------------------------------------------------------
# Architectures


class SmallCNN(Backbone):
    """Blocks of conv3x3-BN-ReLU-maxpool2 (one per width), then global average pooling."""

    def __init__(self, widths: Sequence[int] = (16, 32, 64, 128)):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if not widths or min(widths) < 1:
            raise ValueError(f"The 'widths' parameter of smallcnn must be a non-empty sequence of positive ints. "
                             f"Got {widths!r} instead.")
        blocks, c_in = [], 3
        for c_out in widths:
            blocks.append(nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                                        nn.ReLU(inplace=True), nn.MaxPool2d(2)))
            c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        self.widths = widths
        self.min_size = 2 ** len(widths)
        self.out_dim = self.map_channels = widths[-1]

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        outs = []
        for block in self.blocks:
            x = block(x)                                             # (B, w_i, H / 2^(i+1), W / 2^(i+1))
            outs.append(x)
        return outs

    def forward_features(self, x: Tensor) -> Tensor:
        return self.forward_stages(x)[-1]


class TorchvisionResNet(Backbone):
    """torchvision ResNet without ``avgpool`` / ``fc``; state_dict keys are torchvision's.

    stem "standard": conv 7x7/2 + maxpool/2 (total stride 32); "light": no maxpool (stride 16), for
    small faces. Both take the same weights.
    """

    head_prefixes = ("fc.",)

    def __init__(self, arch: str, stem: str = "standard"):
        super().__init__()
        net = getattr(_tv(), arch)(weights=None)
        self.conv1, self.bn1, self.relu = net.conv1, net.bn1, net.relu
        self.maxpool = net.maxpool if stem == "standard" else nn.Identity()
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.out_dim = self.map_channels = net.fc.in_features

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))       # (B, 64, H/4, W/4) standard stem
        outs = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            outs.append(x)
        return outs                                                 # last: (B, 512|2048, H/32, W/32)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.forward_stages(x)[-1]


class TorchvisionConvFeatures(Backbone):
    """VGG / AlexNet ``features`` up to the last conv (+ReLU), i.e. without the final max-pool and
    the classifier. Keys stay ``features.<i>.*`` so torchvision checkpoints load as they are.

    AlexNet stem "light": conv1 stride 4 -> 2 and no first max-pool (stride 8 instead of 32 before the
    last conv), so 19-30 px inputs still give a feature map; same weights.
    """

    head_prefixes = ("classifier.",)

    def __init__(self, arch: str, stem: str = "standard"):
        super().__init__()
        # Built on the meta device so that the classifier (120M parameters for VGG-16) is never
        # allocated; the kept convs are then materialised and initialised as torchvision does.
        with torch.device("meta"):
            net = getattr(_tv(), arch)(weights=None)
        features = net.features.to_empty(device="cpu")
        for m in features.modules():
            if isinstance(m, nn.Conv2d) and arch.startswith("vgg"):     # torchvision VGG's own init
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):                               # AlexNet: PyTorch's default init
                m.reset_parameters()
            elif list(m.parameters(recurse=False)):
                raise AssertionError(f"{arch}: uninitialised {type(m).__name__}")
        layers = list(features.children())
        assert isinstance(layers[-1], nn.MaxPool2d), arch
        layers = layers[:-1]                                        # drop the final max-pool
        if stem == "light":
            if arch != "alexnet":
                raise ValueError(f"stem='light' exists for alexnet and the resnets, not {arch!r}.")
            layers[0].stride = (2, 2)
            layers[2] = nn.Identity()
        self.features = nn.Sequential(*layers)
        self.out_dim = self.map_channels = [m for m in layers if isinstance(m, nn.Conv2d)][-1].out_channels

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)                                     # (B, 512|256, h, w)


# ----------------------------------------------------------------------------------------------
# Registry

Builder = Callable[..., Backbone]
BACKBONES: dict[str, Builder] = {}
_IMAGENET_NAMES = ("resnet18", "resnet50", "vgg16", "alexnet")   # builders that set imagenet_weights


def register_backbone(fn: Builder) -> Builder:
    """Register ``fn`` under its function name. ``fn(in_size=..., **options) -> Backbone``.

    Decorate with ``@with_stages`` too when the built module implements ``forward_stages``.
    """
    name = fn.__name__
    if name in BACKBONES and BACKBONES[name] is not fn:
        raise ValueError(f"Backbone {name!r} is already registered (by {BACKBONES[name].__module__}).")
    fn.has_stages = getattr(fn, "has_stages", False)  # type: ignore[attr-defined]
    BACKBONES[name] = fn
    return fn


def with_stages(fn: Builder) -> Builder:
    """Mark a builder whose backbone implements ``forward_stages`` (apply below ``@register_backbone``)."""
    fn.has_stages = True  # type: ignore[attr-defined]
    return fn


def _pick_stem(arch: str, stem: str, in_size: int, standard_min: int) -> str:
    if stem not in ("auto", "standard", "light"):
        raise ValueError(f"The 'stem' parameter of {arch} must be one of 'auto', 'standard', 'light'. "
                         f"Got {stem!r} instead.")
    if stem == "auto":
        stem = "standard" if in_size >= standard_min else "light"
        if stem == "light":
            log.info("%s: in_size %d < %d, using the stride-light stem.", arch, in_size, standard_min)
    return stem


def _resnet(arch: str, in_size: int, stem: str) -> Backbone:
    model = TorchvisionResNet(arch, _pick_stem(arch, stem, in_size, standard_min=1))
    enum = {"resnet18": "ResNet18_Weights", "resnet50": "ResNet50_Weights"}[arch]
    model.imagenet_weights = getattr(_tv(), enum).IMAGENET1K_V1
    return model


@register_backbone
@with_stages
def smallcnn(in_size: int = 64, widths: Sequence[int] = (16, 32, 64, 128)) -> Backbone:
    return SmallCNN(widths)


@register_backbone
@with_stages
def smallcnn_wide(in_size: int = 64, widths: Sequence[int] = (32, 64, 128, 256)) -> Backbone:
    return SmallCNN(widths)


@register_backbone
@with_stages
def smallcnn_tiny(in_size: int = 64, widths: Sequence[int] = (8, 16, 32, 64)) -> Backbone:
    return SmallCNN(widths)


@register_backbone
@with_stages
def resnet18(in_size: int = 64, stem: str = "auto") -> Backbone:
    return _resnet("resnet18", in_size, stem)


@register_backbone
@with_stages
def resnet50(in_size: int = 64, stem: str = "auto") -> Backbone:
    return _resnet("resnet50", in_size, stem)


@register_backbone
def vgg16(in_size: int = 64) -> Backbone:
    model = TorchvisionConvFeatures("vgg16")
    model.min_size = 16                                  # four 2x2 max-pools before the last conv
    model.imagenet_weights = _tv().VGG16_Weights.IMAGENET1K_V1
    return model


@register_backbone
def alexnet(in_size: int = 64, stem: str = "auto") -> Backbone:
    stem = _pick_stem("alexnet", stem, in_size, standard_min=31)
    model = TorchvisionConvFeatures("alexnet", stem)
    model.min_size = 31 if stem == "standard" else 19
    model.imagenet_weights = _tv().AlexNet_Weights.IMAGENET1K_V1
    return model


def build_backbone(name: str, pretrained: str | os.PathLike | None = None, in_size: int = 64, *,
                   strict: bool = True, **kwargs: Any) -> Backbone:
    """Build the registered backbone ``name`` for ``in_size`` px inputs and load its weights.

    pretrained: None (random init), "imagenet" (torchvision weights, torchvision backbones only) or the
    path of a state_dict file. strict: with a file, mismatching keys raise ``WeightsMismatch``; with
    ``strict=False`` the matching tensors load and the others are logged as a warning.
    kwargs: the builder's options (e.g. ``widths`` for smallcnn, ``stem`` for resnets and alexnet).
    """
    if name not in BACKBONES:
        close = difflib.get_close_matches(str(name), BACKBONES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else "."
        raise ValueError(f"Unknown backbone {name!r}{hint} Allowed: {', '.join(sorted(BACKBONES))}.")
    builder = BACKBONES[name]
    options = [p for p in inspect.signature(builder).parameters if p != "in_size"]
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        raise ValueError(f"Backbone {name!r} has no option {unknown[0]!r}; allowed: {', '.join(options) or '(none)'}.")
    if not isinstance(in_size, int) or in_size < 1:
        raise ValueError(f"The 'in_size' parameter of build_backbone must be a positive int. Got {in_size!r} instead.")
    model = builder(in_size=in_size, **kwargs)
    model.name = name
    if in_size < model.min_size:
        raise ValueError(f"Backbone {name!r} needs inputs of at least {model.min_size} px; got in_size={in_size}. "
                         f"Use a larger in_size or another backbone.")
    if pretrained is not None:
        load_weights(model, pretrained, strict=strict)
    return model


# ----------------------------------------------------------------------------------------------
# Weights


def load_weights(model: Backbone, pretrained: str | os.PathLike, strict: bool = True) -> None:
    """Load "imagenet" or a state_dict file into ``model`` (see ``build_backbone``)."""
    name = pretrained.lower() if isinstance(pretrained, str) else None
    if name == "imagenet":
        state, source = imagenet_state_dict(model), f"ImageNet ({model.imagenet_weights})"
        record = imagenet_record(model)
        strict = True                                   # torchvision's files match exactly by construction
    elif name == SYNTHETIC_FACES:
        state, record = synthetic_faces_state(model.name)
        source, strict = f"{SYNTHETIC_FACES} ({model.name})", True
    else:
        pretrained = resolve_weights_file(pretrained)      # "ir50.pth" -> <weights folder>/ir50.pth
        state, source, record = read_state_file(pretrained), str(pretrained), file_record(pretrained)
    apply_state_dict(model, state, source, strict=strict)
    model.weights_record_ = record


WEIGHTS_ENV = "FER_BENCH_WEIGHTS"
# Weights files that users download themselves: file name -> what it is and where to get it. Filled by the
# architecture files (ir50.py: "ir50.pth") so that a missing file's error says where to get it.
WEIGHTS_FILES: dict[str, str] = {}


def weights_dir() -> Path:
    """The folder of weights files named without a folder: ``$FER_BENCH_WEIGHTS``, else ``weights/`` in the
    cache folder (``$FER_BENCH_CACHE``, default ``~/.cache/fer_bench``), as an absolute path."""
    from fer_bench.data import cache_dir                 # not at the top: fer_bench.data imports this module
    return Path(os.path.abspath(Path(os.environ.get(WEIGHTS_ENV) or cache_dir() / "weights").expanduser()))


def resolve_weights_file(pretrained: str | os.PathLike) -> Path:
    """The file that ``pretrained`` names. A bare file name (``"ir50.pth"``) is that file in the working
    directory when there is one (as any relative path), else in ``weights_dir()``; when it is in neither,
    a one-line ``FileNotFoundError`` names the folder and, for ``WEIGHTS_FILES``, where to get the file.
    A path with a folder part is returned as given (``read_state_file`` reports a missing one)."""
    text = os.fspath(pretrained)
    path = Path(text).expanduser()
    if path.name != text or path.is_file():
        return path
    folder = weights_dir()
    if (folder / text).is_file():
        return folder / text
    what = WEIGHTS_FILES.get(text)
    fix = f"It is {what}; save it as {folder / text}" if what else f"Save it as {folder / text} or pass its path"
    raise FileNotFoundError(f"Weights file {text!r} is not in the weights folder {folder}/ (set {WEIGHTS_ENV} to "
                            f"use another folder). {fix}, or pass pretrained=None for a random init.")


def imagenet_record(model: Backbone) -> dict[str, str]:
    """The weights record of ImageNet weights: torchvision's file name carries the first hex digits of its sha256."""
    return {"name": "imagenet", "trunk": model.name, "sha256": imagenet_cache_path(model.imagenet_weights).name}


def imagenet_cache_path(weights: Any) -> Path:
    """Where torch.hub keeps the file of a torchvision ``WeightsEnum`` member."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def imagenet_state_dict(model: Backbone) -> dict[str, Tensor]:
    """The ImageNet state_dict of ``model``: from the torch hub cache if present, else downloaded."""
    weights = model.imagenet_weights
    if weights is None:
        raise ValueError(f"No ImageNet weights exist for backbone {model.name!r}; pass pretrained=None (random "
                         f"init) or the path of a state_dict file. ImageNet weights exist for: "
                         f"{', '.join(n for n in sorted(BACKBONES) if n in _IMAGENET_NAMES)}.")
    path = imagenet_cache_path(weights)
    if path.is_file():
        log.info("Loading ImageNet weights for %s from the cache %s", model.name, path)
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated or foreign file: say which and how to fix
            raise WeightsUnavailable(f"Cannot read cached weights {path} ({type(exc).__name__}); delete the file "
                                     f"or replace it with a copy of {weights.url}.") from exc
    try:
        return weights.get_state_dict(progress=False)
    except (OSError, RuntimeError, ValueError) as exc:  # URLError, HTTPError and timeouts are OSErrors
        reason = (str(exc).splitlines() or [""])[0][:120]
        raise WeightsUnavailable(f"ImageNet weights for {model.name!r} could not be downloaded ({type(exc).__name__}: "
                                 f"{reason}); fetch {weights.url} on a machine with network and place it as "
                                 f"{path.name} in {path.parent}/.") from exc


def read_state_file(path: str | os.PathLike) -> dict[str, Any]:
    """A state_dict from a file: the dict itself, or its 'state_dict' / 'model' entry; 'module.' stripped."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Weights file {str(path)!r} does not exist and is no weights name; pass "
                                f"pretrained={allowed_values()}.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsMismatch(f"Cannot read {str(path)!r} as a state_dict with weights_only=True "
                              f"({type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:160]}).") from exc
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise WeightsMismatch(f"{str(path)!r} holds a {type(obj).__name__}, not a state_dict (a dict of tensors).")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def _fmt(keys: Iterable[str], limit: int | None = None) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if limit is not None and len(keys) > limit else "")


def apply_state_dict(model: Backbone, state: Mapping[str, Any], source: str, strict: bool = True) -> None:
    """Copy ``state`` into ``model``, reporting missing, unexpected and mis-shaped keys.

    Keys under ``model.head_prefixes`` are dropped with an info log. Missing ``num_batches_tracked``
    counters (absent in old checkpoints; not weights) are not reported.
    """
    state = model.adapt_state_dict(dict(state))
    dropped = [k for k in state if k.startswith(model.head_prefixes)] if model.head_prefixes else []
    if dropped:
        log.info("%s: ignoring %d keys of parts the backbone does not build (%s).", source, len(dropped),
                 _fmt(dropped, limit=20))
    dropped_set = set(dropped)
    own = model.state_dict()
    usable: dict[str, Tensor] = {}
    unexpected, mismatched = [], []
    for key, value in state.items():
        if key in dropped_set:
            continue
        if key not in own or not isinstance(value, Tensor):
            unexpected.append(key)
        elif value.shape != own[key].shape:
            mismatched.append(f"{key} {tuple(value.shape)} vs {tuple(own[key].shape)}")
        else:
            usable[key] = value
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    groups = [(what, keys) for what, keys in
              (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)) if keys]
    if groups and strict:
        problems = "; ".join(f"{what} {len(keys)}: {_fmt(keys, limit=20)}" for what, keys in groups)
        raise WeightsMismatch(f"Weights {source} do not match backbone {model.name!r}: {problems}. "
                              f"Pass strict=False to load the {len(usable)} matching tensors anyway.")
    if groups:                                          # the warning lists every key, never a silent drop
        log.warning("Weights %s only partly match backbone %r (loaded %d of %d tensors): %s.", source, model.name,
                    len(usable), len(own), "; ".join(f"{what} {len(keys)}: {_fmt(keys)}" for what, keys in groups))
    model.load_state_dict(usable, strict=False)
    log.info("Loaded %d tensors into %s from %s.", len(usable), model.name, source)
