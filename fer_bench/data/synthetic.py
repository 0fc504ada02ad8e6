"""``synthetic``: rendered faces whose generative factors are all known (dataset card: synthetic.md).

Real FER datasets cannot tell whether a method recovered the true label distribution, found the true
sub-classes, ignored nuisance features or learned the true similarity structure; this one can,
because every image is drawn from factors that are kept. It needs no download.

Generative model (one image; every factor is a column of ``FERDataset.factors``)
---------------------------------------------------------------------------------
1. Identity. Image ``i`` of a split belongs to person ``i // per_identity`` of that split; persons of
   different splits are different (``groups`` = global identity id). A person fixes face width and
   length, jaw taper, skin tone (a palette from light to dark brown), eye spacing / size / height /
   tilt, iris colour, brow thickness / height / arch, nose size and length, mouth size, lip
   thickness and tone, hair style (buzz, short, voluminous, long), hair colour, fringe and beard.
2. Expression. The class ``c`` is drawn from the prior (RAF-DB basic proportions or uniform), then a
   variant ``v`` of that emotion (2-3 per emotion, ``VARIANTS``), then an intensity ``a`` in
   ``[intensity_min, intensity_max]``. With probability ``ambiguity`` a second emotion ``c2`` (drawn
   from ``BLEND_AFFINITY``) is blended in with weight ``w`` in ``[blend_min, blend_max]``. The FACS
   action-unit vector is ``a * ((1 - w) * P[c, v] + w * P[c2, v2])``, each unit jittered by
   ``+-au_jitter`` (relative) plus an idle activation in ``[0, au_noise]``; units are per side of the
   face, so contempt's AU12 + AU14 are one-sided. ``label_dist`` is ``(1 - w)`` on ``c`` and ``w`` on
   ``c2``, mixed with a uniform floor: ``p * (1 - C * label_floor) + label_floor``.
3. Geometry (``_geometry``). Action units move the face: AU1 / AU2 raise the inner / outer brow,
   AU4 lowers and knits the brows (vertical glabella lines), AU5 widens and AU7 narrows the eye
   opening, AU6 raises cheeks and lower lids (crow's feet), AU9 wrinkles the nose and lifts the
   nostrils, AU10 raises the upper lip, AU12 pulls lip corners up and out, AU14 dimples, AU15 pulls
   corners down, AU16 lowers the lower lip, AU17 pushes it up, AU20 stretches the lips sideways,
   AU23 / AU24 tighten / press them, AU25 parts the lips, AU26 drops the jaw, AU27 stretches the
   mouth open; nasolabial folds deepen with AU6 / AU9 / AU10 / AU12.
4. Nuisances (the "redundant" factors; each range is multiplied by ``nuisance``): glasses, beard,
   fringe, in-plane rotation, scale, translation, simulated yaw (features shift sideways by their
   depth), gaze, a linear illumination gradient, brightness / contrast / white balance, background
   (plain, blotchy or striped, one of 8 tints), a hand-like occluder (probability ``occlusion``),
   blur and sensor noise. ``spurious > 0`` makes ``spurious_factor`` (glasses or the background
   tint) follow the class in the train split only (see ``_spurious``); val and test stay unbiased.
5. Rendering (``_Renderer``). Shapes are implicit functions (ellipses, bands between curves,
   capsules) evaluated by numpy over a batch of faces, each part inside a pixel box per image.
   Coverage is the signed distance in pixels over the edge width (1 + 2 x defocus sigma) clipped to
   ``[0, 1]``: analytic anti-aliasing, exact for straight edges, and defocus widens every edge
   instead of blurring the image. ``supersample=k`` also renders at ``k`` times the size and
   box-reduces. Parts are composited back to front (paints, and multiplicative marks for wrinkles,
   lid lines and shading), then lighting, sensor noise and rounding to uint8.

Determinism: every random factor of image ``i`` is a counter-based hash of
``(seed, stream, split, i, factor name)`` (SplitMix64; ``_Stream``), so an image is a pure function of
``(seed, split, i, options)``: it can be regenerated alone, a batch or a worker process gives the same
bytes, and there is no global RNG. (We do not build ``np.random.default_rng([seed, split, i])`` per
image because constructing one costs ~60-100 us here, a fifth of the per-image budget; the hash is
the same idea, vectorised.) Pixel arithmetic uses only +, -, *, /, sqrt, abs, floor, min / max and
clip, which IEEE 754 rounds identically whatever the batch shape; sines and cosines are taken per
image in Python.

The adapter caches the rendered images with :func:`fer_bench.data.cache.cached_images` (keyed by the
fingerprint: generator version, split and options); labels, ``label_dist``, ``groups`` and factors are
recomputed on load (about 10 us per image), which keeps the cache entry a plain image array.
"""
from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from fer_bench import labels as L
from fer_bench.data import DatasetAdapter, FERDataset, fingerprint_of
from fer_bench.data.cache import cached_images
from fer_bench.registry import register_dataset

log = logging.getLogger(__name__)

GENERATOR_VERSION = "1.1"
SPLITS: tuple[str, ...] = ("train", "val", "test")
SPLIT_CODES: dict[str, int] = {"train": 0, "val": 1, "test": 2}
# Faces for pretraining trunks (``pretraining_faces``): an identity space of their own (split code 9), so no
# pretraining person is a person of any benchmark split, whatever the dataset seed. Not a benchmark split.
PRETRAIN_SPLIT, PRETRAIN_CODE = "pretrain", 9
_CODES: dict[str, int] = {**SPLIT_CODES, PRETRAIN_SPLIT: PRETRAIN_CODE}
IDENTITY_STRIDE = 10_000_000          # global identity id = split_code * IDENTITY_STRIDE + i // per_identity
MAX_IMAGES = IDENTITY_STRIDE
F32 = np.float32

# ---------------------------------------------------------------------------------------------
# The expression model: action units and emotion prototypes
# ---------------------------------------------------------------------------------------------

