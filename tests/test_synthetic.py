"""Tests of the synthetic FER dataset (fer_bench/data/synthetic/).

Fast by design: factor sampling is checked on thousands of rows (no rendering), pixels on a few
dozen small images. The action-unit tests render one person with every nuisance off and measure
where pixels moved; they use people with mid skin tones, where skin differs clearly from both the
whites of the eyes and the lips.
"""
from __future__ import annotations

import hashlib
import platform
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from fer_bench import labels as L
from fer_bench.data import FERDataset, get_dataset, load_dataset
from fer_bench.data import synthetic as S
from fer_bench.data.synthetic import splits
from fer_bench.data.synthetic.geometry import _geometry
from fer_bench.data.synthetic.renderer import _Renderer

SMALL = dict(size=32, n_train=96, n_val=48, n_test=64)
CLEAN = dict(nuisance=0.0, au_noise=0.0, au_jitter=0.0, glasses_rate=0.0, beard_rate=0.0, fringe_rate=0.0,
             occlusion=0.0)


# --- registration, options ------------------------------------------------------------------------


def test_registered_with_typed_defaults() -> None:
    adapter = get_dataset("synthetic")
    assert adapter is S.SyntheticFER and adapter.needs_root is False
    assert adapter.splits == ("train", "val", "test")
    expected = dict(size=64, classes=7, n_train=7000, n_val=1000, n_test=2000, ambiguity=0.2, intensity_min=0.35,
                    spurious=0.0, spurious_factor="glasses", prior="rafdb", seed=0)
    for key, value in expected.items():
        assert adapter.options[key] == value and type(adapter.options[key]) is type(value)


@pytest.mark.parametrize("options, name", [
    (dict(size=16), "size"), (dict(size=300), "size"), (dict(classes=5), "classes"),
    (dict(prior="affectnet"), "prior"), (dict(spurious_factor="hat"), "spurious_factor"),
    (dict(spurious=1.5), "spurious"), (dict(blend_max=0.6), "blend_max"), (dict(ambiguity=-0.1), "ambiguity"),
    (dict(intensity_min=0.9, intensity_max=0.5), "intensity_max"), (dict(n_train=0), "n_train"),
    (dict(size="abc"), "size"), (dict(colour=1), "colour"),
])
def test_bad_options_fail_in_one_line(options: dict, name: str) -> None:
    with pytest.raises(ValueError) as info:
        load_dataset("synthetic", "test", **options)
    message = str(info.value)
    assert "\n" not in message and name in message


def test_options_from_the_command_line_are_coerced() -> None:
    data = load_dataset("synthetic", "val", **{k: str(v) for k, v in SMALL.items()}, cache="false")
    assert data.images.shape == (48, 32, 32, 3)


# --- determinism -------------------------------------------------------------------------------------


