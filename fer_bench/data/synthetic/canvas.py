"""The drawing machinery of the synthetic renderer: shapes as signed distances, coverage, pixel boxes.

Shapes are implicit functions (ellipses, bands between curves, capsules) evaluated by numpy over a
batch of faces, each part inside a pixel box per image (:class:`_Box`, :class:`_Patch`). Coverage is
the signed distance in pixels over the edge width (1 + 2 x defocus sigma) clipped to ``[0, 1]``:
analytic anti-aliasing, exact for straight edges, and defocus widens every edge instead of blurring
the image. :class:`_Canvas` holds one batch's canvas and maps face coordinates to pixels; the face
parts (``face.py``) and the rest of the picture (``renderer.py``) draw on it.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import numpy as np

from fer_bench.data.synthetic.geometry import FACE_SCALE, ZF, _geometry

F32 = np.float32
_ZERO, _ONE, _HALF = F32(0.0), F32(1.0), F32(0.5)
NOISE_BANK_SIZE = 512
_BANKS: dict[tuple[str, int], np.ndarray] = {}


def _noise_bank() -> np.ndarray:
    """A fixed field of standard normal noise, float32 (512, 512); each image crops it at random."""
    key = ("noise", 0)
    if key not in _BANKS:
        _BANKS[key] = np.random.default_rng(20251122).standard_normal((NOISE_BANK_SIZE, NOISE_BANK_SIZE),
                                                                      dtype=np.float32)
    return _BANKS[key]


def _texture_bank(S: int) -> np.ndarray:
    """A fixed smooth random field with unit spread, float32 (3S, 3S), blobs about S/4 apart.

    Each image crops an S x S window of it at random for its background texture.
    """
    key = ("texture", S)
    if key not in _BANKS:
        cells = 13                                               # 12 cells of S/4 pixels each
        grid = np.random.default_rng(1729).uniform(-1.0, 1.0, (cells, cells))
        pos = (np.arange(3 * S) + 0.5) / (S / 4.0)
        i0 = np.minimum(pos.astype(np.int64), cells - 2)
        w = pos - i0
        w = w * w * (3 - 2 * w)                                  # smoothstep between grid points
        rows = grid[i0] * (1 - w)[:, None] + grid[i0 + 1] * w[:, None]          # (3S, cells)
        _BANKS[key] = (rows[:, i0] * (1 - w) + rows[:, i0 + 1] * w).astype(F32)
    return _BANKS[key]


def _windows(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """All h x w windows over the last two axes of a C-contiguous array: (..., H-h+1, W-w+1, h, w).

    A strided view (writeable if ``a`` is), like ``sliding_window_view`` but cheap to build.
    """
    *lead, H, W = a.shape
    shape = (*lead, H - h + 1, W - w + 1, h, w)
    strides = (*a.strides[:-2], a.strides[-2], a.strides[-1], a.strides[-2], a.strides[-1])
    return np.ndarray(shape, a.dtype, buffer=a, strides=strides)


def _clip01(x: np.ndarray) -> np.ndarray:
    """Clip a temporary to [0, 1] in place."""
    return np.clip(x, _ZERO, _ONE, out=x)


def _clamp(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``np.clip`` of a small float64 array of box bounds, in place (np.clip's wrapper costs ~3 us per call)."""
    np.maximum(x, lo, out=x)
    return np.minimum(x, hi, out=x)


def _cov(d: np.ndarray, nppu: np.ndarray) -> np.ndarray:
    """Coverage in [0, 1] of a shape with signed distance ``d`` (face units, < 0 inside).

    ``nppu`` is minus the pixels per face unit divided by the edge width in pixels (1 + 2 * defocus).
    """
    a = d * nppu
    a += _HALF
    return _clip01(a)


def _soft(d: np.ndarray, width: float) -> np.ndarray:
    """A soft edge ``width`` face units wide (independent of the resolution)."""
    a = d * F32(-1.0 / width)
    a += _HALF
    return _clip01(a)


def _ellipse(u: np.ndarray, v: np.ndarray, rx: Any, ry: Any) -> np.ndarray:
    """Signed distance to the ellipse (u/rx)^2 + (v/ry)^2 = 1 (u, v relative to its centre), to first order.

    d = (r - 1) / |grad r| with r = sqrt(x^2 + y^2), x = u / rx, y = v / ry: exact for circles and on
    the axes; |grad r|^2 = (x^2 / rx^2 + y^2 / ry^2) / r^2 is finite at the centre (d -> -inf there).
    """
    x, y = u / rx, v / ry
    x *= x
    y *= y
    r2 = x + y
    x /= rx * rx
    y /= ry * ry
    x += y                                        # x^2 / rx^2 + y^2 / ry^2
    x /= r2 + F32(1e-20)
    x += F32(1e-20)
    grad = np.sqrt(x, out=x)
    r = np.sqrt(r2, out=r2)
    r -= _ONE
    r /= grad
    return r


