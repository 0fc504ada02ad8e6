"""The synthetic face renderer: a batch of factor rows -> uint8 images (see the package docstring).

``render(F, size, supersample)`` draws the faces of ``F`` (from ``sample_factors``) back to front:
background, hair behind the head, neck and clothes, ears, head, the expression's parts (``face.py``),
beard, hair, glasses and an occluding hand; then lighting, box reduction (supersampling), sensor noise
and rounding to uint8.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from fer_bench.data.synthetic.canvas import (F32, NOISE_BANK_SIZE, _HALF, _ONE, _ZERO, _capsule, _clip01, _const,
                                             _cov, _ellipse, _noise_bank, _Patch, _pick, _soft, _texture_bank, _tri,
                                             _windows)
from fer_bench.data.synthetic.face import _Face


class _Renderer(_Face):
    """Draws one batch of faces on the canvas, back to front (``render``); the expression's parts are ``_Face``'s.

    Every pixel depends on its own image's factors only (see ``_Canvas``).
    """

    # --- the face, back to front -----------------------------------------------------------------

    def render(self, out: np.ndarray | None = None) -> np.ndarray:
        """uint8 (B, size, size, 3), written into ``out`` if given."""
        every = slice(None)
        F = self.F
        self.background()
        long_hair = self.subset(F["hair_style"] == 3)
        if long_hair is not None:
            self.back_hair(long_hair)
        self.neck_and_clothes(every)
        self.ears(every)
        self.head()
        for side in (0, 1):
            self.cheek(side)
            self.fold(side)
        self.forehead()
        beard = self.subset(F["beard"] > 0)
        if beard is not None:
            self.beard(beard)
        self.nose(every)
        self.mouth(every)
        for side in (0, 1):
            self.eye(every, side)
            self.brow(every, side)
        for group in (F["hair_style"] == 3, F["hair_style"] != 3):
            idx = self.subset(group)
            if idx is not None:
                self.hair(idx)
        glasses = self.subset(F["glasses"])
        if glasses is not None:
            self.glasses(glasses)
        occluded = self.subset(F["occluded"])
        if occluded is not None:
            self.hand(occluded)
        return self.finish(out)

    def background(self) -> None:
        """Tint x (1 + texture + light from above); texture: blotches (a crop of a smooth field) or stripes."""
        F, S = self.F, self.S
        bank = _texture_bank(S)
        room = bank.shape[0] - S
        field = _windows(bank, S, S)[(F["bg_y"] * room).astype(np.intp), (F["bg_x"] * room).astype(np.intp)]
        field *= np.where(F["bg_kind"] == 1, F["bg_amp"], 0.25 * F["bg_amp"]).astype(F32)[:, None, None]
        field += _ONE + F32(0.06) * self.mesh_y                               # (B, S, S)
        striped = self.subset(F["bg_kind"] == 2)
        if striped is not None:
            cos = np.array([math.cos(math.radians(a)) for a in F["bg_angle"][striped]])
            sin = np.array([math.sin(math.radians(a)) for a in F["bg_angle"][striped]])
            fx = (cos * F["bg_freq"][striped]).astype(F32)[:, None, None]
            fy = (sin * F["bg_freq"][striped]).astype(F32)[:, None, None]
            phase = fx * self.mesh_x
            phase += fy * self.mesh_y
            wave = _tri(phase)
            wave -= _HALF
            wave *= F["bg_amp"][striped].astype(F32)[:, None, None]
            field[striped] += wave
        colour = self.rgb("bg", slice(None))
        for c in range(3):
            np.multiply(field, colour[:, c, None, None], out=self.img[:, c])

    def back_hair(self, sel: np.ndarray) -> None:
        G = self.G
        length = self.F["hair_length"][sel]
        top = G["hc"][sel] - 1.3
        box = self.box(sel, 0.0, (top + length) / 2, G["ah"][sel] * 1.25, (length - top) / 2, union=True)
        if box is None:
            return
        u, v = self.coords(sel, box)
        part = _Patch(self, sel, box)
        hc, ah = self.p("hc", sel), self.p("ah", sel)
        d = np.maximum(_ellipse(u, v - hc + F32(0.05), ah * F32(1.25), F32(1.25)), v - self.p("hair_length", sel))
        part.paint(_cov(d, self.nppu[sel]), self.rgb("hair", sel) * F32(0.85))
        part.commit()

    def neck_and_clothes(self, sel: Any) -> None:
        G = self.G
        box = self.box(sel, 0.0, 1.7, G["ah"][sel] * 0.44, 1.3, union=True)   # v from 0.4 down past the frame
        if box is not None:
            u, v = self.coords(sel, box)
            part = _Patch(self, sel, box)
            d_neck = np.abs(u)
            d_neck -= self.p("ah", sel) * F32(0.44)
            np.maximum(d_neck, F32(0.4) - v, out=d_neck)
            part.paint(_cov(d_neck, self.nppu[sel]), self.rgb("skin", sel) * F32(0.76))
            part.commit()
        box = self.box(sel, 0.0, 1.93, 3.0, 1.0, union=True)                   # v from 0.93 down, both sides
        if box is not None:
            u, v = self.coords(sel, box)
            part = _Patch(self, sel, box)
            dip = u * u
            dip *= F32(-1 / 0.32 ** 2)
            dip += _ONE
            _clip01(dip)
            dip *= F32(0.2)
            dip += F32(0.93)
            dip -= v                                   # neckline - v
            part.paint(_cov(dip, self.nppu[sel]), self.rgb("cloth", sel))
            part.commit()

    def ears(self, sel: Any) -> None:
        G = self.G
        for sign in (-1.0, 1.0):
            box = self.box(sel, sign * G["ah"][sel] * 0.97, -0.02, 0.08, 0.135)
            if box is None:
                continue
            u, v = self.coords(sel, box)
            part = _Patch(self, sel, box)
            du = u - self.p("ah", sel) * F32(sign * 0.97)
            part.paint(_cov(_ellipse(du, v + F32(0.02), F32(0.075), F32(0.13)), self.nppu[sel]),
                       self.rgb("skin", sel) * F32(0.88))
            part.commit()

    def head_distance(self, sel: Any, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Signed distance to the head outline and the squared normalised radius r^2, (b, h, w).

        The head is an ellipse whose lower half tapers towards the chin. Near the outline
        r^2 - 1 ~ 2 d / L with L the local radius (w at the sides, b at the top and bottom), so
        d ~ (r^2 - 1) L / 2 with L = (w x^2 + b y^2) / r^2, x = u / w, y = dv / b.
        """
        hc, ah, bu, bl, jaw = (self.p(n, sel) for n in ("hc", "ah", "bu", "bl", "jaw"))
        dv = v - hc
        lower = dv > _ZERO
        w = dv / bl
        _clip01(w)
        w *= w
        w *= -jaw
        w += _ONE
        w *= ah                                     # half-width, tapering towards the chin
        b = _pick(lower, bl, bu)                    # half-height below / above the centre
        x = u / w
        x *= x
        y = dv / b
        y *= y
        r2 = x + y
        x *= w
        y *= b
        x += y
        x /= r2 + F32(1e-6)                         # L, the local radius
        d = r2 - _ONE
        d *= x
        d *= _HALF
        return d, r2

    def head(self) -> None:
        G = self.G
        every = slice(None)
        top, bottom = G["hc"] - G["bu"], G["hc"] + G["bl"]
        box = self.box(every, 0.0, (top + bottom) / 2, G["ah"], (bottom - top) / 2, union=True)
        u, v = self.coords(every, box)
        d, r2 = self.head_distance(every, u, v)
        part = _Patch(self, every, box)
        a = _cov(d, self.nppu)
        part.paint(a, self.rgb("skin", every))
        r2 -= F32(0.45)
        r2 *= F32(1.0 / 0.55)
        _clip01(r2)
        r2 *= a
        part.darken(r2, 0.84)                       # shading towards the outline
        part.commit()

    def beard(self, sel: np.ndarray) -> None:
        """Stubble or a full beard: the head below a line from the sideburns round the mouth."""
        G, F = self.G, self.F
        top, bottom = G["hc"][sel] - 0.08, G["hc"][sel] + G["bl"][sel]
        box = self.box(sel, 0.0, (top + bottom) / 2, G["ah"][sel], (bottom - top) / 2)
        if box is None:
            return
        u, v = self.coords(sel, box)
        d_head, _ = self.head_distance(sel, u, v)
        part = _Patch(self, sel, box)
        ah = self.p("ah", sel)
        side = np.abs(u)
        side -= F32(0.15)
        side /= ah - F32(0.15)
        _clip01(side)
        edge = side * np.sqrt(side)
        edge *= F32(-0.36)
        edge += F32(0.33)                              # the beard's upper edge, -0.03 .. 0.33
        full = (F["beard"][sel] == 2).astype(F32)[:, None, None]
        alpha = np.minimum(_cov(d_head, self.nppu[sel]), _soft(edge - v, 0.05))
        alpha *= F32(0.3) + F32(0.62) * full
        part.paint(alpha, self.rgb("hair", sel) * F32(0.8) + self.rgb("skin", sel) * F32(0.1))
        part.commit()

    def hair(self, sel: np.ndarray) -> None:
        """Hair: an ellipse around the head minus the face below the hairline.

        The hair's inner edge at the sides is the outer ellipse moved in by its thickness (a good
        stand-in for the head outline above the jaw), so the head's own distance is not needed.
        """
        G, F = self.G, self.F
        style = F["hair_style"][sel]
        vol = F["hair_volume"][sel] * (style == 2) + 0.3 * (style != 0)
        side_end = np.where(style == 3, 0.45, -0.02)
        hc, ah, bu = G["hc"][sel], G["ah"][sel], G["bu"][sel]
        ocy = hc - 0.03 - 0.05 * vol                             # outer ellipse: centre (0, ocy), radii
        orx, ory = ah * (1.02 + 0.12 * vol), bu * (1.02 + 0.1 * vol)
        top = ocy - ory
        box = self.box(sel, 0.0, (top + side_end) / 2, orx, (side_end - top) / 2 + 0.01, union=True)
        if box is None:
            return
        u, v = self.coords(sel, box)
        part = _Patch(self, sel, box)

        def f32(x: np.ndarray) -> np.ndarray:
            return np.asarray(x, F32)[:, None, None]

        d_outer = _ellipse(u, v - f32(ocy), f32(orx), f32(ory))
        inner = d_outer + f32(0.02 + 0.11 * vol)                 # ~ distance to the head outline
        line = u * u                                             # hairline without a fringe: -0.58 + 0.5 u^2
        line *= F32(0.5)
        line += F32(-0.58)
        fringed = np.flatnonzero(F["fringe"][sel])
        if len(fringed):                                         # a fringe: low, serrated
            uf = u[fringed]
            ff = np.abs(uf)
            ff *= F32(0.12)
            ff += F32(0.03) * _tri(uf * F32(7.0))
            ff += self.p("fringe_height", sel)[fringed]
            line[fringed] = ff
        d = v - line
        np.negative(inner, out=inner)
        np.maximum(inner, v - f32(side_end), out=inner)
        np.minimum(d, inner, out=d)
        np.maximum(d, d_outer, out=d)
        a = _cov(d, self.nppu[sel])
        a *= f32(np.where(style == 0, 0.6, 1.0))
        streaks = u * F32(9.0)
        streaks += v * F32(2.0)
        streaks = _tri(streaks)
        streaks *= F32(0.14)
        streaks += F32(0.9)
        part.paint(a, self.rgb("hair", sel)[:, :, None, None] * streaks[:, None])
        part.commit()

    def glasses(self, sel: np.ndarray) -> None:
        G, F = self.G, self.F
        box = self.box(sel, 0.0, G["ey"][sel] - 0.005, G["ah"][sel] * 1.02 + 0.015, 0.11, yaw=True)
        if box is None:
            return
        u, v = self.coords(sel, box, cu=0.0)
        nppu = self.nppu[sel]
        part = _Patch(self, sel, box)
        ex, ey, ah = self.p("ex", sel), self.p("ey", sel), self.p("ah", sel)
        rx, ry = self.p("ew", sel, 1) * F32(1.45) + F32(0.02), F32(0.085)
        rect = F["glasses_style"][sel].astype(F32)[:, None, None]
        th = F32(0.011)
        frame = lens = None
        for sign in (-1.0, 1.0):
            du, dv = u - ex * F32(sign), v - ey - F32(0.005)
            round_d = _ellipse(du, dv, rx, ry)
            qx, qy = np.abs(du) - (rx - F32(0.03)), np.abs(dv) - (ry - F32(0.03))
            mx, my = np.maximum(qx, _ZERO), np.maximum(qy, _ZERO)
            box_d = np.sqrt(mx * mx + my * my) + np.minimum(np.maximum(qx, qy), _ZERO) - F32(0.03)
            shape = rect * box_d + (_ONE - rect) * round_d
            temple = _capsule(u, v, (ex + rx) * F32(sign), ey - F32(0.015), ah * F32(sign * 1.02), ey - F32(0.01), th)
            ring = np.minimum(np.abs(shape) - th, temple)
            lens = shape if lens is None else np.minimum(lens, shape)
            frame = ring if frame is None else np.minimum(frame, ring)
        frame = np.minimum(frame, _capsule(u, v, -(ex - rx), ey - F32(0.015), ex - rx, ey - F32(0.015), th))
        part.paint(_cov(lens, nppu) * F32(0.12), _const((0.85, 0.9, 0.95), len(sel)))
        part.paint(_cov(frame, nppu), self.rgb("frame", sel))
        part.commit()

    def hand(self, sel: np.ndarray) -> None:
        F = self.F
        size = F["occ_size"][sel]
        box = self.box(sel, F["occ_x"][sel], F["occ_y"][sel], 0.5 * size)
        if box is None:
            return
        u, v = self.coords(sel, box)
        nppu = self.nppu[sel]
        part = _Patch(self, sel, box)
        ang = [math.radians(a) for a in F["occ_angle"][sel]]
        c = np.array([math.cos(a) for a in ang], F32)[:, None, None]
        s = np.array([math.sin(a) for a in ang], F32)[:, None, None]
        sz = size.astype(F32)[:, None, None]
        du, dv = u - self.p("occ_x", sel), v - self.p("occ_y", sel)
        x, y = (c * du + s * dv) / sz, (c * dv - s * du) / sz       # hand frame: fingers point to -y
        d = _ellipse(x, y - F32(0.12), F32(0.2), F32(0.17))
        for xi, length in ((-0.12, 0.22), (-0.04, 0.28), (0.04, 0.27), (0.12, 0.22)):
            d = np.minimum(d, _capsule(x, y, F32(xi), _ZERO, F32(xi * 1.15), F32(-length), F32(0.045)))
        d = np.minimum(d, _capsule(x, y, F32(0.16), F32(0.14), F32(0.3), F32(-0.01), F32(0.05)))
        d *= sz
        skin = self.rgb("skin", sel)
        part.paint(_cov(d, nppu), skin * F32(0.97))
        np.abs(d, out=d)
        d -= F32(0.006)
        outline = _cov(d, nppu)
        outline *= F32(0.5)
        part.paint(outline, skin * F32(0.6))
        part.commit()

    def finish(self, out: np.ndarray | None = None) -> np.ndarray:
        """Lighting, box reduction (supersampling), sensor noise, rounding: uint8 (B, size, size, 3).

        Illumination gradient, contrast, brightness and white balance: out = in * gain * wb + offset.
        """
        F = self.F
        img, k, S = self.img, self.k, self.out_size
        cos = np.array([math.cos(math.radians(a)) for a in F["light_angle"]])
        sin = np.array([math.sin(math.radians(a)) for a in F["light_angle"]])
        c = F["contrast"]
        gain = self.mesh_x * (c * F["light"] * cos).astype(F32)[:, None, None]       # (B, S, S)
        gain += self.mesh_y * (c * F["light"] * sin).astype(F32)[:, None, None]
        gain += c.astype(F32)[:, None, None]
        img *= gain[:, None]
        if k > 1:                          # box reduction in a fixed order
            acc = img[:, :, 0::k, 0::k].copy()
            for dy in range(k):
                for dx in range(k):
                    if dy or dx:
                        acc += img[:, :, dy::k, dx::k]
            img = acc
        # out = 255 * (img / k^2 * wb + brightness + (1 - contrast) / 2) + 0.5, rounded down
        wb = np.stack([1 + F["wb_red"], np.ones(self.B), 1 + F["wb_blue"]], 1) * (255.0 / (k * k))
        img *= wb.astype(F32)[:, :, None, None]
        img += (255.0 * (F["brightness"] + 0.5 * (1 - c)) + 0.5).astype(F32)[:, None, None, None]
        bank = _noise_bank()                                     # grey sensor noise: a random crop each
        room = NOISE_BANK_SIZE - S
        noise = _windows(bank, S, S)[(F["noise_y"] * room).astype(np.intp), (F["noise_x"] * room).astype(np.intp)]
        noise *= (255.0 * F["noise"]).astype(F32)[:, None, None]
        img += noise[:, None]
        np.clip(img, _ZERO, F32(255.0), out=img)
        planar = img.astype(np.uint8)                            # rounds down: 0.5 was added above
        if out is None:
            out = np.empty((self.B, S, S, 3), np.uint8)
        for c in range(3):                                       # (one strided cast is 3x slower)
            out[..., c] = planar[:, c]
        return out