AUS: tuple[int, ...] = (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 16, 17, 20, 23, 24, 25, 26, 27)
AU_INDEX: dict[int, int] = {au: k for k, au in enumerate(AUS)}
AU_NAMES: dict[int, str] = {
    1: "inner brow raiser", 2: "outer brow raiser", 4: "brow lowerer", 5: "upper lid raiser",
    6: "cheek raiser", 7: "lid tightener", 9: "nose wrinkler", 10: "upper lip raiser",
    12: "lip corner puller", 14: "dimpler", 15: "lip corner depressor", 16: "lower lip depressor",
    17: "chin raiser", 20: "lip stretcher", 23: "lip tightener", 24: "lip pressor", 25: "lips part",
    26: "jaw drop", 27: "mouth stretch"}

# emotion (canonical id) -> variants: (name, {AU: weight at intensity 1}, one-sided?)
VARIANTS: dict[int, tuple[tuple[str, dict[int, float], bool], ...]] = {
    L.NEUTRAL: (("relaxed", {}, False),
                ("lips_parted", {25: 0.6}, False)),
    L.HAPPY: (("closed_smile", {6: 0.8, 12: 1.0}, False),
              ("open_smile", {6: 0.9, 12: 1.0, 10: 0.3, 25: 1.0, 26: 0.25}, False),
              ("laugh", {6: 1.0, 12: 1.0, 25: 1.0, 26: 0.8}, False)),
    L.SAD: (("frown", {1: 1.0, 4: 0.6, 15: 1.0}, False),
            ("pout", {1: 1.0, 4: 0.5, 15: 0.8, 17: 0.9}, False)),
    L.SURPRISE: (("jaw_drop", {1: 1.0, 2: 1.0, 5: 1.0, 25: 1.0, 26: 1.0}, False),
                 ("no_jaw_drop", {1: 1.0, 2: 1.0, 5: 1.0, 25: 0.3}, False),
                 ("mouth_stretch", {1: 1.0, 2: 1.0, 5: 1.0, 25: 1.0, 26: 0.7, 27: 0.8}, False)),
    L.FEAR: (("jaw_drop", {1: 1.0, 2: 0.8, 4: 0.7, 5: 1.0, 7: 0.5, 20: 1.0, 25: 1.0, 26: 0.8}, False),
             ("stretched_lips", {1: 1.0, 2: 0.8, 4: 0.7, 5: 1.0, 7: 0.5, 20: 1.0, 25: 0.8}, False)),
    L.DISGUST: (("closed", {9: 1.0, 10: 0.8, 15: 0.7}, False),
                ("sneer_teeth", {9: 1.0, 10: 1.0, 15: 0.4, 25: 0.9}, False),
                ("lower_lip", {9: 0.8, 10: 0.6, 15: 0.8, 16: 0.7, 25: 0.7}, False)),
    L.ANGER: (("pressed_lips", {4: 1.0, 5: 0.7, 7: 0.8, 23: 1.0, 24: 0.8}, False),
              ("bared_teeth", {4: 1.0, 5: 0.7, 7: 0.8, 10: 0.8, 23: 0.4, 25: 1.0, 26: 0.3}, False),
              ("shout", {4: 1.0, 5: 0.8, 7: 0.7, 10: 0.6, 25: 1.0, 26: 0.9}, False)),
    L.CONTEMPT: (("smirk", {12: 0.7, 14: 1.0}, True),
                 ("smirk_brow", {12: 0.5, 14: 0.9, 2: 0.4}, True)),
}
MAX_VARIANTS = max(len(v) for v in VARIANTS.values())


def _prototypes() -> np.ndarray:
    """AU prototypes, float64 (8 emotions, MAX_VARIANTS, len(AUS), 2 sides); one-sided units on side 1."""
    proto = np.zeros((8, MAX_VARIANTS, len(AUS), 2))
    for emotion, variants in VARIANTS.items():
        for v, (_, units, one_sided) in enumerate(variants):
            for au, weight in units.items():
                proto[emotion, v, AU_INDEX[au], 1] = weight
                proto[emotion, v, AU_INDEX[au], 0] = 0.0 if one_sided else weight
    return proto


PROTOTYPES = _prototypes()
N_VARIANTS = np.array([len(VARIANTS[e]) for e in range(8)])

# RAF-DB basic, train split, counts per emotion (the issue; shared/notes/datasets.md).
RAFDB_TRAIN_COUNTS: dict[int, int] = {L.SURPRISE: 1290, L.FEAR: 281, L.DISGUST: 717, L.HAPPY: 4772,
                                      L.SAD: 1982, L.ANGER: 705, L.NEUTRAL: 2524}
# RAF-DB has no contempt; with classes=8 contempt gets this share and the others keep their ratios
# (AffectNet's manually annotated train set has ~1.3% contempt, FERPlus ~0.6%).
CONTEMPT_SHARE = 0.02

# Which emotions blend with which (symmetric weights; the diagonal is never used). Pairs that people
# confuse in practice (surprise/fear, anger/disgust, sad/fear, ...) blend more often.
_AFFINITY_PAIRS: dict[tuple[int, int], float] = {
    (L.SURPRISE, L.FEAR): 3.0, (L.ANGER, L.DISGUST): 3.0, (L.SAD, L.FEAR): 2.0, (L.HAPPY, L.SURPRISE): 2.0,
    (L.SAD, L.NEUTRAL): 2.0, (L.CONTEMPT, L.DISGUST): 2.0, (L.CONTEMPT, L.HAPPY): 1.5, (L.SAD, L.DISGUST): 1.5,
    (L.ANGER, L.SAD): 1.0, (L.FEAR, L.DISGUST): 1.0}


def _affinity() -> np.ndarray:
    aff = np.full((8, 8), 0.5)
    aff[L.NEUTRAL, :] = aff[:, L.NEUTRAL] = 1.5
    for (a, b), w in _AFFINITY_PAIRS.items():
        aff[a, b] = aff[b, a] = w
    np.fill_diagonal(aff, 0.0)
    return aff