def _capsule(u: np.ndarray, v: np.ndarray, ax: Any, ay: Any, bx: Any, by: Any, r: Any) -> np.ndarray:
    """Signed distance to the segment (a, b) thickened by r."""
    dx, dy = bx - ax, by - ay
    inv = _ONE / (dx * dx + dy * dy + F32(1e-9))
    pu, pv = u - ax, v - ay
    t = pu * (dx * inv)
    t += pv * (dy * inv)
    _clip01(t)
    pu -= t * dx
    pv -= t * dy
    pu *= pu
    pv *= pv
    pu += pv
    d = np.sqrt(pu, out=pu)
    d -= r
    return d


def _band(v: np.ndarray, centre: Any, half: Any) -> np.ndarray:
    """Signed distance to the band |v - centre| < half."""
    d = v - centre
    np.abs(d, out=d)
    d -= half
    return d


def _tri(x: np.ndarray) -> np.ndarray:
    """Triangle wave in [0, 1] with period 1 (in place on a temporary)."""
    f = np.floor(x)
    x -= f
    x -= _HALF
    np.abs(x, out=x)
    x += x
    return x


def _const(rgb: Sequence[float], n: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(rgb, dtype=F32), (n, 3))


def _pick(mask: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``where(mask, a, b)`` for per-image (b, 1, 1) values a, b (np.where is slow when broadcasting)."""
    out = mask * (a - b)
    out += b
    return out


@dataclasses.dataclass
class _Box:
    """Pixel boxes of one part: rows y0 .. y0 + h, columns x0 .. x0 + w of each image.

    ``union``: one box for all images (y0, x0 ints): the canvas is painted through a view. Otherwise
    each image has its own offsets (y0, x0 int arrays) and the part works on gathered patches.
    """

    y0: Any
    x0: Any
    h: int
    w: int
    union: bool


class _Patch:
    """One part's pixels: paints composite colours, marks multiply (wrinkles, lid lines, shading).

    ``paint`` composites a colour with a coverage; ``darken`` multiplies by ``1 - alpha * (1 - k)``
    (marks keep the hue of what lies below). Marks are gathered and applied at ``commit``, after the
    part's paints, so a part's own marks also shade its own paint (the pupil on the iris).
    """

    __slots__ = ("r", "sel", "box", "img", "mark")

    def __init__(self, r: _Canvas, sel: Any, box: _Box):
        self.r, self.sel, self.box = r, sel, box
        self.img: np.ndarray | None = None
        self.mark: np.ndarray | None = None

    def pixels(self) -> np.ndarray:
        """The part's canvas pixels, (b, 3, h, w): a view (union box, whole batch) or a copy."""
        if self.img is None:
            box, r = self.box, self.r
            if box.union:
                self.img = r.img[self.sel, :, box.y0:box.y0 + box.h, box.x0:box.x0 + box.w]
            else:
                self.img = _windows(r.img, box.h, box.w)[r.index(self.sel), :, box.y0, box.x0]
        return self.img

    def paint(self, alpha: np.ndarray, colour: np.ndarray) -> None:
        """``colour`` (b, 3) or (b, 3, h, w) over the part with coverage ``alpha`` (b, h, w)."""
        img = self.pixels()
        if colour.ndim == 2:
            colour = colour[:, :, None, None]
        diff = np.subtract(colour, img)
        np.multiply(diff, alpha[:, None], out=diff)
        np.add(img, diff, out=img)

    def darken(self, alpha: np.ndarray, k: Any) -> None:
        """Multiply by 1 - alpha * (1 - k) (k: the factor where alpha = 1); ``alpha`` is consumed."""
        alpha *= np.asarray(k, F32) - _ONE
        alpha += _ONE
        if self.mark is None:
            self.mark = alpha
        else:
            self.mark *= alpha

    def darken_some(self, rows: np.ndarray, alpha: np.ndarray, k: Any) -> None:
        """``darken`` for the images ``rows`` of this part only."""
        alpha *= np.asarray(k, F32) - _ONE
        alpha += _ONE
        if self.mark is None:
            self.mark = np.ones((len(self.r.index(self.sel)), self.box.h, self.box.w), F32)
        self.mark[rows] *= alpha

    def commit(self) -> None:
        if self.mark is not None:
            self.pixels()[...] *= self.mark[:, None]
        if self.img is None:
            return
        box, r = self.box, self.r
        if box.union:
            if not isinstance(self.sel, slice):
                r.img[self.sel, :, box.y0:box.y0 + box.h, box.x0:box.x0 + box.w] = self.img
        else:
            _windows(r.img, box.h, box.w)[r.index(self.sel), :, box.y0, box.x0] = self.img


class _Canvas:
    """One batch of faces being drawn: a planar float32 canvas (B, 3, S, S) and the face -> pixel mapping.

    Every pixel depends on its own image's factors only. A part's box holds its shapes' support
    (coverage is exactly zero outside it, and painting with coverage zero leaves a pixel bit-for-bit
    unchanged); coordinates are computed from absolute pixel positions, so where a box sits does not
    change a value. Only +, -, *, /, sqrt, abs, floor, min / max and clip touch pixels; sines and
    cosines are computed per image in Python.
    """

    FULL_WINDOWS = False      # tests set this to check that boxes never clip a shape

    def __init__(self, F: Mapping[str, np.ndarray], size: int, supersample: int = 1,
                 canvas: np.ndarray | None = None):
        self.F, self.G = F, _geometry(F)
        self.out_size = size
        self.k = supersample
        self.S = S = size * supersample
        self.B = len(F["index"])
        self.detail = S >= 96          # sub-pixel extras (eye glints, crow's feet) only when visible
        cos = np.array([math.cos(math.radians(r)) for r in F["roll"]])
        sin = np.array([math.sin(math.radians(r)) for r in F["roll"]])
        sc, tx, ty = F["scale"] * FACE_SCALE, F["tx"], F["ty"]
        # face -> image: p = t + sc * R q ; image -> face: q = R^T (p - t) / sc
        self.Au, self.Bu, self.Cu = cos / sc, sin / sc, -(cos * tx + sin * ty) / sc
        self.vcoef = np.array([-sin / sc, cos / sc, (sin * tx - cos * ty) / sc], F32)[:, :, None, None]  # (3, B, 1, 1)
        # face -> pixel index: x = xc + hc * u - hs * v ; y = yc + hs * u + hc * v
        half = sc * S / 2
        self.hc, self.hs = cos * half, sin * half
        self.ahc, self.ahs = np.abs(self.hc), np.abs(self.hs)
        self.xc, self.yc = (tx + 1) * S / 2 - 0.5, (ty + 1) * S / 2 - 0.5
        # Defocus: each edge is a linear ramp 1 + 2 * sigma render pixels wide (sigma = blur in pixels at
        # 64 px, scaled to the size), instead of an image-space blur.
        self.edge = 1.0 + 2.0 * F["blur"] * (size / 64.0) * supersample
        # Pixels around a box: the ramp reaches edge / 2 beyond a shape; approximate ellipse distances
        # underestimate by up to 4/3 within a radius of the outline, so 0.7 * edge plus one pixel.
        self.margin = 1.0 + 0.7 * self.edge
        self.nppu = (-half / self.edge).astype(F32)[:, None, None]        # (B, 1, 1)
        self.yaw_z = F["yaw"] * ZF
        grid = ((np.arange(S, dtype=np.float64) + 0.5) * (2.0 / S) - 1.0).astype(F32)
        self.mesh_x = np.ascontiguousarray(np.broadcast_to(grid[None, :], (S, S)))
        self.mesh_y = np.ascontiguousarray(np.broadcast_to(grid[:, None], (S, S)))
        if canvas is None:
            self.img = np.empty((self.B, 3, S, S), dtype=F32)             # (B, 3, S, S) in [0, 1]
        elif canvas.dtype != F32 or canvas.shape[1:] != (3, S, S) or len(canvas) < self.B:
            raise ValueError(f"render: 'canvas' must be float32 (>= {self.B}, 3, {S}, {S}); "
                             f"got {canvas.dtype} {canvas.shape}.")
        else:
            self.img = canvas[:self.B]                                     # every pixel is drawn by background()
        self._p: dict[tuple[str, int | None], np.ndarray] = {}
        self._all = np.arange(self.B)

    # --- helpers -------------------------------------------------------------------------------

    def index(self, sel: Any) -> np.ndarray:
        return self._all[sel] if isinstance(sel, slice) else sel

    def p(self, name: str, sel: Any, side: int | None = None) -> np.ndarray:
        """Geometry or factor ``name`` of images ``sel`` as float32 (b, 1, 1)."""
        key = (name, side)
        x = self._p.get(key)
        if x is None:
            x = self.G[name] if name in self.G else self.F[name]
            x = x if side is None else x[:, side]
            x = self._p[key] = np.asarray(x, dtype=F32)[:, None, None]
        return x[sel]

    def rgb(self, name: str, sel: Any) -> np.ndarray:
        """(b, 3) float32."""
        return np.asarray(self.G[name][sel], dtype=F32)

    def _yaw(self, sel: Any, cu: Any, depth: float) -> tuple[np.ndarray, np.ndarray]:
        """Sideways shift and horizontal scale of a feature centred at ``cu`` under the simulated yaw."""
        yz = self.yaw_z[sel] if depth == 0.0 else self.F["yaw"][sel] * (ZF + depth)
        c = cu / self.G["ah"][sel]
        return yz * (1 - c * c), 1 - 2 * yz * c / self.G["ah"][sel]

    def box(self, sel: Any, cu: Any, cv: Any, rx: Any, ry: Any = None, yaw: bool = False,
            depth: float = 0.0, union: bool = False) -> _Box | None:
        """Pixel boxes holding the face-space boxes cu +- rx, cv +- ry of images ``sel`` (None: none visible).

        ``yaw``: the part is drawn with ``coords(..., cu=cu)``, i.e. shifted and scaled by the yaw.
        ``union``: one box for all (big parts); else one box per image, all of the same size.
        """
        S = self.S
        if self.FULL_WINDOWS:
            n = len(self.index(sel))
            return _Box(0, 0, S, S, True) if union else _Box(np.zeros(n, int), np.zeros(n, int), S, S, False)
        ry = rx if ry is None else ry
        if yaw:
            shift, k = self._yaw(sel, cu, depth)
            cu, rx = cu + shift, rx * k
        hc, hs, ahc, ahs, margin = self.hc[sel], self.hs[sel], self.ahc[sel], self.ahs[sel], self.margin[sel]
        xs = self.xc[sel] + hc * cu - hs * cv
        ys = self.yc[sel] + hs * cu + hc * cv
        hx = rx * ahc + ry * ahs + margin
        hy = rx * ahs + ry * ahc + margin
        x_lo, x_hi = _clamp(np.floor(xs - hx), 0, S), _clamp(np.ceil(xs + hx) + 1, 0, S)
        y_lo, y_hi = _clamp(np.floor(ys - hy), 0, S), _clamp(np.ceil(ys + hy) + 1, 0, S)
        if union:
            x0, x1, y0, y1 = int(x_lo.min()), int(x_hi.max()), int(y_lo.min()), int(y_hi.max())
            return _Box(y0, x0, y1 - y0, x1 - x0, True) if x0 < x1 and y0 < y1 else None
        w, h = int((x_hi - x_lo).max()), int((y_hi - y_lo).max())
        if w <= 0 or h <= 0:
            return None
        x0 = np.minimum(x_lo, S - w).astype(np.intp)          # keep the common size inside the frame
        y0 = np.minimum(y_lo, S - h).astype(np.intp)
        return _Box(y0, x0, h, w, False)

    def coords(self, sel: Any, box: _Box, cu: Any = None, depth: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Face coordinates (u, v) of the pixels of ``box``, contiguous float32 (b, h, w) each.

        With ``cu`` (the part's centre, face units) the simulated yaw is applied, linearised at ``cu``:
        a point at depth ZF + depth moves sideways by yaw * depth * (1 - (u / ah)^2).
        """
        Au, Bu, Cu = self.Au[sel], self.Bu[sel], self.Cu[sel]
        if cu is not None:
            shift, k = self._yaw(sel, cu, depth)
            Au, Bu, Cu = Au / k, Bu / k, (Cu - shift) / k + cu * (1 - 1 / k)
        a, b, c = np.array([Au, Bu, Cu], F32)[:, :, None, None]
        if box.union:
            mx = np.ascontiguousarray(self.mesh_x[box.y0:box.y0 + box.h, box.x0:box.x0 + box.w])
            my = np.ascontiguousarray(self.mesh_y[box.y0:box.y0 + box.h, box.x0:box.x0 + box.w])
        else:
            mx = _windows(self.mesh_x, box.h, box.w)[box.y0, box.x0]                # (b, h, w)
            my = _windows(self.mesh_y, box.h, box.w)[box.y0, box.x0]
        u = a * mx
        u += b * my
        u += c
        av, bv, cv = self.vcoef[:, sel]
        v = av * mx
        v += bv * my
        v += cv
        return u, v

    @staticmethod
    def subset(mask: np.ndarray) -> np.ndarray | None:
        idx = np.flatnonzero(mask)
        return idx if len(idx) else None
