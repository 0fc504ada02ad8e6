"""The parts of a synthetic face that the action units shape: brows, eyes, nose, mouth, cheeks and lines.

Each method draws one part for a batch of faces on the :class:`~fer_bench.data.synthetic.canvas._Canvas`,
from the geometry that ``_geometry`` derived from the action units (``self.G``); the renderer calls them
back to front.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from fer_bench.data.synthetic.canvas import (F32, _ONE, _ZERO, _Canvas, _band, _capsule, _clip01, _const, _cov,
                                             _ellipse, _Patch, _pick, _soft)
from fer_bench.data.synthetic.geometry import NOSE_DEPTH


class _Face(_Canvas):
    """The expression's parts (``cheek``, ``fold``, ``forehead``, ``nose``, ``mouth``, ``eye``, ``brow``)."""

    def cheek(self, side: int) -> None:
        """AU6: the raised cheek (blush), its upper edge under the eye and crow's feet."""
        G = self.G
        sign = -1.0 if side == 0 else 1.0
        sel = self.subset(G["cheek"][:, side] > 0.02)
        if sel is None:
            return
        cx = sign * G["ex"][sel] * 1.05
        ey = G["ey"][sel]
        # blush (soft ellipse) below the eye, furrow and crow's feet at the eye: u cx -0.2..+0.25, v ey -0.06..+0.41
        centre = cx + sign * 0.025
        box = self.box(sel, centre, ey + 0.175, 0.225, 0.235, yaw=True)
        if box is None:
            return
        u, v = self.coords(sel, box, cu=centre)
        nppu = self.nppu[sel]
        part = _Patch(self, sel, box)
        lift = self.p("cheek", sel, side)
        eyv, ew = self.p("ey", sel), self.p("ew", sel, side)
        du = u - np.asarray(cx, F32)[:, None, None]
        dv = v - eyv
        dv -= F32(0.25) - F32(0.05) * lift
        blush = _soft(_ellipse(du, dv, F32(0.13), F32(0.085)), 0.08)
        blush *= F32(0.3) * lift
        part.paint(blush, self.rgb("skin", sel) * np.array([1.02, 0.82, 0.8], F32))
        dx = u - self.p("ex", sel) * F32(sign)
        furrow = np.maximum(_band(v, eyv + F32(0.1) + F32(0.25) * dx * dx, F32(0.008)), np.abs(dx) - ew * F32(0.8))
        furrow = _cov(furrow, nppu)
        furrow *= lift * F32(0.45)
        part.darken(furrow, 0.72)
        if self.detail:
            corner = ew * F32(sign * 1.1)
            feet = np.minimum(_capsule(dx, v, corner, eyv - F32(0.01), corner + F32(sign * 0.06), eyv - F32(0.035), F32(0.005)),
                              _capsule(dx, v, corner, eyv + F32(0.015), corner + F32(sign * 0.06), eyv + F32(0.035), F32(0.005)))
            feet = _cov(feet, nppu)
            feet *= np.clip(lift - F32(0.2), _ZERO, _ONE) * F32(0.6)
            part.darken(feet, 0.7)
        part.commit()

    def fold(self, side: int) -> None:
        """The nasolabial fold, from the nose wing to beyond the lip corner (deepened by AU6/9/10/12/14)."""
        G = self.G
        sign = -1.0 if side == 0 else 1.0
        sel = self.subset(G["fold"][:, side] > 0.12)
        if sel is None:
            return
        ax, ay = sign * (G["nw"][sel] + 0.02), G["nb"][sel] - 0.045
        bx, by = sign * (G["mw"][sel, side] + 0.035), G["m0"][sel] + G["mc"][sel, side] + 0.04
        cx, cy = (ax + bx) / 2, (ay + by) / 2
        box = self.box(sel, cx, cy, np.abs(bx - ax) / 2 + 0.015, np.abs(by - ay) / 2 + 0.015, yaw=True)
        if box is None:
            return
        u, v = self.coords(sel, box, cu=cx)
        part = _Patch(self, sel, box)
        f = [np.asarray(t, F32)[:, None, None] for t in (ax, ay, bx, by)]
        fold = _cov(_capsule(u, v, f[0], f[1], f[2], f[3], F32(0.009)), self.nppu[sel])
        fold *= self.p("fold", sel, side) * F32(0.55)
        part.darken(fold, 0.7)
        part.commit()

    def forehead(self) -> None:
        """Forehead lines (AU1 / AU2) and glabella lines (AU4, AU9), for the faces that have them."""
        G = self.G
        idx = self.subset((G["forehead"] > 0.02) | (G["glabella"] > 0.02))
        if idx is None:
            return
        bv = G["bv"][idx].mean(axis=1)
        box = self.box(idx, 0.0, bv - 0.09, 0.32, 0.2, yaw=True)    # lines bv-0.25..-0.07, glabella to bv+0.08
        if box is None:
            return
        u, v = self.coords(idx, box, cu=0.0)
        nppu = self.nppu[idx]
        part = _Patch(self, idx, box)
        bvv = np.asarray(bv, F32)[:, None, None]
        arc = v - bvv
        arc -= F32(0.25) * u * u
        d = _band(arc, F32(-0.1), F32(0.007))
        for k in (0.17, 0.24):
            np.minimum(d, _band(arc, F32(-k), F32(0.007)), out=d)
        np.maximum(d, np.abs(u) - F32(0.3), out=d)
        lines = _cov(d, nppu)
        lines *= self.p("forehead", idx) * F32(0.4)
        part.darken(lines, 0.72)
        gl = np.abs(u)
        gl -= F32(0.03)
        np.abs(gl, out=gl)
        gl -= F32(0.006)
        np.maximum(gl, _band(v - bvv, F32(0.03), F32(0.045)), out=gl)
        gl = _cov(gl, nppu)
        gl *= self.p("glabella", idx) * F32(0.55)
        part.darken(gl, 0.68)
        part.commit()

    def nose(self, sel: Any) -> None:
        G = self.G
        box = self.box(sel, 0.0, G["nb"][sel] - 0.14, 1.1 * G["nw"][sel] + 0.03, 0.2, yaw=True, depth=NOSE_DEPTH)
        if box is None:
            return
        u, v = self.coords(sel, box, cu=0.0, depth=NOSE_DEPTH)
        nppu = self.nppu[sel]
        part = _Patch(self, sel, box)
        nb, nw, nsp, nrx, nry = (self.p(n, sel) for n in ("nb", "nw", "nsp", "nrx", "nry"))
        au = np.abs(u)
        vb = v - nb                                   # height relative to the nose base
        # bridge side shadow, the wings' outline, the base of the tip, nostrils, AU9 wrinkles
        if self.detail:
            bridge = np.maximum(_band(u, F32(0.045), F32(0.012)), _band(vb, F32(-0.16), F32(0.12)))
            bridge = _soft(bridge, 0.03)
            bridge *= F32(0.18)
            part.darken(bridge, 0.8)
        wing = _ellipse(au - nw * F32(0.72), vb + F32(0.022), nw * F32(0.38), F32(0.04))
        np.abs(wing, out=wing)
        wing -= F32(0.006)
        np.maximum(wing, F32(-0.03) - vb, out=wing)
        wing = _cov(wing, nppu)
        wing *= F32(0.45)
        part.darken(wing, 0.62)
        base = np.maximum(_band(vb, F32(0.006) - F32(0.6) * u * u, F32(0.007)), au - nw * F32(0.55))
        base = _cov(base, nppu)
        base *= F32(0.35)
        part.darken(base, 0.66)
        nostril = _cov(_ellipse(au - nsp, vb + F32(0.004), nrx, nry), nppu)
        nostril *= F32(0.85)
        part.darken(nostril, 0.3)
        wrinkled = np.flatnonzero(G["wrinkle9"][sel] > 0.02)
        if len(wrinkled):
            uw, vw = u[wrinkled], vb[wrinkled]
            arc = vw - F32(0.3) * uw * uw
            lines = _band(arc, F32(-0.2), F32(0.006))
            for k in (0.235, 0.27):
                np.minimum(lines, _band(arc, F32(-k), F32(0.006)), out=lines)
            np.maximum(lines, np.abs(uw) - F32(0.065), out=lines)
            lines = _cov(lines, nppu[wrinkled])
            lines *= self.p("wrinkle9", sel)[wrinkled] * F32(0.7)
            part.darken_some(wrinkled, lines, 0.62)
        part.commit()

    def mouth(self, sel: Any) -> None:
        G = self.G
        mw = G["mw"][sel].max(axis=1)
        mc = G["mc"][sel]
        depth = G["gl"][sel] + G["thl"][sel] + np.maximum(mc.max(axis=1), 0) + 0.13     # below m0
        height = G["gu"][sel] + G["thu"][sel] + G["raise10"][sel] + np.maximum(-mc.min(axis=1), 0) + 0.06
        box = self.box(sel, 0.0, G["m0"][sel] + (depth - height) / 2, mw + 0.06, (depth + height) / 2, yaw=True)
        if box is None:
            return
        n = len(mw)
        u, v = self.coords(sel, box, cu=0.0)
        nppu = self.nppu[sel]
        part = _Patch(self, sel, box)
        left = u < _ZERO
        mws = _pick(left, self.p("mw", sel, 0), self.p("mw", sel, 1))          # half-width of this side
        cs = _pick(left, self.p("mc", sel, 0), self.p("mc", sel, 1))           # corner drop of this side
        t = u / mws
        d_side = np.abs(t)
        d_side -= _ONE
        d_side *= mws                                 # distance beyond the corners
        np.clip(t, -_ONE, _ONE, out=t)                # the curves stop at the corners
        t2 = t * t
        s = _ONE - t2
        rs = np.sqrt(s)
        m0, gu, gl, thu, thl = (self.p(k, sel) for k in ("m0", "gu", "gl", "thu", "thl"))
        oval = self.p("oval", sel)
        # centre line: corners move by cs, the middle rises with AU17
        mid = t2 * F32(0.65)
        mid += F32(0.35)
        mid *= t2
        mid *= cs
        mid += m0
        mid -= self.p("raise17", sel) * s
        upper_open = mid - gu * s
        lower_open = s * (gl * (_ONE - oval))
        lower_open += rs * (gl * oval)
        lower_open += mid
        bow = t2 * F32(-16.0)
        bow += _ONE
        _clip01(bow)
        bow *= F32(-0.3)
        bow += _ONE                                   # Cupid's bow: the upper lip is thinner in the middle
        bow *= rs
        top = upper_open - thu * bow
        top -= self.p("raise10", sel) * s
        bottom = lower_open + thl * rs
        d = np.maximum(top - v, v - bottom)
        np.maximum(d, d_side, out=d)
        part.paint(_cov(d, nppu), self.rgb("lip", sel))
        d = np.maximum(top - v, v - mid)
        np.maximum(d, d_side, out=d)
        part.darken(_cov(d, nppu), 0.9)               # the upper lip is darker
        seam = F32(0.006)
        d = np.maximum(upper_open - v, v - lower_open)
        d -= seam
        np.maximum(d, d_side, out=d)
        a_in = _cov(d, nppu)
        part.paint(a_in, _const((0.2, 0.05, 0.06), n))
        open_ = np.flatnonzero(G["gu"][sel] + G["gl"][sel] > 0.004)
        if len(open_):      # tongue and teeth, only where the lips are apart
            uo, lo, tt, mo, ai, vo = (x[open_] for x in (upper_open, lower_open, t, mws, a_in, v))
            np.abs(tt, out=tt)
            tongue = _ellipse(u[open_], vo - lo, mo * F32(0.5), F32(0.025))          # mostly behind the lip
            a_tongue = np.minimum(_cov(tongue, nppu[open_]), ai)
            a_tongue *= F32(0.7)
            upper_teeth = np.maximum(vo - uo - F32(0.035), (tt - F32(0.75)) * mo)
            lower_teeth = np.maximum(lo - self.p("lower_teeth", sel)[open_] - vo, (tt - F32(0.62)) * mo)
            a_teeth = np.minimum(_cov(np.minimum(upper_teeth, lower_teeth), nppu[open_]), ai)
            img = part.pixels()
            inner = img[open_]
            inner += a_tongue[:, None] * (np.array([0.62, 0.27, 0.3], F32)[None, :, None, None] - inner)
            inner += a_teeth[:, None] * (np.array([0.94, 0.92, 0.86], F32)[None, :, None, None] - inner)
            img[open_] = inner
        # dimples (AU14) beside the corners and the chin line (AU17), where present
        for side, sign in ((0, -1.0), (1, 1.0)):
            dimpled = np.flatnonzero(G["dimple"][sel, side] > 0.02)
            if len(dimpled):
                cx = self.p("mw", sel, side)[dimpled] * F32(sign) + F32(sign * 0.03)
                cy = m0[dimpled] + self.p("mc", sel, side)[dimpled]
                dd = _cov(_capsule(u[dimpled], v[dimpled], cx, cy - F32(0.03), cx + F32(sign * 0.01), cy + F32(0.02),
                                   F32(0.006)), nppu[dimpled])
                dd *= self.p("dimple", sel, side)[dimpled] * F32(0.6)
                part.darken_some(dimpled, dd, 0.68)
        chinned = np.flatnonzero(G["chin17"][sel] > 0.02)
        if len(chinned):
            uc, vc = u[chinned], v[chinned]
            chin = np.maximum(_band(vc, (m0 + thl + gl + F32(0.09))[chinned] + F32(0.6) * uc * uc, F32(0.008)),
                              np.abs(uc) - F32(0.08))
            chin = _cov(chin, nppu[chinned])
            chin *= self.p("chin17", sel)[chinned] * F32(0.5)
            part.darken_some(chinned, chin, 0.72)
        part.commit()

    def eye(self, sel: Any, side: int) -> None:
        G = self.G
        sign = -1.0 if side == 0 else 1.0
        cx = sign * G["ex"][sel]
        ew = G["ew"][sel, side]
        hu = G["hu"][sel, side]
        top = G["ey"][sel] - np.maximum(hu, G["hu0"][sel]) - 0.15          # socket shading above, lids
        bottom = G["ey"][sel] + np.maximum(hu, G["hu0"][sel]) + 0.09
        box = self.box(sel, cx, (top + bottom) / 2, ew * 1.35 + 0.07, (bottom - top) / 2, yaw=True)
        if box is None:
            return
        n = len(cx)
        u, v = self.coords(sel, box, cu=cx)
        nppu = self.nppu[sel]
        part = _Patch(self, sel, box)
        ex, ey, ew, hu, hl, ir, tilt = (self.p("ex", sel), self.p("ey", sel), self.p("ew", sel, side),
                                        self.p("hu", sel, side), self.p("hl", sel, side), self.p("ir", sel),
                                        self.p("tilt", sel))
        du = u - ex * F32(sign)
        q = du / ew
        dv = v - ey
        dv += (tilt * F32(sign)) * q
        socket = _soft(_ellipse(du, dv + F32(0.03), ew * F32(1.35), self.p("hu0", sel) + F32(0.05)), 0.06)
        socket *= F32(0.22)
        part.darken(socket, 0.8)
        s = q * q
        s *= F32(-1.0)
        s += _ONE
        _clip01(s)
        upper = np.sqrt(s)
        upper *= F32(-0.12 * sign) * q + _ONE
        upper *= -hu                                  # upper lid (negative: above the eye line)
        lower = hl * s
        d_side = np.abs(q)
        d_side -= _ONE
        d_side *= ew
        d = np.maximum(upper - dv, dv - lower)
        np.maximum(d, d_side, out=d)
        a_eye = _cov(d, nppu)
        part.paint(a_eye, _const((0.93, 0.91, 0.88), n))
        ix = du - self.p("gaze_x", sel) * F32(0.35) * (ew - ir)
        iy = dv - self.p("gaze_y", sel) * F32(0.012)
        r_iris = np.sqrt(ix * ix + iy * iy)
        part.paint(np.minimum(_cov(r_iris - ir, nppu), a_eye), self.rgb("iris", sel))
        part.darken(np.minimum(_cov(r_iris - ir * F32(0.45), nppu), a_eye), 0.15)          # pupil
        lid = np.maximum(_band(dv, upper, F32(0.011)), (np.abs(q) - F32(1.08)) * ew)
        lid = _cov(lid, nppu)
        lid *= F32(0.9)
        part.darken(lid, 0.12)
        if self.detail:                               # lid crease, glint, lower lid: sub-pixel below 96 px
            crease = upper - F32(0.032)
            crease -= F32(0.012) * s
            crease = np.maximum(_band(dv, crease, F32(0.005)), (np.abs(q) - F32(0.9)) * ew)
            crease = _cov(crease, nppu)
            crease *= F32(0.3)
            part.darken(crease, 0.7)
            hx, hy = ix + ir * F32(0.3), iy + ir * F32(0.35)
            glint = np.sqrt(hx * hx + hy * hy) - ir * F32(0.22)
            part.paint(np.minimum(_cov(glint, nppu), a_eye) * F32(0.8), _const((1.0, 1.0, 1.0), n))
            low = _cov(np.maximum(_band(dv, lower, F32(0.005)), d_side), nppu)
            low *= F32(0.35)
            part.darken(low, 0.6)
        part.commit()

    def brow(self, sel: Any, side: int) -> None:
        G = self.G
        sign = -1.0 if side == 0 else 1.0
        bi, bo, bv = G["bi"][sel, side], G["bo"][sel, side], G["bv"][sel, side]
        lift = np.maximum(np.maximum(G["lin"][sel, side], G["lout"][sel, side]), 0) + G["arch"][sel, side]
        drop = np.maximum(-G["lin"][sel, side], 0)
        cx = sign * (bi + bo) / 2
        top, bottom = bv - lift - 0.05, bv + drop + 0.05
        box = self.box(sel, cx, (top + bottom) / 2, (bo - bi) / 2 + 0.01, (bottom - top) / 2, yaw=True)
        if box is None:
            return
        u, v = self.coords(sel, box, cu=cx)
        part = _Patch(self, sel, box)
        bi, bo, bv, lin, lout, arch, bt = (self.p(k, sel, side) for k in ("bi", "bo", "bv", "lin", "lout", "arch", "bt"))
        au = u * F32(sign)
        span = bo - bi
        t = au - bi
        t /= span
        _clip01(t)
        # centre line: bv - lin (1 - t) - lout t - 4 arch t (1 - t); slope: its derivative in u
        one_t = _ONE - t
        bump = t * one_t
        centre = bv - lin * one_t
        centre -= lout * t
        centre -= (F32(4.0) * arch) * bump
        slope = one_t - t                           # 1 - 2t
        slope *= -(F32(4.0) * arch) / span
        slope += (lin - lout) / span
        slope *= slope
        slope += _ONE
        d = np.abs(v - centre)
        d /= np.sqrt(slope, out=slope)
        d -= bt * (F32(0.575) - F32(0.25) * t)
        np.maximum(d, bi - au, out=d)
        np.maximum(d, au - bo, out=d)
        a = _cov(d, self.nppu[sel])
        a *= F32(0.95)
        part.paint(a, self.rgb("brow", sel))
        part.commit()