BLEND_AFFINITY = _affinity()

# ---------------------------------------------------------------------------------------------
# Palettes (sRGB / 255)
# ---------------------------------------------------------------------------------------------

SKIN_PALETTE = np.array([(247, 222, 204), (238, 201, 173), (225, 180, 143), (201, 152, 112),
                         (172, 120, 86), (133, 90, 63), (94, 63, 46)]) / 255.0
HAIR_COLOURS: tuple[str, ...] = ("black", "dark_brown", "brown", "auburn", "blond", "grey")
HAIR_PALETTE = np.array([(28, 22, 20), (58, 40, 30), (100, 68, 42), (135, 62, 35), (204, 168, 108),
                         (155, 150, 146)]) / 255.0
HAIR_COLOUR_P = (0.30, 0.25, 0.18, 0.07, 0.13, 0.07)
HAIR_STYLES: tuple[str, ...] = ("buzz", "short", "voluminous", "long")
HAIR_STYLE_P = (0.12, 0.38, 0.22, 0.28)
IRIS_PALETTE = np.array([(52, 32, 20), (92, 58, 32), (118, 96, 52), (78, 108, 70), (70, 108, 150),
                         (108, 118, 124)]) / 255.0
IRIS_P = (0.30, 0.25, 0.12, 0.10, 0.15, 0.08)
BG_TINTS = np.array([(122, 136, 162), (204, 188, 160), (112, 152, 112), (152, 122, 162), (92, 150, 152),
                     (212, 152, 92), (202, 142, 152), (152, 152, 92)]) / 255.0
BG_KINDS: tuple[str, ...] = ("plain", "blotchy", "striped")
BG_KIND_P = (0.3, 0.45, 0.25)
CLOTH_PALETTE = np.array([(40, 44, 60), (180, 40, 40), (230, 230, 225), (60, 100, 160), (90, 120, 70),
                          (120, 90, 140), (200, 160, 60), (70, 70, 70)]) / 255.0
FRAME_PALETTE = np.array([(20, 20, 22), (92, 60, 38), (190, 160, 90), (170, 172, 178)]) / 255.0
BEARDS: tuple[str, ...] = ("none", "stubble", "full")
SPURIOUS_FACTORS: tuple[str, ...] = ("glasses", "background")
PRIORS: tuple[str, ...] = ("rafdb", "uniform")

FACE_SCALE = 0.9     # face units -> image units at scale 1 (leaves room for hair and background)
ZF = 0.22            # depth of the facial features (face units) for the simulated yaw
NOSE_DEPTH = 0.25    # extra depth of the nose tip

# ---------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------

OPTIONS: dict[str, Any] = {
    "size": 64, "classes": 7, "n_train": 7000, "n_val": 1000, "n_test": 2000,
    "prior": "rafdb", "ambiguity": 0.2, "blend_min": 0.2, "blend_max": 0.45, "label_floor": 0.01,
    "intensity_min": 0.35, "intensity_max": 1.0, "au_jitter": 0.15, "au_noise": 0.05,
    "per_identity": 10, "nuisance": 1.0, "blur": 0.6, "noise": 0.015, "occlusion": 0.05,
    "glasses_rate": 0.2, "beard_rate": 0.15, "fringe_rate": 0.25,
    "spurious": 0.0, "spurious_factor": "glasses", "supersample": 1, "seed": 0,
    "workers": 0, "cache": True,
}
# Options that do not change a single byte of the output (kept out of the fingerprint).
_NOT_IN_FINGERPRINT = ("workers", "cache", "n_train", "n_val", "n_test")