# numpy's ufunc buffer, in elements, while a batch is drawn. With the default (8192), an operand that
# broadcasts over a part's pixels (the per-image (b, 1, 1) parameters, a (b, 3, 1, 1) colour) or a view
# into the canvas is copied into buffers of 8192 elements before each operation, which made those
# operations 2-3x slower than on contiguous arrays. With a buffer no larger than a big part's pixels per
# image the loops read such operands in place; 1024 gave the fewest instructions at 64 px and was the
# fastest or within noise of it at 32, 64 and 128 px. Elementwise results do not depend on the buffer,
# and the few reductions while drawing (means of two sides, minima and maxima of boxes) do not either.
UFUNC_BUFFER = 1024


def render(F: Mapping[str, np.ndarray], size: int = 64, supersample: int = 1,
           out: np.ndarray | None = None, canvas: np.ndarray | None = None) -> np.ndarray:
    """Images of the factor rows ``F`` (from ``sample_factors``), uint8 (B, size, size, 3).

    ``out``: where to write them (returned); ``canvas``: a float32 scratch array of at least
    (B, 3, size * supersample, size * supersample) to draw on (``render_images`` reuses one for every
    batch; its contents are overwritten). numpy's ufunc buffer size is ``UFUNC_BUFFER`` while drawing
    and restored after, in this thread only.
    """
    previous = np.setbufsize(UFUNC_BUFFER)
    try:
        return _Renderer(F, size, supersample, canvas).render(out)
    finally:
        np.setbufsize(previous)
