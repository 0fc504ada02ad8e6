"""Batched, seeded image augmentation on the training device (DESIGN.md section 2).

The usual FER training transforms (horizontal flip, random resized crop, small rotation, colour
jitter, random erasing; QCS, for one, trains with all five: notes/qcs-official-code.md 4.3) are
applied to a whole batch of tensors at once instead of per image in Python:

- geometry: crop, flip and rotation (output = rotate(flip(crop(input))), rotation about the centre,
  zeros outside by default) are composed into one affine matrix per sample and applied with a
  single ``F.affine_grid`` + ``F.grid_sample`` (bilinear, ``align_corners=False``: normalised
  coordinates -1 and 1 are the outer pixel *edges*, so a crop of scale 1 maps the image onto itself
  pixel for pixel and a flip maps pixel centre ``i`` onto ``W - 1 - i``, up to float rounding of
  about 1e-6). When neither crop nor rotation is enabled the flip is done by indexing instead, which
  is exact and cheaper.
- colour jitter uses torchvision's ``ColorJitter`` formulas in a fixed order (brightness, contrast,
  saturation, hue; torchvision shuffles the order per call): the first three composed into one
  per-sample transform with one clamp, hue as a shift in HSV space. Random erasing samples its box as
  torchvision's ``RandomErasing`` does (but clips it to the image instead of re-drawing). Both are
  vectorised with per-sample factors and masks.

Input: float ``(B, 3, H, W)`` in [0, 1] (before ``normalize``); output: same shape, dtype and device.
Randomness comes only from the ``torch.Generator`` passed to each call. Every call draws the same
number of values (``_N_DRAWS`` per sample) whatever is enabled, so turning one transform off does not
change the draws of the others. The generator may live on the CPU while the batch is on CUDA.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from fer_bench.models.backbones import IMAGENET_MEAN

# columns of the per-sample uniform draws
(_FLIP, _C_AREA, _C_RATIO, _C_X, _C_Y, _ANGLE, _BRIGHT, _CONTRAST, _SAT, _HUE,
 _E_ON, _E_AREA, _E_RATIO, _E_TOP, _E_LEFT) = range(15)
_N_DRAWS = 15
_LUMA = (0.299, 0.587, 0.114)   # ITU-R 601-2, as torchvision's rgb_to_grayscale


@dataclasses.dataclass
class BatchAugment:
    """Random batch augmentation; every transform is off when its strength / probability is 0 (or None).

    hflip: probability of a horizontal flip.
    crop_scale, crop_ratio: random resized crop, area fraction and aspect-ratio ranges (None: off).
    degrees: rotation angle drawn uniformly in [-degrees, degrees].
    brightness, contrast, saturation: jitter factors drawn in [max(0, 1 - v), 1 + v].
    hue: hue shift drawn in [-hue, hue] (fraction of the colour circle, at most 0.5; QCS uses 0.1).
    erase_p, erase_scale, erase_ratio: probability, area fraction and aspect range of the erased box.
    erase_value: the fill, one float or one per channel; the default ImageNet mean equals 0 after
      ``normalize``, i.e. what torchvision's ``RandomErasing(value=0)`` gives after ``Normalize``.
    value_range: jittered values are clamped to it (None: no clamping).
    padding_mode: ``grid_sample`` padding outside the image ("zeros", "border" or "reflection").
    """

    hflip: float = 0.5
    crop_scale: tuple[float, float] | None = (0.8, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    degrees: float = 10.0
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.0
    erase_p: float = 0.25
    erase_scale: tuple[float, float] = (0.02, 0.2)
    erase_ratio: tuple[float, float] = (0.3, 3.3)
    erase_value: float | tuple[float, float, float] = IMAGENET_MEAN
    value_range: tuple[float, float] | None = (0.0, 1.0)
    padding_mode: str = "zeros"

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "none": dict(hflip=0.0, crop_scale=None, degrees=0.0, brightness=0.0, contrast=0.0, saturation=0.0,
                     erase_p=0.0),
        "light": dict(degrees=0.0, brightness=0.0, contrast=0.0, saturation=0.0, erase_p=0.0),
        "standard": {},
    }

    def __post_init__(self) -> None:
        for name in ("hflip", "erase_p"):
            self._check(name, 0.0 <= getattr(self, name) <= 1.0, "a float in [0, 1]")
        for name in ("degrees", "brightness", "contrast", "saturation"):
            self._check(name, getattr(self, name) >= 0.0, "a float in [0, inf)")
        self._check("hue", 0.0 <= self.hue <= 0.5, "a float in [0, 0.5]")
        if self.crop_scale is not None:
            self.crop_scale = tuple(map(float, self.crop_scale))  # type: ignore[assignment]
            lo, hi = self.crop_scale
            self._check("crop_scale", 0.0 < lo <= hi <= 1.0, "None or a pair (lo, hi) with 0 < lo <= hi <= 1")
        for name in ("crop_ratio", "erase_ratio"):
            setattr(self, name, tuple(map(float, getattr(self, name))))
            lo, hi = getattr(self, name)
            self._check(name, 0.0 < lo <= hi, "a pair (lo, hi) with 0 < lo <= hi")
        self.erase_scale = tuple(map(float, self.erase_scale))  # type: ignore[assignment]
        self._check("erase_scale", 0.0 < self.erase_scale[0] <= self.erase_scale[1] <= 1.0,
                    "a pair (lo, hi) with 0 < lo <= hi <= 1")
        value = self.erase_value
        self._check("erase_value", isinstance(value, (int, float)) or len(value) == 3, "a float or 3 floats")
        if self.value_range is not None:
            self.value_range = tuple(map(float, self.value_range))  # type: ignore[assignment]
            self._check("value_range", self.value_range[0] < self.value_range[1], "None or a pair (lo, hi), lo < hi")
        self._check("padding_mode", self.padding_mode in ("zeros", "border", "reflection"),
                    "one of 'zeros', 'border', 'reflection'")

    def _check(self, name: str, ok: bool, allowed: str) -> None:
        if not ok:
            raise ValueError(f"The {name!r} parameter of BatchAugment must be {allowed}. "
                             f"Got {getattr(self, name)!r} instead.")

    # ------------------------------------------------------------------------------------------
    @classmethod
    def from_string(cls, spec: str, **overrides: Any) -> "BatchAugment":
        """A preset ("none", "light", "standard"), optionally with scalar overrides after a colon.

        ``from_string("standard:degrees=5,erase_p=0")``; ``None`` turns ``crop_scale`` off; pairs
        (ranges) go through ``overrides`` as keyword arguments.
        """
        name, _, rest = spec.strip().partition(":")
        if name not in cls.PRESETS:
            raise ValueError(f"Unknown augmentation preset {name!r}; allowed: {', '.join(cls.PRESETS)}.")
        params: dict[str, Any] = dict(cls.PRESETS[name])
        fields = {f.name for f in dataclasses.fields(cls)}
        for part in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, value = part.partition("=")
            key = key.strip()
            if not eq:
                raise ValueError(f"Augmentation option {part!r} in {spec!r} is not of the form key=value; "
                                 f"write e.g. 'standard:degrees=5,erase_p=0'.")
            if key not in fields:
                raise ValueError(f"BatchAugment has no parameter {key!r}; allowed: {', '.join(sorted(fields))}.")
            value = value.strip()
            if value.lower() == "none":
                params[key] = None
            elif key == "padding_mode":
                params[key] = value
            else:
                try:
                    params[key] = float(value)
                except ValueError:
                    raise ValueError(f"Augmentation option {key!r} in {spec!r} must be a number or None; pass "
                                     f"ranges as keyword arguments. Got {value!r} instead.") from None
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(f"BatchAugment has no parameter {unknown[0]!r}; allowed: {', '.join(sorted(fields))}.")
        params.update(overrides)
        return cls(**params)

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain data (recorded with results)."""
        return dataclasses.asdict(self)

    @property
    def is_identity(self) -> bool:
        return (self.hflip == 0 and self.crop_scale is None and self.degrees == 0 and self.brightness == 0
                and self.contrast == 0 and self.saturation == 0 and self.hue == 0 and self.erase_p == 0)

    # ------------------------------------------------------------------------------------------
    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Augment ``x`` float (B, 3, H, W) with draws from ``generator``; returns a new tensor
        (or ``x`` itself when nothing is enabled)."""
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"BatchAugment needs an explicit torch.Generator (no global RNG); "
                            f"got {type(generator).__name__}.")
        if x.dim() != 4 or x.shape[1] != 3 or not x.is_floating_point():
            raise ValueError(f"BatchAugment expects float images (B, 3, H, W); got {x.dtype} {tuple(x.shape)}.")
        B = x.shape[0]
        u = torch.rand(B, _N_DRAWS, generator=generator, device=generator.device)  # (B, 15) uniforms
        if B == 0 or self.is_identity:
            return x
        u = u.to(x.device, non_blocking=True)
        x = self._geometry(x, u)
        x = self._jitter(x, u)
        return self._erase(x, u)

    def _geometry(self, x: Tensor, u: Tensor) -> Tensor:
        B, _, H, W = x.shape
        flip = u[:, _FLIP] < self.hflip                                          # (B,) bool
        if self.crop_scale is None and self.degrees == 0:
            if self.hflip == 0:
                return x
            return torch.where(flip.view(B, 1, 1, 1), x.flip(-1), x)               # exact, no resampling
        # One matrix per sample maps output coordinates to input coordinates (normalised, [-1, 1]):
        # src = D^-1 (C + Sc F R D u) = Sc F (D^-1 R D) u + c, with D = diag(W/2, H/2) so the rotation
        # is a true rotation in pixels for non-square images; Sc = crop size / image size; c = crop centre.
        sign = 1.0 - 2.0 * flip.float()                                           # (B,) -1 flips
        if self.crop_scale is not None:
            lo, hi = self.crop_scale
            area = lo + (hi - lo) * u[:, _C_AREA]                                 # (B,) fraction of H*W
            r0, r1 = math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1])
            aspect = torch.exp(r0 + (r1 - r0) * u[:, _C_RATIO])                   # (B,) crop w / h in pixels
            kx = torch.sqrt(area * aspect * H / W).clamp(max=1.0)                 # (B,) crop w / W
            ky = torch.sqrt(area / aspect * W / H).clamp(max=1.0)                 # (B,) crop h / H
            cx = (1.0 - kx) * (2.0 * u[:, _C_X] - 1.0)                            # (B,) centre, crop inside image
            cy = (1.0 - ky) * (2.0 * u[:, _C_Y] - 1.0)
        else:
            kx = ky = torch.ones_like(sign)
            cx = cy = torch.zeros_like(sign)
        angle = math.radians(self.degrees) * (2.0 * u[:, _ANGLE] - 1.0)          # (B,) radians
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack([
            torch.stack([sign * kx * cos, -sign * kx * sin * (H / W), cx], dim=1),
            torch.stack([ky * sin * (W / H), ky * cos, cy], dim=1),
        ], dim=1).to(x.dtype)                                                     # (B, 2, 3)
        grid = F.affine_grid(theta, [B, 3, H, W], align_corners=False)           # (B, H, W, 2)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode=self.padding_mode, align_corners=False)

    def _jitter(self, x: Tensor, u: Tensor) -> Tensor:
        # brightness b, contrast c, saturation s composed into one per-sample colour transform:
        #   s-step(c-step(b x)) = c b (s x + (1 - s) gray(x)) + (1 - c) b mean(gray(x))
        # (gray weights sum to 1, so saturation leaves the contrast offset unchanged). torchvision
        # clamps after every step; we clamp once, which differs only where brightness pushes pixels
        # past the range before the contrast step.
        B = x.shape[0]
        if self.brightness > 0 or self.contrast > 0 or self.saturation > 0:

            def factor(strength: float, col: int) -> Tensor:                      # (B, 1, 1, 1)
                f = 1.0 + strength * (2.0 * u[:, col] - 1.0)
                return f.clamp(min=0.0).to(x.dtype).view(B, 1, 1, 1)

            b = factor(self.brightness, _BRIGHT)
            c = factor(self.contrast, _CONTRAST)
            s = factor(self.saturation, _SAT)
            luma = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            gray = (x * luma).sum(dim=1, keepdim=True)                            # (B, 1, H, W)
            offset = (1.0 - c) * b * gray.mean(dim=(2, 3), keepdim=True)          # (B, 1, 1, 1)
            x = torch.addcmul(offset + (c * b * (1.0 - s)) * gray, c * b * s, x)  # (B, 3, H, W)
            if self.value_range is not None:
                x = x.clamp_(*self.value_range)
        if self.hue > 0:
            shift = (self.hue * (2.0 * u[:, _HUE] - 1.0)).to(x.dtype).view(B, 1, 1)
            x = _shift_hue(x, shift)
        return x

    def _erase(self, x: Tensor, u: Tensor) -> Tensor:
        if self.erase_p == 0:
            return x
        B, _, H, W = x.shape
        on = u[:, _E_ON] < self.erase_p                                           # (B,) bool
        area = (self.erase_scale[0] + (self.erase_scale[1] - self.erase_scale[0]) * u[:, _E_AREA]) * (H * W)
        r0, r1 = math.log(self.erase_ratio[0]), math.log(self.erase_ratio[1])
        aspect = torch.exp(r0 + (r1 - r0) * u[:, _E_RATIO])                       # (B,) box h / w
        h = torch.sqrt(area * aspect).round().clamp(1, H)                         # (B,) box height, px
        w = torch.sqrt(area / aspect).round().clamp(1, W)                         # (B,) box width, px
        top = torch.minimum(torch.floor(u[:, _E_TOP] * (H - h + 1)), H - h)      # (B,)
        left = torch.minimum(torch.floor(u[:, _E_LEFT] * (W - w + 1)), W - w)   # (B,)
        rows = torch.arange(H, device=x.device, dtype=h.dtype)                    # (H,)
        cols = torch.arange(W, device=x.device, dtype=w.dtype)                    # (W,)
        in_r = (rows >= top[:, None]) & (rows < (top + h)[:, None])               # (B, H)
        in_c = (cols >= left[:, None]) & (cols < (left + w)[:, None])             # (B, W)
        mask = on[:, None, None] & in_r[:, :, None] & in_c[:, None, :]            # (B, H, W)
        fill = torch.as_tensor(self.erase_value, dtype=x.dtype, device=x.device).reshape(-1, 1, 1)
        fill = fill.expand(3, 1, 1).unsqueeze(0)                                  # (1, 3, 1, 1)
        return torch.where(mask[:, None], fill, x)                                # (B, 3, H, W)


def _shift_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the hue of RGB images ``x`` (B, 3, H, W) in [0, 1] by ``shift`` (B, 1, 1) turns, in HSV.

    RGB -> HSV with the usual hexcone formulas, h += shift (mod 1), then HSV -> RGB by the branch-free
    form c_n = v - v s clamp(min(k, 4 - k), 0, 1) with k = (n + 6 h) mod 6 for n = 5, 3, 1 (R, G, B).
    """
    r, g, b = x.unbind(dim=1)                                                     # (B, H, W) each
    v, _ = x.max(dim=1)
    delta = v - x.min(dim=1).values
    sat = torch.where(v > 0, delta / torch.where(v > 0, v, torch.ones_like(v)), torch.zeros_like(v))
    d = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(v == r, (g - b) / d, torch.where(v == g, 2.0 + (b - r) / d, 4.0 + (r - g) / d))
    h = torch.where(delta > 0, h / 6.0, torch.zeros_like(h))
    h = torch.remainder(h + shift, 1.0)                                           # (B, H, W) in [0, 1)
    out = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(n + 6.0 * h, 6.0)
        out.append(v - v * sat * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0))
    return torch.stack(out, dim=1)                                                # (B, 3, H, W)
