"""The generative factors of the synthetic dataset: the expression model, the identities and the nuisances.

``sample_factors(split, index, **options)`` draws every factor of images ``index`` of a split (see the
package docstring for the model); it is a pure function of ``(seed, split, i, options)``: every random
number is a counter-based hash (:class:`_Stream`), so any subset of images can be drawn alone, in any
order, in any process. ``OPTIONS`` declares the dataset's options and ``check_options`` checks them.
"""
from __future__ import annotations

import zlib
from typing import Any, Mapping, Sequence

import numpy as np

from fer_bench import labels as L
from fer_bench.data.dataset import fingerprint_of

GENERATOR_VERSION = "1.1"
SPLITS: tuple[str, ...] = ("train", "val", "test")
SPLIT_CODES: dict[str, int] = {"train": 0, "val": 1, "test": 2}
# Faces for pretraining trunks (``pretraining_faces``): an identity space of their own (split code 9), so no
# pretraining person is a person of any benchmark split, whatever the dataset seed. Not a benchmark split.
PRETRAIN_SPLIT, PRETRAIN_CODE = "pretrain", 9
_CODES: dict[str, int] = {**SPLIT_CODES, PRETRAIN_SPLIT: PRETRAIN_CODE}
IDENTITY_STRIDE = 10_000_000          # global identity id = split_code * IDENTITY_STRIDE + i // per_identity
MAX_IMAGES = IDENTITY_STRIDE

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


def fingerprint(split: str, **options: Any) -> str:
    """sha256 of the generator version, the split and every option that changes a pixel or a label."""
    opts = check_options(options)
    kept = {k: v for k, v in opts.items() if k not in _NOT_IN_FINGERPRINT}
    return fingerprint_of("synthetic", GENERATOR_VERSION, split, opts[f"n_{split}"], kept)


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