def check_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults updated with ``options``, validated; a bad value raises a one-line ValueError."""
    opts = dict(OPTIONS)
    for key, value in options.items():
        if key not in OPTIONS:
            raise ValueError(f"Dataset 'synthetic' has no option {key!r}; allowed: {', '.join(sorted(OPTIONS))}.")
        opts[key] = value

    def bad(key: str, allowed: str) -> ValueError:
        return ValueError(f"The {key!r} option of dataset 'synthetic' must be {allowed}. Got {opts[key]!r} instead.")

    def number(key: str, lo: float, hi: float, kind: type = float) -> None:
        value = opts[key]
        ok_type = isinstance(value, (int, np.integer)) if kind is int else isinstance(value, (int, float, np.number))
        if isinstance(value, bool) or not ok_type or not lo <= value <= hi:
            raise bad(key, f"{'an int' if kind is int else 'a number'} in [{lo:g}, {hi:g}]")
        opts[key] = kind(value)

    number("size", 32, 224, int)
    if opts["classes"] not in (6, 7, 8) or isinstance(opts["classes"], bool):
        raise bad("classes", "6 (six basic), 7 (basic-7) or 8 (basic-8)")
    opts["classes"] = int(opts["classes"])
    for key in ("n_train", "n_val", "n_test"):
        number(key, 1, MAX_IMAGES, int)
    for key in ("ambiguity", "label_floor", "occlusion", "glasses_rate", "beard_rate", "fringe_rate",
                "spurious", "au_jitter", "au_noise"):
        number(key, 0.0, 1.0)
    number("blend_min", 0.0, 0.5)
    number("blend_max", opts["blend_min"], 0.5)
    number("intensity_min", 0.0, 1.5)
    number("intensity_max", opts["intensity_min"], 1.5)
    number("per_identity", 1, MAX_IMAGES, int)
    number("nuisance", 0.0, 2.0)
    number("blur", 0.0, 3.0)
    number("noise", 0.0, 0.5)
    number("supersample", 1, 4, int)
    number("seed", 0, 2**63 - 1, int)
    number("workers", 0, 256, int)
    if opts["label_floor"] * 8 >= 1.0:
        raise bad("label_floor", "below 1/8")
    if opts["prior"] not in PRIORS:
        raise bad("prior", f"one of {', '.join(PRIORS)}")
    if opts["spurious_factor"] not in SPURIOUS_FACTORS:
        raise bad("spurious_factor", f"one of {', '.join(SPURIOUS_FACTORS)}")
    if not isinstance(opts["cache"], bool):
        raise bad("cache", "true or false")
    return opts


def class_prior(classes: int, prior: str) -> np.ndarray:
    """Class probabilities, float64 (C,), in the order of ``labels.resolve_classes(classes)``."""
    ids = L.resolve_classes(classes)
    if prior == "uniform":
        return np.full(len(ids), 1.0 / len(ids))
    if prior != "rafdb":
        raise ValueError(f"prior={prior!r} is not allowed; use one of {', '.join(PRIORS)}.")
    p = np.array([RAFDB_TRAIN_COUNTS.get(c, 0) for c in ids], dtype=float)
    p /= p.sum()
    if L.CONTEMPT in ids:
        p = p * (1 - CONTEMPT_SHARE) + CONTEMPT_SHARE * (np.array(ids) == L.CONTEMPT)
    return p


# ---------------------------------------------------------------------------------------------
# Counter-based random numbers
# ---------------------------------------------------------------------------------------------

_MASK = (1 << 64) - 1


def _mix_int(z: int) -> int:
    """SplitMix64 finaliser on a Python int (mod 2**64)."""
    z &= _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class _Stream:
    """Uniform numbers keyed by (seed, stream, key, name): ``u(name)[j]`` depends on ``keys[j]`` only."""

    def __init__(self, seed: int, stream: str, keys: np.ndarray):
        base = _mix_int(_mix_int(seed + 0x9E3779B97F4A7C15) ^ zlib.crc32(stream.encode()))
        self._k = _mix(np.asarray(keys, dtype=np.uint64) ^ np.uint64(base))

    def u(self, name: str) -> np.ndarray:
        """(B,) float64 in [0, 1)."""
        salt = np.uint64(_mix_int(zlib.crc32(name.encode()) + 0x632BE59BD9B4E019))
        return (_mix(self._k + salt) >> np.uint64(11)).astype(np.float64) * 2.0 ** -53

    def uniform(self, name: str, lo: float, hi: float) -> np.ndarray:
        return lo + (hi - lo) * self.u(name)

    def choice(self, name: str, p: Sequence[float]) -> np.ndarray:
        """(B,) int64 categorical draws with probabilities ``p``."""
        cum = np.cumsum(p, dtype=float)
        return np.minimum(np.searchsorted(cum / cum[-1], self.u(name), side="right"), len(p) - 1)

    def bernoulli(self, name: str, p: float) -> np.ndarray:
        return self.u(name) < p


# ---------------------------------------------------------------------------------------------
# Factor sampling
# ---------------------------------------------------------------------------------------------


def sample_factors(split: str, index: np.ndarray | Sequence[int], **options: Any) -> dict[str, np.ndarray]:
    """Every factor of images ``index`` of ``split``: name -> array with one row per image.

    Pure: the row of image ``i`` depends on ``(seed, split, i, options)`` only.
    """
    opts = check_options(options)
    if split not in _CODES:
        raise ValueError(f"Dataset 'synthetic' has no split {split!r}; it has {', '.join(SPLITS)}.")
    index = np.asarray(index, dtype=np.int64).reshape(-1)
    code = _CODES[split]
    seed, k = opts["seed"], opts["nuisance"]
    B = len(index)
    img = _Stream(seed, "image", (code << 40) + index)
    gid = code * IDENTITY_STRIDE + index // opts["per_identity"]
    idn = _Stream(seed, "identity", gid)
    F: dict[str, np.ndarray] = {"index": index, "split_code": np.full(B, code), "identity": gid}

    # --- expression -------------------------------------------------------------------------
    classes = np.array(L.resolve_classes(opts["classes"]))
    label = img.choice("class", class_prior(opts["classes"], opts["prior"]))
    emotion = classes[label]
    variant = np.minimum((img.u("variant") * N_VARIANTS[emotion]).astype(np.int64), N_VARIANTS[emotion] - 1)
    intensity = img.uniform("intensity", opts["intensity_min"], opts["intensity_max"])
    blended = img.bernoulli("blend", opts["ambiguity"])
    rows = BLEND_AFFINITY[emotion][:, classes]                           # (B, C)
    cum = np.cumsum(rows, axis=1)
    pick = (cum < img.u("partner")[:, None] * cum[:, -1:]).sum(axis=1)
    partner = np.where(blended, classes[np.minimum(pick, len(classes) - 1)], -1)
    weight = np.where(blended, img.uniform("blend_w", opts["blend_min"], opts["blend_max"]), 0.0)
    p_safe = np.maximum(partner, 0)
    partner_variant = np.where(blended, np.minimum((img.u("partner_variant") * N_VARIANTS[p_safe]).astype(np.int64),
                                                   N_VARIANTS[p_safe] - 1), -1)
    side = (img.u("side") < 0.5).astype(np.int64)                     # one-sided units: 0 image-left, 1 right
    au = (1 - weight)[:, None, None] * PROTOTYPES[emotion, variant] \
        + weight[:, None, None] * PROTOTYPES[p_safe, np.maximum(partner_variant, 0)]
    au = np.where((side == 0)[:, None, None], au[:, :, ::-1], au) * intensity[:, None, None]
    for j, unit in enumerate(AUS):
        jitter = 1 + opts["au_jitter"] * (2 * img.u(f"au{unit}_jitter") - 1)
        idle = opts["au_noise"] * img.u(f"au{unit}_idle")
        au[:, j, :] = au[:, j, :] * jitter[:, None] + idle[:, None]
    F.update(label=label, emotion=emotion, variant=variant, intensity=intensity, partner=partner,
             partner_variant=partner_variant, blend_weight=weight, side=side, au=np.clip(au, 0.0, 1.25))

    # --- identity ------------------------------------------------------------------------------
    tone = idn.u("skin_tone")
    tone = tone * (0.85 + 0.15 * tone)            # a little skewed to lighter tones; polynomial: exact in IEEE
    pos = tone * (len(SKIN_PALETTE) - 1)
    lo_i = np.minimum(pos.astype(np.int64), len(SKIN_PALETTE) - 2)
    frac = (pos - lo_i)[:, None]
    skin = SKIN_PALETTE[lo_i] * (1 - frac) + SKIN_PALETTE[lo_i + 1] * frac
    skin = skin * (1 + 0.03 * (np.stack([idn.u(f"skin_{c}") for c in "rgb"], 1) - 0.5))
    hair_style = idn.choice("hair_style", HAIR_STYLE_P)
    F.update(
        face_width=idn.uniform("face_width", 0.9, 1.08), face_length=idn.uniform("face_length", 0.94, 1.06),
        jaw=idn.uniform("jaw", 0.12, 0.42), skin_tone=tone, skin_rgb=np.clip(skin, 0, 1),
        eye_spacing=idn.uniform("eye_spacing", 0.93, 1.07), eye_size=idn.uniform("eye_size", 0.88, 1.12),
        eye_height=idn.uniform("eye_height", -0.02, 0.02), eye_tilt=idn.uniform("eye_tilt", -0.01, 0.02),
        iris_colour=idn.choice("iris", IRIS_P),
        brow_thickness=idn.uniform("brow_thickness", 0.034, 0.056), brow_height=idn.uniform("brow_height", -0.02, 0.02),
        brow_arch=idn.uniform("brow_arch", 0.0, 0.035),
        nose_size=idn.uniform("nose_size", 0.85, 1.2), nose_length=idn.uniform("nose_length", 0.92, 1.08),
        mouth_size=idn.uniform("mouth_size", 0.88, 1.12), lip_thickness=idn.uniform("lip_thickness", 0.75, 1.25),
        lip_tone=idn.u("lip_tone"),
        hair_style=hair_style, hair_colour=idn.choice("hair_colour", HAIR_COLOUR_P),
        hair_volume=idn.u("hair_volume"), hair_length=idn.uniform("hair_length", 0.8, 1.25),
        fringe=(idn.u("fringe") < opts["fringe_rate"]) & (hair_style != 0),
        fringe_height=idn.uniform("fringe_height", -0.45, -0.37),
        beard=np.where(idn.u("beard") < opts["beard_rate"], 1 + (idn.u("beard_kind") < 0.55), 0),
    )

    # --- nuisances of this image ------------------------------------------------------------
    F.update(
        glasses=img.bernoulli("glasses", opts["glasses_rate"]), glasses_style=(img.u("glasses_style") < 0.5).astype(np.int64),
        glasses_colour=img.choice("glasses_colour", (0.45, 0.2, 0.15, 0.2)),
        roll=k * img.uniform("roll", -10.0, 10.0), scale=1 + k * img.uniform("scale", -0.07, 0.07),
        tx=k * img.uniform("tx", -0.05, 0.05), ty=k * img.uniform("ty", -0.05, 0.05),
        yaw=k * img.uniform("yaw", -0.25, 0.25),
        gaze_x=min(k, 1.0) * img.uniform("gaze_x", -0.8, 0.8), gaze_y=min(k, 1.0) * img.uniform("gaze_y", -0.5, 0.5),
        light_angle=img.uniform("light_angle", 0.0, 360.0), light=k * img.uniform("light", 0.0, 0.35),
        brightness=k * img.uniform("brightness", -0.08, 0.08), contrast=1 + k * img.uniform("contrast", -0.18, 0.12),
        wb_red=k * img.uniform("wb_red", -0.05, 0.05), wb_blue=k * img.uniform("wb_blue", -0.05, 0.05),
        bg_kind=img.choice("bg_kind", BG_KIND_P), bg_tint=np.minimum((img.u("bg_tint") * len(BG_TINTS)).astype(np.int64), len(BG_TINTS) - 1),
        bg_level=img.uniform("bg_level", 0.7, 1.15), bg_amp=img.uniform("bg_amp", 0.08, 0.3),
        bg_freq=img.uniform("bg_freq", 3.0, 9.0), bg_angle=img.uniform("bg_angle", 0.0, 180.0),
        bg_x=img.u("bg_x"), bg_y=img.u("bg_y"),
        cloth=img.choice("cloth", [1.0] * len(CLOTH_PALETTE)),
        occluded=img.bernoulli("occluded", opts["occlusion"]),
        occ_x=img.uniform("occ_x", -0.5, 0.5), occ_y=img.uniform("occ_y", -0.1, 0.7),
        occ_angle=img.uniform("occ_angle", -50.0, 50.0), occ_size=img.uniform("occ_size", 0.85, 1.15),
        blur=k * opts["blur"] * img.u("blur"), noise=k * opts["noise"] * img.u("noise"),
        noise_x=img.u("noise_x"), noise_y=img.u("noise_y"),
    )
    if split == "train" and opts["spurious"] > 0:
        _spurious(F, img, opts)
    return F


def spurious_target(label: np.ndarray, factor: str) -> np.ndarray:
    """The nuisance value that class index ``label`` is tied to by the spurious knob.

    glasses: worn by classes at odd positions of ``classes`` (1 happy, 3 surprise, 5 disgust, 7
    contempt), not by the others. background: tint ``label % 8``.
    """
    if factor == "glasses":
        return (np.asarray(label) % 2 == 1)
    if factor == "background":
        return np.asarray(label) % len(BG_TINTS)
    raise ValueError(f"spurious_factor={factor!r} is not allowed; use one of {', '.join(SPURIOUS_FACTORS)}.")


def _spurious(F: dict[str, np.ndarray], img: _Stream, opts: Mapping[str, Any]) -> None:
    """With probability ``spurious`` set the nuisance to the class's target value (train only).

    For glasses, P(glasses | target 1) - P(glasses | target 0) = spurious exactly in expectation; for
    the background, P(tint = label % 8) = spurious + (1 - spurious) / 8.
    """
    tied = img.u("spurious") < opts["spurious"]
    factor = opts["spurious_factor"]
    key = {"glasses": "glasses", "background": "bg_tint"}[factor]
    F[key] = np.where(tied, spurious_target(F["label"], factor), F[key]).astype(F[key].dtype)
    F["spurious_tied"] = tied


def label_distribution(F: Mapping[str, np.ndarray], classes: int, label_floor: float) -> np.ndarray:
    """Ground-truth label distributions, float32 (N, C): (1 - w) on the class, w on the partner."""
    ids = L.resolve_classes(classes)
    C = len(ids)
    position = np.full(8, -1)
    position[list(ids)] = np.arange(C)
    n = len(F["label"])
    dist = np.zeros((n, C))
    dist[np.arange(n), F["label"]] = 1 - F["blend_weight"]
    has = F["partner"] >= 0
    dist[np.flatnonzero(has), position[F["partner"][has]]] += F["blend_weight"][has]
    return (dist * (1 - C * label_floor) + label_floor).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Geometry: action units -> face shape (face units: the image spans [-1, 1], v points down)
# ---------------------------------------------------------------------------------------------


def _geometry(F: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-image shape parameters, float64 (B,) or (B, 2) for the two sides (image-left, image-right)."""
    au = F["au"]                                            # (B, len(AUS), 2)

    def s(n: int) -> np.ndarray:                            # (B, 2) one unit per side
        return au[:, AU_INDEX[n], :]

    def m(n: int) -> np.ndarray:                            # (B,) mean over sides
        return au[:, AU_INDEX[n], :].mean(axis=1)

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


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------

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

    def __init__(self, r: "_Renderer", sel: Any, box: _Box):
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


