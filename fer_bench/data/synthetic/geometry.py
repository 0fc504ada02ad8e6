"""Geometry of the synthetic faces: action units -> face shape, in face units (the image spans [-1, 1],
v points down). ``_geometry`` turns the factor rows into per-image shape parameters; the renderer draws
them."""
from __future__ import annotations

from typing import Mapping

import numpy as np

from fer_bench.data.synthetic.factors import (AU_INDEX, BG_TINTS, CLOTH_PALETTE, FRAME_PALETTE, HAIR_PALETTE,
                                              IRIS_PALETTE)

FACE_SCALE = 0.9     # face units -> image units at scale 1 (leaves room for hair and background)
ZF = 0.22            # depth of the facial features (face units) for the simulated yaw
NOSE_DEPTH = 0.25    # extra depth of the nose tip


def _geometry(F: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-image shape parameters, float64 (B,) or (B, 2) for the two sides (image-left, image-right)."""
    au = F["au"]                                            # (B, len(AUS), 2)
    mean = au.mean(axis=2)                                  # (B, len(AUS)): (left + right) / 2, as per unit

    def s(n: int) -> np.ndarray:                            # (B, 2) one unit per side
        return au[:, AU_INDEX[n], :]

    def m(n: int) -> np.ndarray:                            # (B,) mean over sides
        return mean[:, AU_INDEX[n]]

    G: dict[str, np.ndarray] = {}
    fw, fl = F["face_width"], F["face_length"]
    G["hc"] = np.full(len(fw), 0.02)
    G["ah"] = 0.63 * fw
    G["bu"] = np.full(len(fw), 0.93)
    G["bl"] = 0.84 * fl + 0.07 * m(26) + 0.05 * m(27)
    G["jaw"] = F["jaw"]

    es, esz = F["eye_spacing"], F["eye_size"]
    one = np.ones((len(fw), 2))
    G["ex"] = 0.255 * es
    G["ey"] = -0.13 + F["eye_height"]
    G["ew"] = (0.105 * esz)[:, None] * (1 - 0.06 * s(7) - 0.04 * s(6))
    G["hu"] = np.maximum((0.052 * esz)[:, None] * (1 + 0.85 * s(5) - 0.45 * s(7) - 0.25 * s(6) - 0.15 * s(4)
                                                   - 0.15 * s(9)), 0.008)
    G["hl"] = np.maximum((0.036 * esz)[:, None] * (1 - 0.55 * s(6) - 0.5 * s(7) + 0.15 * s(5) - 0.25 * s(9)), 0.006)
    G["hu0"] = 0.052 * esz                                              # resting lid (socket shading)
    G["ir"] = 0.047 * esz
    G["tilt"] = F["eye_tilt"]

    G["bi"] = (0.075 * es)[:, None] - 0.025 * s(4)                       # inner end |u|
    G["bo"] = (0.40 * es)[:, None] + 0.01 * s(2) * one                  # outer end |u|
    G["bv"] = (G["ey"] - 0.15 + F["brow_height"])[:, None] + 0.045 * s(4) + 0.012 * s(7) + 0.02 * s(9)
    G["lin"] = 0.10 * s(1) + 0.03 * s(2) - 0.065 * s(4) - 0.015 * s(9)    # extra lift of the inner end
    G["lout"] = 0.095 * s(2) + 0.015 * s(1)                              # extra lift of the outer end
    G["arch"] = F["brow_arch"][:, None] + 0.03 * s(2) - 0.02 * s(1)
    G["bt"] = F["brow_thickness"][:, None] * (1 + 0.1 * s(4))

    nsz, nl = F["nose_size"], F["nose_length"]
    G["nb"] = 0.215 * nl - 0.022 * m(9) - 0.008 * m(10)                  # nose base (bottom of the tip)
    G["nw"] = 0.085 * nsz * (1 + 0.18 * m(9))                            # half-width of the wings
    G["nsp"] = 0.042 * nsz * (1 + 0.25 * m(9))                           # nostril half-spacing
    G["nrx"] = 0.024 * nsz * (1 + 0.3 * m(9))
    G["nry"] = 0.012 * nsz * (1 + 0.5 * m(9))
    G["wrinkle9"] = np.clip(m(9), 0, 1)

    msz = F["mouth_size"]
    G["m0"] = 0.44 + 0.8 * (fl - 1) - 0.012 * m(12) - 0.01 * m(10)
    G["mw"] = (0.175 * msz)[:, None] * (1 + 0.22 * s(12) + 0.3 * s(20) - 0.08 * s(23) - 0.1 * s(24)
                                        - 0.15 * s(27) - 0.12 * s(14) - 0.12 * s(26))
    G["mc"] = -0.085 * s(12) - 0.02 * s(14) + 0.075 * s(15) + 0.035 * s(20) + 0.01 * s(17)   # corners, + is down
    open_ = 1 - np.clip(m(24), 0, 1)
    G["gu"] = (0.01 * m(25) + 0.035 * m(10) * np.minimum(1, 2 * m(25))) * open_
    G["gl"] = (0.012 * m(25) + 0.15 * m(26) + 0.09 * m(27) + 0.045 * m(16) + 0.008 * m(20)) * open_
    thin = 1 - 0.45 * m(23) - 0.45 * m(24) - 0.25 * m(20) - 0.2 * m(12)
    G["thu"] = 0.038 * F["lip_thickness"] * np.maximum(thin, 0.25) + 0.008 * m(10)
    G["thl"] = 0.052 * F["lip_thickness"] * np.maximum(thin + 0.35 * m(17), 0.25)
    G["raise10"] = 0.028 * m(10)
    G["raise17"] = 0.02 * m(17)
    G["oval"] = np.clip(0.6 * m(26) + m(27) + 0.6 * m(20), 0, 1)
    G["lower_teeth"] = 0.032 * np.clip(m(16) + 0.8 * m(20) + 0.6 * m(10), 0, 1)
    G["dimple"] = np.clip(s(14), 0, 1)
    G["chin17"] = np.clip(m(17), 0, 1)

    G["cheek"] = np.clip(s(6), 0, 1.2)
    G["fold"] = np.clip(0.1 + 0.55 * s(12) + 0.45 * m(9)[:, None] + 0.35 * m(10)[:, None] + 0.25 * s(6)
                        + 0.2 * s(14), 0, 0.85)
    G["forehead"] = np.clip(np.maximum(m(1), m(2)), 0, 1)
    G["glabella"] = np.clip(m(4) + 0.4 * m(9), 0, 1)

    skin = F["skin_rgb"]
    lip_base = skin * np.array([0.80, 0.55, 0.56]) + np.array([0.12, 0.02, 0.04])
    G["skin"] = skin
    G["lip"] = lip_base * (0.92 + 0.12 * F["lip_tone"])[:, None]
    G["hair"] = HAIR_PALETTE[F["hair_colour"]]
    G["brow"] = np.minimum(G["hair"] * 0.75 + 0.05 * skin, skin * 0.6)     # brows are darker than skin
    G["iris"] = IRIS_PALETTE[F["iris_colour"]]
    G["bg"] = BG_TINTS[F["bg_tint"]] * F["bg_level"][:, None]
    G["cloth"] = CLOTH_PALETTE[F["cloth"]]
    G["frame"] = FRAME_PALETTE[F["glasses_colour"]]
    return G