def test_same_options_same_bytes_and_fingerprint() -> None:
    a = S.render_images("val", np.arange(20), size=32, seed=3)
    b = S.render_images("val", np.arange(20), size=32, seed=3)
    c = S.render_images("val", np.arange(20), size=32, seed=4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert S.fingerprint("val", size=32, seed=3) == S.fingerprint("val", size=32, seed=3, workers=2, n_test=5)
    assert S.fingerprint("val", size=32, seed=3) != S.fingerprint("val", size=32, seed=4)
    assert S.fingerprint("val", size=32) != S.fingerprint("val", size=32, noise=0.01)
    assert S.fingerprint("val", size=32) != S.fingerprint("test", size=32)


@pytest.mark.parametrize("size, supersample, options", [
    (32, 1, dict(nuisance=2.0, occlusion=0.5, glasses_rate=0.5, beard_rate=0.5, blur=2.0)),
    (48, 2, dict(classes=8, intensity_max=1.5)),
])
def test_an_image_alone_equals_its_batch_version(size: int, supersample: int, options: dict) -> None:
    index = np.arange(40)
    batch = S.render_images("test", index, size=size, supersample=supersample, **options)
    for i in (0, 7, 19, 33):
        alone = S.render_images("test", [i], size=size, supersample=supersample, **options)[0]
        np.testing.assert_array_equal(alone, batch[i])
    shuffled = S.render_images("test", index[::-1], size=size, supersample=supersample, **options)
    np.testing.assert_array_equal(shuffled[::-1], batch)


@pytest.mark.parametrize("size", [32, 96])
def test_part_boxes_hold_their_shapes(size: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Boxes are an optimisation: drawing every part on the whole frame gives the same bytes."""
    F = S.sample_factors("train", np.arange(24), nuisance=2.0, occlusion=0.5, glasses_rate=0.5, beard_rate=0.5,
                         blur=1.5, intensity_max=1.5)
    boxed = S.render(F, size)
    monkeypatch.setattr(_Renderer, "FULL_WINDOWS", True)
    np.testing.assert_array_equal(S.render(F, size), boxed)


def test_parallel_equals_serial(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(splits, "CHUNK", 40)            # 4 chunks over 2 threads
    serial = S.render_split("train", 150, size=32, workers=1)
    parallel = S.render_split("train", 150, size=32, workers=2)
    np.testing.assert_array_equal(parallel, serial)
    chunks = dict(S.iter_split("train", 150, size=32, workers=3))      # the cache's path, in any order
    assert sorted(chunks) == [0, 40, 80, 120]
    np.testing.assert_array_equal(np.concatenate([chunks[s] for s in sorted(chunks)]), serial)


# sha256 of the bytes of render_images, recorded with the renderer as it was before the speed work of issue #23
# (GENERATOR_VERSION 1.1). A speed-up must not change one byte; a change to the drawing bumps GENERATOR_VERSION
# and these digests together. Together the cases draw every part (hand, glasses, beard, fringe, long hair), the
# sub-pixel details at 96 px and the box reduction of supersampling.
PINNED = [
    ("train", 64, dict(size=64), "7b36da8d7a8d8aed4248e255c9d0bd4b94a3af84127477f1c6a25c6edb8cdd62"),
    ("test", 24, dict(size=32, nuisance=2.0, occlusion=0.5, glasses_rate=0.5, beard_rate=0.5, fringe_rate=0.5,
                      blur=2.0), "79f8feae9b2bc102c00ffdea98247aadd14df9bbc8e3cc5b3a922e26af27c398"),
    ("val", 8, dict(size=96, classes=8, intensity_max=1.5),
     "106bd398c0e72885755c05942d9724405a0b8885c5de45350d2716232eaf953e"),
    ("train", 8, dict(size=40, supersample=2, seed=5),
     "691a26c4cd01327fd65f22df6d0e2b350162ec2c08708569e8fd036d7cc28020"),
]


@pytest.mark.parametrize("split, n, options, digest", PINNED)
def test_rendered_bytes_are_pinned(split: str, n: int, options: dict, digest: str) -> None:
    assert S.GENERATOR_VERSION == "1.1", "the drawing changed: record new digests for the new version"
    images = S.render_images(split, np.arange(n), **options)
    assert hashlib.sha256(images.tobytes()).hexdigest() == digest


def test_batches_that_do_not_divide_a_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = S.render_images("val", np.arange(50), size=32)
    monkeypatch.setattr(splits, "CHUNK", 40)
    monkeypatch.setattr(splits, "BATCH_PIXELS", 24 * 32 * 32)   # batches of 24, 16 | 10 inside chunks of 40 | 10
    assert S.batch_size(32) == 24
    np.testing.assert_array_equal(S.render_images("val", np.arange(50), size=32), expected)
    out = np.zeros_like(expected)
    assert S.render_images("val", np.arange(50), out=out, size=32) is out
    np.testing.assert_array_equal(out, expected)
    with pytest.raises(ValueError, match="'out' must be uint8"):
        S.render_images("val", np.arange(50), out=out[:10], size=32)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="about glibc's malloc")
def test_a_fresh_process_does_not_page_fault_each_batch_in_again() -> None:
    """Without ``splits._hint_allocator`` a fresh process faulted ~40-60 pages per 64 px image in again, every batch."""
    code = ("import resource, numpy as np; from fer_bench.data import synthetic as S; "
            "S.render_images('train', np.arange(256)); f = resource.getrusage(resource.RUSAGE_SELF).ru_minflt; "
            "S.render_images('train', np.arange(256, 768)); "
            "print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f) / 512)")
    faults = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert faults < 15, faults              # the 6 MB output array alone is ~3 faults per image


def test_render_leaves_numpy_settings_as_it_found_them() -> None:
    before = np.getbufsize()
    F = S.sample_factors("train", np.arange(4))
    out = np.zeros((4, 32, 32, 3), np.uint8)
    assert S.render(F, 32, out=out) is out and out.any()
    assert np.getbufsize() == before


# --- the protocol ------------------------------------------------------------------------------------


def test_splits_have_disjoint_identities() -> None:
    groups = {split: S.sample_factors(split, np.arange(3000), per_identity=7)["identity"] for split in S.SPLITS}
    for a in S.SPLITS:
        for b in S.SPLITS:
            if a < b:
                assert not set(groups[a]) & set(groups[b])
    counts = np.unique(groups["train"], return_counts=True)[1]
    assert counts.max() == 7 and len(counts) == -(-3000 // 7)


@pytest.mark.parametrize("classes, prior", [(7, "rafdb"), (8, "rafdb"), (6, "rafdb"), (7, "uniform")])
def test_class_prior(classes: int, prior: str) -> None:
    n = 20000
    F = S.sample_factors("train", np.arange(n), classes=classes, prior=prior)
    ids = L.resolve_classes(classes)
    p = S.class_prior(classes, prior)
    if prior == "rafdb":
        raf = np.array([S.RAFDB_TRAIN_COUNTS.get(c, 0) for c in ids], float)
        share = 1 - S.CONTEMPT_SHARE if L.CONTEMPT in ids else 1.0
        np.testing.assert_allclose(p[[c != L.CONTEMPT for c in ids]], share * raf[raf > 0] / raf.sum(), rtol=1e-12)
    assert np.isclose(p.sum(), 1) and (classes != 6 or L.NEUTRAL not in ids)
    observed = np.bincount(F["label"], minlength=len(ids)) / n
    tolerance = 4 * np.sqrt(p * (1 - p) / n) + 1e-3
    assert np.all(np.abs(observed - p) < tolerance), (observed, p)
    assert set(np.unique(F["emotion"])) == set(ids)


def test_label_dist_holds_the_blend_weights() -> None:
    n, floor = 5000, 0.01
    F = S.sample_factors("train", np.arange(n), ambiguity=0.3, classes=8, label_floor=floor)
    dist = S.label_distribution(F, 8, floor)
    assert dist.dtype == np.float32 and dist.shape == (n, 8)
    np.testing.assert_allclose(dist.sum(axis=1), 1.0, atol=1e-6)
    blended = F["partner"] >= 0
    assert abs(blended.mean() - 0.3) < 0.03
    w = F["blend_weight"]
    assert np.all((w[blended] >= 0.2) & (w[blended] <= 0.45)) and np.all(w[~blended] == 0)
    rows = np.arange(n)
    np.testing.assert_allclose(dist[rows, F["label"]], (1 - w) * (1 - 8 * floor) + floor, atol=1e-6)
    np.testing.assert_allclose(dist[rows[blended], F["partner"][blended]], w[blended] * (1 - 8 * floor) + floor,
                               atol=1e-6)
    assert np.all(dist.argmax(axis=1) == F["label"])          # the label is the primary emotion
    assert np.all(F["partner"][blended] != F["emotion"][blended])


def test_factor_table_is_complete() -> None:
    data = load_dataset("synthetic", "test", **SMALL)
    assert isinstance(data, FERDataset) and data.images.shape == (64, 32, 32, 3)
    table = data.factors
    assert isinstance(table, pd.DataFrame) and len(table) == len(data) == 64
    expected = {"index", "identity", "label", "emotion", "variant", "variant_name", "intensity", "blend_partner",
                "blend_weight", "glasses", "beard", "fringe", "hair_style", "skin_tone", "roll", "scale", "tx", "ty",
                "yaw", "light", "light_angle", "brightness", "contrast", "bg_kind", "bg_tint", "occluded", "blur",
                "noise", *(f"au{a:02d}" for a in S.AUS)}
    assert expected <= set(table.columns)
    assert not table.isna().any().any()
    np.testing.assert_array_equal(table["index"], np.arange(64))
    np.testing.assert_array_equal(table["label"], data.labels)
    np.testing.assert_array_equal(table["identity"], data.groups)
    assert data.classes == L.BASIC7 and data.label_dist.shape == (64, 7)


def test_contempt_is_one_sided_and_variants_are_recorded() -> None:
    F = S.sample_factors("train", np.arange(4000), classes=8, ambiguity=0.0, au_noise=0.0)
    contempt = F["emotion"] == L.CONTEMPT
    au12 = F["au"][contempt][:, S.AU_INDEX[12]]                         # (n, 2 sides)
    assert np.all(au12.min(axis=1) == 0) and np.all(au12.max(axis=1) > 0)
    happy = F["emotion"] == L.HAPPY
    assert np.all(F["au"][happy][:, S.AU_INDEX[12]].min(axis=1) > 0)
    for e in range(7):
        assert set(np.unique(F["variant"][F["emotion"] == e])) == set(range(len(S.VARIANTS[e])))


def test_intensity_scales_the_action_units() -> None:
    F = S.sample_factors("train", np.arange(3000), ambiguity=0.0, au_noise=0.0, au_jitter=0.0)
    assert F["intensity"].min() >= 0.35 and F["intensity"].max() <= 1.0
    surprise = np.flatnonzero(F["emotion"] == L.SURPRISE)
    np.testing.assert_allclose(F["au"][surprise, S.AU_INDEX[1], 0], F["intensity"][surprise])
    assert np.all(F["au"][F["emotion"] == L.NEUTRAL][:, S.AU_INDEX[12]] == 0)


# --- the spurious knob ---------------------------------------------------------------------------------


def test_spurious_glasses_follow_the_class_in_train_only() -> None:
    n, s = 20000, 0.6
    for split, expected in (("train", s), ("test", 0.0), ("val", 0.0)):
        F = S.sample_factors(split, np.arange(n), spurious=s, spurious_factor="glasses")
        target = S.spurious_target(F["label"], "glasses")
        gap = F["glasses"][target].mean() - F["glasses"][~target].mean()
        assert abs(gap - expected) < 0.03, (split, gap)


def test_spurious_background_tint_follows_the_class_in_train_only() -> None:
    n, s = 20000, 0.5
    for split, expected in (("train", s + (1 - s) / 8), ("test", 1 / 8)):
        F = S.sample_factors(split, np.arange(n), spurious=s, spurious_factor="background")
        match = (F["bg_tint"] == S.spurious_target(F["label"], "background")).mean()
        assert abs(match - expected) < 0.02, (split, match)


def test_spurious_is_off_by_default() -> None:
    F = S.sample_factors("train", np.arange(20000))
    target = S.spurious_target(F["label"], "glasses")
    assert abs(F["glasses"][target].mean() - F["glasses"][~target].mean()) < 0.03


# --- action units move the pixels they should ---------------------------------------------------------


AU_SIZE = 96      # a handful of images; at 96 px one face unit is about 43 pixels


def _people(count: int = 3) -> np.ndarray:
    F = S.sample_factors("test", np.arange(0, 4000, 10), **CLEAN)
    mid = np.flatnonzero((F["skin_tone"] > 0.35) & (F["skin_tone"] < 0.8))
    return F["index"][mid[:count]]


def _faces(index: int, units: list[int]) -> tuple[np.ndarray, dict]:
    """One person, neutral then each unit at intensity 1 (both sides); every nuisance off."""
    F = S.sample_factors("test", np.full(len(units) + 1, index), **CLEAN)
    F["au"] = np.zeros_like(F["au"])
    for k, unit in enumerate(units, 1):
        F["au"][k, S.AU_INDEX[unit], :] = 1.0
    return S.render(F, AU_SIZE).astype(float), _geometry(F)


def _px(u: float) -> float:
    return (u * S.FACE_SCALE + 1) * AU_SIZE / 2 - 0.5         # face units -> pixels, no pose


def _band(a: float, b: float) -> slice:
    return slice(max(0, round(_px(a))), min(AU_SIZE, round(_px(b)) + 1))


def _centroid_row(weight: np.ndarray, rows: slice, cols: slice) -> float:
    w = weight[rows, cols]
    return float((w * np.arange(rows.start, rows.stop)[:, None]).sum() / w.sum())


@pytest.fixture(scope="module", params=[0, 1, 2])
def faces(request):
    units = [1, 2, 4, 5, 6, 7, 9, 10, 12, 15, 20, 23, 26]
    imgs, G = _faces(int(_people()[request.param]), units)
    skin, lip, cavity = G["skin"][0] * 255, G["lip"][0] * 255, np.array([0.2, 0.05, 0.06]) * 255
    direction = lip - skin
    m = {"img": dict(zip(["none", *units], imgs)), "G": {k: v[0] for k, v in G.items()}}
    m["off_skin"] = {k: np.linalg.norm(v - skin, axis=-1) for k, v in m["img"].items()}
    m["lipness"] = {k: np.clip(((v - skin) @ direction) / (direction @ direction), 0, 1)
                    * (np.linalg.norm(v - cavity, axis=-1) > 60) for k, v in m["img"].items()}
    m["cavity"] = {k: np.linalg.norm(v - cavity, axis=-1) < 50 for k, v in m["img"].items()}
    return m


def test_au1_au2_raise_the_inner_and_outer_brow(faces) -> None:
    G, w = faces["G"], faces["off_skin"]
    rows = _band(G["bv"][1] - 0.2, G["bv"][1] + 0.1)
    inner, outer = _band(G["bi"][1], G["bi"][1] + 0.1), _band(G["bo"][1] - 0.1, G["bo"][1])

    def rise(unit, cols):
        return _centroid_row(w["none"], rows, cols) - _centroid_row(w[unit], rows, cols)

    assert rise(1, inner) > 1.5 and rise(1, inner) > rise(1, outer) + 1.0
    assert rise(2, outer) > 1.5 and rise(2, outer) > rise(1, outer) + 1.0


def test_au4_lowers_and_knits_the_brows(faces) -> None:
    G, w = faces["G"], faces["off_skin"]
    rows = _band(G["bv"][1] - 0.2, G["bv"][1] + 0.1)
    inner = _band(G["bi"][1], G["bi"][1] + 0.1)
    assert _centroid_row(w[4], rows, inner) - _centroid_row(w["none"], rows, inner) > 1.5
    between = (_band(G["bv"][1] - 0.05, G["bv"][1] + 0.1), _band(-0.07, 0.07))
    assert w[4][between].sum() > w["none"][between].sum() + 100


def test_au5_opens_and_au6_au7_narrow_the_eye(faces) -> None:
    G, w = faces["G"], faces["off_skin"]
    eye = (_band(G["ey"] - 0.08, G["ey"] + 0.06), _band(G["ex"] - 0.13, G["ex"] + 0.13))
    opening = {k: int((w[k][eye] > 60).sum()) for k in ("none", 5, 6, 7)}
    assert opening[5] > opening["none"] + 3
    assert opening[7] < opening["none"] - 3 and opening[6] < opening["none"] - 2


def test_au6_reddens_the_cheek_and_au9_wrinkles_the_nose(faces) -> None:
    G, img = faces["G"], faces["img"]
    cheek = (_band(G["ey"] + 0.15, G["ey"] + 0.35), _band(G["ex"] - 0.1, G["ex"] + 0.15))
    redness = {k: (img[k][..., 0] - img[k][..., 1])[cheek].mean() for k in ("none", 6)}
    assert redness[6] > redness["none"] + 1.5
    bridge = (_band(-0.12, 0.06), _band(-0.07, 0.07))
    assert faces["off_skin"][9][bridge].sum() > faces["off_skin"]["none"][bridge].sum() + 100


def test_au12_raises_and_au15_lowers_the_lip_corners(faces) -> None:
    G, img = faces["G"], faces["img"]
    skin = G["skin"] * 255 @ np.array([0.299, 0.587, 0.114])
    dark = {k: np.clip(skin - img[k] @ np.array([0.299, 0.587, 0.114]), 0, None) for k in ("none", 12, 15)}
    rows = _band(G["m0"] - 0.2, G["m0"] + 0.2)
    corner = _band(G["mw"][1] * 0.8, G["mw"][1] * 1.1)          # lips and the line between them
    neutral = _centroid_row(dark["none"], rows, corner)
    assert neutral - _centroid_row(dark[12], rows, corner) > 1.5
    assert _centroid_row(dark[15], rows, corner) - neutral > 0.8


def test_au10_raises_the_upper_lip(faces) -> None:
    G, lip = faces["G"], faces["lipness"]
    upper = (_band(G["m0"] - 0.2, G["m0"]), _band(-0.06, 0.06))
    assert lip[10][upper].sum() > lip["none"][upper].sum() + 2


def test_au20_widens_and_au23_thins_the_lips(faces) -> None:
    G, lip, cavity = faces["G"], faces["lipness"], faces["cavity"]
    rows = _band(G["m0"] - 0.2, G["m0"] + 0.2)

    def width(k):                      # the run of mouth columns around the centre
        cols = ((lip[k][rows] > 0.3) | cavity[k][rows]).any(axis=0)
        centre = round(_px(0.0))
        left = right = centre
        while left > 0 and cols[left - 1]:
            left -= 1
        while right < AU_SIZE - 1 and cols[right + 1]:
            right += 1
        return right - left

    assert width(20) >= width("none") + 2
    mouth = (rows, _band(-0.3, 0.3))
    assert lip[23][mouth].sum() < 0.9 * lip["none"][mouth].sum()


def test_au26_opens_a_dark_mouth(faces) -> None:
    G, cavity = faces["G"], faces["cavity"]
    jaw = (_band(G["m0"] - 0.1, G["m0"] + 0.4), _band(-0.3, 0.3))
    assert cavity[26][jaw].sum() > cavity["none"][jaw].sum() + 12


def test_every_unit_changes_the_face() -> None:
    imgs, _ = _faces(int(_people(1)[0]), list(S.AUS))
    changed = np.abs(imgs[1:] - imgs[0]).reshape(len(S.AUS), -1).max(axis=1)
    assert np.all(changed > 20), dict(zip(S.AUS, changed))


# --- cache and export ------------------------------------------------------------------------------------


def test_second_load_uses_the_cache(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FER_BENCH_CACHE", str(tmp_path))
    first = load_dataset("synthetic", "val", **SMALL)
    monkeypatch.setattr(splits, "render_images", lambda *a, **k: pytest.fail("rendered again"))
    second = load_dataset("synthetic", "val", **SMALL)
    assert isinstance(second.images, np.memmap) and second.fingerprint == first.fingerprint
    np.testing.assert_array_equal(second.images, first.images)
    assert list((tmp_path / "decoded").glob(f"{first.fingerprint}.npy"))


def test_export_writes_an_image_folder_a_table_and_a_contact_sheet(tmp_path) -> None:
    options = dict(SMALL, n_train=600, n_test=600)               # enough of the rarest class (fear: 2.3%)
    out = S.export(tmp_path / "synth", n_per_class=2, splits=("train", "test"), sheet_columns=3, **options)
    table = pd.read_csv(out["factors"])
    assert len(table) == len(list((tmp_path / "synth").rglob("*/*/*.png"))) == 2 * 2 * 7
    for _, row in table.iterrows():
        assert (tmp_path / "synth" / row["path"]).is_file()
        assert row["path"].split("/")[1] == L.NAMES[row["emotion"]]
    from PIL import Image
    sheet = Image.open(out["contact_sheet"])
    assert sheet.size[0] > 3 * 32 and sheet.size[1] > 7 * 32


def test_render_floor_traces_every_pixel_operation_without_changing_a_byte():
    # benchmarks/perf/synthetic_render.py --floor: the traced render must be the plain render, and the
    # replay must run the logged calls (the floor's claim is about exactly these operations).
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "perf" / "synthetic_render.py"
    spec = importlib.util.spec_from_file_location("synthetic_render_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    windows_before = bench.canvas_module._windows
    F = S.sample_factors("train", np.arange(24), size=32)
    canvas = np.empty((24, 3, 32, 32), np.float32)
    images, log = bench.trace_ufuncs(F, 32, canvas)
    np.testing.assert_array_equal(images, S.render(F, 32))
    names = {entry[0].__name__ for entry in log}
    assert {"multiply", "add", "subtract", "clip", "sqrt"} <= names
    assert sum(entry[2] for entry in log) / 24 > 32 * 32 * 50       # dozens of operations per pixel
    for _, method, n, inputs, _, _ in log:
        assert method in ("__call__", "reduce") and n > 0 and all(isinstance(d, str) for d, _ in inputs)
    bench.contiguous_replay(log)()                                   # runs: dtypes and arities are right
    assert bench._Traced.log is None                                 # the patches are undone
    assert bench.canvas_module._windows is bench.renderer_module._windows is windows_before