class _Renderer:
    """Draws one batch of faces on a planar float32 canvas (B, 3, S, S).

    Every pixel depends on its own image's factors only. A part's box holds its shapes' support
    (coverage is exactly zero outside it, and painting with coverage zero leaves a pixel bit-for-bit
    unchanged); coordinates are computed from absolute pixel positions, so where a box sits does not
    change a value. Only +, -, *, /, sqrt, abs, floor, min / max and clip touch pixels; sines and
    cosines are computed per image in Python.
    """

    FULL_WINDOWS = False      # tests set this to check that boxes never clip a shape

    def __init__(self, F: Mapping[str, np.ndarray], size: int, supersample: int = 1):
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
        self.img = np.empty((self.B, 3, S, S), dtype=F32)                 # (B, 3, S, S) in [0, 1]
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
        x_lo, x_hi = np.clip(np.floor(xs - hx), 0, S), np.clip(np.ceil(xs + hx) + 1, 0, S)
        y_lo, y_hi = np.clip(np.floor(ys - hy), 0, S), np.clip(np.ceil(ys + hy) + 1, 0, S)
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

    # --- the face, back to front -----------------------------------------------------------------

    def render(self) -> np.ndarray:
        """uint8 (B, size, size, 3)."""
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
        return self.finish()

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

    def finish(self) -> np.ndarray:
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
        out = np.empty((self.B, S, S, 3), np.uint8)
        for c in range(3):
            out[..., c] = planar[:, c]
        return out


def render(F: Mapping[str, np.ndarray], size: int = 64, supersample: int = 1) -> np.ndarray:
    """Images of the factor rows ``F`` (from ``sample_factors``), uint8 (B, size, size, 3)."""
    return _Renderer(F, size, supersample).render()


# ---------------------------------------------------------------------------------------------
# Splits: rendering in chunks, in this process or on worker processes
# ---------------------------------------------------------------------------------------------

BATCH = 64          # images per vectorised render call (arrays stay in the L2 cache)
CHUNK = 512         # images per worker task
PARALLEL_MIN = 4096  # below this many images a split is rendered in the calling process (a spawned
                     # worker costs ~0.6 s of imports, more than it saves on a smaller split)


def render_images(split: str, index: np.ndarray | Sequence[int], **options: Any) -> np.ndarray:
    """Images ``index`` of ``split``, uint8 (N, size, size, 3), rendered in this process.

    Image ``i`` is the same whatever else is rendered with it (``index`` may be any list).
    """
    opts = check_options(options)
    index = np.asarray(index, dtype=np.int64).reshape(-1)
    size = opts["size"]
    out = np.empty((len(index), size, size, 3), dtype=np.uint8)
    for start in range(0, len(index), CHUNK):              # sampling is cheaper in long runs
        F = sample_factors(split, index[start:start + CHUNK], **opts)
        for b in range(0, len(F["index"]), BATCH):
            rows = {k: v[b:b + BATCH] for k, v in F.items()}
            out[start + b:start + b + BATCH] = render(rows, size, opts["supersample"])
    return out


def _worker_init() -> None:
    """Worker processes keep freed memory for reuse instead of returning it to the OS.

    The renderer allocates many short-lived arrays; with glibc's default trimming, each batch
    page-faults them in again (about a third of the render time). ``mallopt(M_TOP_PAD)`` changes this
    for the worker process only (it is ours), never for the caller's process.
    """
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-2, 256 << 20)          # M_TOP_PAD = -2: keep 256 MiB at the top of the heap
    except (OSError, AttributeError):        # not glibc: nothing to tune
        pass


def _render_chunk(split: str, start: int, stop: int, options: dict[str, Any]) -> tuple[int, np.ndarray]:
    return start, render_images(split, np.arange(start, stop), **options)


def resolve_workers(workers: int, n: int) -> int:
    """Processes to use for ``n`` images: ``workers`` if set, else all cores for big splits, else 1; always 1
    inside a daemonic process (a cell of the local executor's pool: the cores are busy with cells already,
    and such a process may not start children)."""
    import multiprocessing
    if multiprocessing.current_process().daemon:
        return 1
    if workers:
        return workers
    if n < PARALLEL_MIN:
        return 1
    return max(1, min(os.cpu_count() or 1, -(-n // CHUNK)))


def iter_split(split: str, n: int, **options: Any) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, images)`` chunks covering images 0..n-1 of ``split``, in any order.

    With one worker (option ``workers``; 0 = all cores for big splits) the chunks are rendered here;
    with more, on a pool of spawned processes (at most two chunks in flight per worker). Both give
    the same bytes.
    """
    opts = check_options(options)
    workers = resolve_workers(opts["workers"], n)
    chunks = [(s, min(s + CHUNK, n)) for s in range(0, n, CHUNK)]
    if workers <= 1:
        for s, e in chunks:
            yield s, render_images(split, np.arange(s, e), **opts)
        return
    import multiprocessing
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_worker_init) as pool:
        pending: set = set()
        todo = iter(chunks)
        for s, e in todo:
            pending.add(pool.submit(_render_chunk, split, s, e, opts))
            if len(pending) >= 2 * workers:
                break
        while pending:
            done = next(iter(as_completed(pending)))
            pending.remove(done)
            yield done.result()
            nxt = next(todo, None)
            if nxt is not None:
                pending.add(pool.submit(_render_chunk, split, nxt[0], nxt[1], opts))


def render_split(split: str, n: int | None = None, **options: Any) -> np.ndarray:
    """All images of ``split`` (or the first ``n``), uint8 (N, size, size, 3), without the cache."""
    opts = check_options(options)
    n = opts[f"n_{split}"] if n is None else n
    out = np.empty((n, opts["size"], opts["size"], 3), dtype=np.uint8)
    for start, chunk in iter_split(split, n, **opts):
        out[start:start + len(chunk)] = chunk
    return out


# ---------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------


def fingerprint(split: str, **options: Any) -> str:
    """sha256 of the generator version, the split and every option that changes a pixel or a label."""
    opts = check_options(options)
    kept = {k: v for k, v in opts.items() if k not in _NOT_IN_FINGERPRINT}
    return fingerprint_of("synthetic", GENERATOR_VERSION, split, opts[f"n_{split}"], kept)


_NAMED: dict[str, tuple[str, ...]] = {"hair_style": HAIR_STYLES, "hair_colour": HAIR_COLOURS, "beard": BEARDS,
                                      "bg_kind": BG_KINDS}
_FACTOR_SKIP = ("split_code", "au", "skin_rgb", "label")


def factors_frame(F: Mapping[str, np.ndarray]) -> Any:
    """The factor table: one row per image, one column per factor (pandas DataFrame).

    Action units are one column each (``au01`` .. ``au27``, the stronger side) plus ``side``
    (image side of one-sided units: 'left' or 'right'; only meaningful when ``one_sided``).
    """
    import pandas as pd
    cols: dict[str, Any] = {"index": F["index"], "identity": F["identity"], "label": F["label"],
                            "emotion": F["emotion"], "emotion_name": [L.NAMES[e] for e in F["emotion"]],
                            "variant": F["variant"],
                            "variant_name": [VARIANTS[e][v][0] for e, v in zip(F["emotion"], F["variant"])],
                            "intensity": F["intensity"], "blend_partner": F["partner"],
                            "blend_partner_name": [L.NAMES[p] if p >= 0 else "" for p in F["partner"]],
                            "blend_weight": F["blend_weight"], "partner_variant": F["partner_variant"],
                            "one_sided": np.array([VARIANTS[e][v][2] for e, v in zip(F["emotion"], F["variant"])])
                            | (F["partner"] == L.CONTEMPT),
                            "side": np.where(F["side"] == 1, "right", "left")}
    for j, unit in enumerate(AUS):
        cols[f"au{unit:02d}"] = F["au"][:, j, :].max(axis=1)
    for name, value in F.items():
        if name in cols or name in _FACTOR_SKIP or name in ("partner", "side"):
            continue
        cols[name] = np.asarray(_NAMED[name])[value] if name in _NAMED else value
    for c, channel in enumerate("rgb"):
        cols[f"skin_{channel}"] = F["skin_rgb"][:, c]
    return pd.DataFrame(cols)


@register_dataset("synthetic")
class SyntheticFER(DatasetAdapter):
    """Synthetic faces with known generative factors (FACS action units, identities, nuisances).

    Rendered on the fly (no download) and cached like any decoded dataset. Splits train / val /
    test have disjoint identities (``groups``); ``label_dist`` is the ground-truth blend of two
    emotions; ``factors`` holds every factor of every image. Dataset card:
    fer_bench/data/synthetic.md. Options: see ``OPTIONS`` in fer_bench/data/synthetic.py.
    """

    splits = SPLITS
    options = OPTIONS
    needs_root = False

    def load(self, split: str, root: Path | None, **options: Any) -> FERDataset:
        opts = check_options(options)
        if split not in SPLIT_CODES:
            raise ValueError(f"Dataset 'synthetic' has no split {split!r}; it has {', '.join(SPLITS)}.")
        n, size = opts[f"n_{split}"], opts["size"]
        key = fingerprint(split, **opts)
        F = sample_factors(split, np.arange(n), **opts)
        if opts["cache"]:
            images = cached_images(key, n, (size, size, 3),
                                   lambda: iter_split(split, n, **opts),
                                   version=f"synthetic-{GENERATOR_VERSION}")
        else:
            images = render_split(split, n, **opts)
        meta = {"generator_version": GENERATOR_VERSION, "options": opts, "aus": AUS,
                "variants": {L.NAMES[e]: [v[0] for v in vs] for e, vs in VARIANTS.items()},
                "prior": class_prior(opts["classes"], opts["prior"]).tolist()}
        if opts["spurious"] > 0:
            meta["spurious"] = {"factor": opts["spurious_factor"], "strength": opts["spurious"], "splits": ["train"]}
        return FERDataset(images=images, labels=F["label"], classes=L.resolve_classes(opts["classes"]),
                          name="synthetic", split=split, fingerprint=key,
                          label_dist=label_distribution(F, opts["classes"], opts["label_floor"]),
                          groups=F["identity"], factors=factors_frame(F), meta=meta)


@dataclasses.dataclass(frozen=True)
class PretrainFaces:
    """Faces for pretraining a trunk on a task with no expression information: images and identities only.

    Expressions, pose, lighting and every other nuisance are drawn as in the dataset (so the trunk sees
    the same kind of faces), but nothing about them is kept: no label, no action unit, no distribution.
    """

    images: np.ndarray            # uint8 (N, size, size, 3)
    identity: np.ndarray          # int64 (N,), 0..n_identities-1
    global_identity: np.ndarray   # int64 (N,), ids in the generator's identity space (PRETRAIN_CODE * IDENTITY_STRIDE + ...)
    options: dict[str, Any]


def pretraining_faces(n_identities: int, per_identity: int, **options: Any) -> PretrainFaces:
    """``n_identities`` persons of the pretraining identity space, ``per_identity`` images each."""
    opts = check_options({**options, "per_identity": per_identity})
    n = n_identities * per_identity
    images = np.empty((n, opts["size"], opts["size"], 3), dtype=np.uint8)
    for start, chunk in iter_split(PRETRAIN_SPLIT, n, **opts):
        images[start:start + len(chunk)] = chunk
    gid = PRETRAIN_CODE * IDENTITY_STRIDE + np.arange(n) // per_identity
    return PretrainFaces(images=images, identity=np.arange(n) // per_identity, global_identity=gid, options=opts)


# ---------------------------------------------------------------------------------------------
# Looking at it: an ImageFolder export and a contact sheet
# ---------------------------------------------------------------------------------------------


def _first_per_class(split: str, per_class: int, blended: bool = True, **options: Any) -> np.ndarray:
    """Indices of the first ``per_class`` images of each class in ``split`` (in index order)."""
    opts = check_options(options)
    n, C = opts[f"n_{split}"], len(L.resolve_classes(opts["classes"]))
    picked: list[list[int]] = [[] for _ in range(C)]
    for start in range(0, n, 4096):
        F = sample_factors(split, np.arange(start, min(start + 4096, n)), **opts)
        keep = np.ones(len(F["index"]), bool) if blended else F["partner"] < 0
        for i, c, k in zip(F["index"], F["label"], keep):
            if k and len(picked[c]) < per_class:
                picked[c].append(int(i))
        if all(len(p) >= per_class for p in picked):
            break
    return np.array(sorted(i for p in picked for i in p), dtype=np.int64)


def contact_sheet(path: str | Path, split: str = "train", columns: int = 10, zoom: int = 0,
                  **options: Any) -> Path:
    """A PNG grid: one row per emotion, ``columns`` unblended examples sorted by intensity (weak to strong).

    Each cell shows a dataset image (different identities, poses and lighting) upscaled ``zoom``
    times (0: to about 128 px) with its intensity and variant below.
    """
    from PIL import Image, ImageDraw, ImageFont
    opts = check_options(options)
    index = _first_per_class(split, columns, blended=False, **opts)
    F = sample_factors(split, index, **opts)
    images = render_images(split, index, **opts)
    size = opts["size"]
    zoom = zoom or max(1, round(128 / size))
    cell, label_w, caption = size * zoom, 90, 14
    classes = L.resolve_classes(opts["classes"])
    sheet = Image.new("RGB", (label_w + columns * (cell + 4), len(classes) * (cell + caption + 6) + 4), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for row, c in enumerate(range(len(classes))):
        rows = np.flatnonzero(F["label"] == c)
        rows = rows[np.argsort(F["intensity"][rows], kind="stable")]
        y = 4 + row * (cell + caption + 6)
        draw.text((6, y + cell // 2 - 6), L.DISPLAY[classes[c]], fill="black", font=font)
        for col, r in enumerate(rows[:columns]):
            x = label_w + col * (cell + 4)
            sheet.paste(Image.fromarray(images[r]).resize((cell, cell), Image.NEAREST), (x, y))
            name = VARIANTS[int(F["emotion"][r])][int(F["variant"][r])][0]
            draw.text((x, y + cell + 1), f"{F['intensity'][r]:.2f} {name}"[: max(4, cell // 6)], fill="black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def export(out_dir: str | Path, n_per_class: int = 20, splits: Sequence[str] = SPLITS, sheet_columns: int = 10,
           **options: Any) -> dict[str, Any]:
    """Write an ImageFolder tree, a factor table and a contact sheet of the synthetic dataset.

    ``out_dir/<split>/<emotion>/<index>.png`` for the first ``n_per_class`` images of each class of
    each split (their dataset indices), ``out_dir/factors.csv`` (one row per exported image: split,
    path and every factor) and ``out_dir/contact_sheet.png`` (see ``contact_sheet``). Returns the
    paths and counts.
    """
    from PIL import Image
    import pandas as pd
    opts = check_options(options)
    out = Path(out_dir)
    classes = L.resolve_classes(opts["classes"])
    tables, counts = [], {}
    for split in splits:
        if split not in SPLIT_CODES:
            raise ValueError(f"Dataset 'synthetic' has no split {split!r}; it has {', '.join(SPLITS)}.")
        index = _first_per_class(split, n_per_class, **opts)
        F = sample_factors(split, index, **opts)
        images = render_images(split, index, **opts)
        paths = []
        for img, i, c in zip(images, index, F["label"]):
            p = out / split / L.NAMES[classes[c]] / f"{i:06d}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(p)
            paths.append(str(p.relative_to(out)))
        table = factors_frame(F)
        table.insert(0, "path", paths)
        table.insert(0, "split", split)
        tables.append(table)
        counts[split] = {L.NAMES[classes[c]]: int((F["label"] == c).sum()) for c in range(len(classes))}
    csv_path = out / "factors.csv"
    pd.concat(tables, ignore_index=True).to_csv(csv_path, index=False, quoting=csv.QUOTE_MINIMAL)
    sheet = contact_sheet(out / "contact_sheet.png", columns=sheet_columns, **opts)
    log.info("exported %s images to %s", sum(sum(c.values()) for c in counts.values()), out)
    return {"out_dir": str(out), "factors": str(csv_path), "contact_sheet": str(sheet), "counts": counts}
