"""Dataset adapters on tiny fixtures in each official layout (tests/fixtures.py).

For every adapter: counts per split and class, the label mapping checked against the dataset's own
documented order (through the fixture, which never reads fer_bench.labels), image <-> label pairing
(each fixture image's grey level encodes its emotion), protocol folds, label distributions, cache
reuse and the one-line error of each bad input.
"""
from __future__ import annotations

import collections
import importlib
import re

import numpy as np
import pytest

import fixtures as F
from fer_bench import labels as L
from fer_bench.data import load_dataset

ADAPTER_MODULES = ("rafdb", "fer2013", "ferplus", "affectnet", "ckplus", "jaffe", "nimstim", "folder")
for _module in ADAPTER_MODULES:   # the lead registers them in fer_bench.data; importing twice is harmless
    importlib.import_module(f"fer_bench.data.{_module}")

SIZE = 16          # stored size in the tests: small and fast


@pytest.fixture(scope="session")
def fx(tmp_path_factory):
    return F.make_all(tmp_path_factory.mktemp("fixtures"))


def canonical_counts(ds) -> dict[int, int]:
    return dict(collections.Counter(int(ds.classes[y]) for y in ds.labels))


def assert_pairs(ds) -> None:
    """Every image's grey level decodes to the emotion of its label."""
    levels = [F.decode_level(float(np.asarray(img).mean())) for img in ds.images]
    assert levels == [ds.classes[y] for y in ds.labels]


def load(name, split, root, **options):
    return load_dataset(name, split, root, size=SIZE, **options)


# ---------------------------------------------------------------------------------------------
# Counts, mapping and pairing for every adapter in its default protocol

CASES = [
    ("rafdb", "rafdb", {}, ("train", "test")),
    ("rafdb", "rafdb", {"variant": "original"}, ("train", "test")),
    ("fer2013", "fer2013", {}, ("train", "val", "test")),
    ("fer2013", "fer2013-icml", {}, ("train", "val", "test")),
    ("fer2013", "fer2013-kaggle", {}, ("train",)),
    ("ferplus", "ferplus", {}, ("train", "val", "test")),
    ("affectnet8", "affectnet-csv", {}, ("train", "test")),
    ("affectnet8", "affectnet-npy", {}, ("train", "test")),
    ("affectnet8", "affectnet-folders", {"label_scheme": "affectnet"}, ("train", "test")),
    ("folder", "folder", {"mapping": F.FOLDER_MAPPING}, ("train", "val", "test")),
]


@pytest.mark.parametrize("name,key,options,splits", CASES,
                         ids=[c[1] + "".join(f"-{v}" for v in c[2].values()) for c in CASES])
def test_counts_mapping_and_pairs(fx, name, key, options, splits):
    fixture = fx[key]
    for split in splits:
        ds = load(name, split, fixture.root, **options)
        assert canonical_counts(ds) == fixture.counts[split], split
        assert ds.images.shape == (fixture.total(split), SIZE, SIZE, 3) and ds.images.dtype == np.uint8
        assert_pairs(ds)
        assert ds.name == name and ds.split == split and len(ds.fingerprint) == 64


def test_rafdb_reads_crlf_lists_and_maps_native_codes_by_the_documented_order(tmp_path):
    fixture = F.make_rafdb(tmp_path, crlf=True)
    ds = load("rafdb", "train", fixture.root)
    assert canonical_counts(ds) == fixture.counts["train"]
    codes = ds.factors["native_label"].to_numpy()
    for code, y in zip(codes, ds.labels):      # 1 surprise ... 7 neutral, as RAF-DB's README lists them
        assert ds.classes[y] == F.canon(F.RAF_DOC[int(code)])
    six = load("rafdb", "test", fixture.root, classes=6)
    assert six.classes == L.SIX_BASIC and L.NEUTRAL not in canonical_counts(six)
    assert len(six) == fixture.total("test") - fixture.counts["test"][L.NEUTRAL]


def test_rafdb_root_may_point_at_basic_or_above(fx):
    a = load("rafdb", "test", fx["rafdb"].root)
    b = load("rafdb", "test", fx["rafdb"].root / "basic")
    assert len(a) == len(b) and a.fingerprint == b.fingerprint


# ---------------------------------------------------------------------------------------------
# FER2013


def test_fer2013_keeps_public_and_private_test_apart(fx):
    root = fx["fer2013"].root
    val, test = load("fer2013", "val", root), load("fer2013", "test", root)
    assert val.meta["usage"] == "PublicTest" and test.meta["usage"] == "PrivateTest"
    assert set(val.factors["csv_row"]).isdisjoint(test.factors["csv_row"])
    assert val.fingerprint != test.fingerprint
    icml = load("fer2013", "test", fx["fer2013-icml"].root)
    assert np.array_equal(np.asarray(icml.images), np.asarray(test.images))       # same pixels, other header
    assert np.array_equal(icml.labels, test.labels)


def test_fer2013_kaggle_variant_has_only_train(fx):
    from fer_bench.data.fer2013 import FER2013
    root = fx["fer2013-kaggle"].root
    assert FER2013().available_splits(root, **FER2013.resolve_options({})) == ("train",)
    with pytest.raises(ValueError, match=r"test\.csv has neither labels nor Usage.*fer2013\.csv") as err:
        load("fer2013", "test", root)
    assert "\n" not in str(err.value)


def test_fer2013_malformed_pixel_row_is_an_unreadable_image(tmp_path):
    fixture = F.make_fer2013(tmp_path)
    csv = fixture.root / "fer2013" / "fer2013.csv"
    lines = csv.read_text().splitlines()
    emotion, pixels, usage = lines[3].split(",")
    lines[3] = f"{emotion},{' '.join(pixels.split()[:-1])},{usage}"         # 2,303 values
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"fer2013/train: 1 of 21 images cannot be used .*2303 values.*"
                                         r"fer2013\.csv line 4.*allow_missing=true"):
        load("fer2013", "train", fixture.root)
    ds = load("fer2013", "train", fixture.root, allow_missing=True)
    assert len(ds) == 20 and ds.meta["n_unreadable"] == 1 and ds.meta["images_dropped"] == 1
    assert_pairs(ds)


# ---------------------------------------------------------------------------------------------
# FERPlus


@pytest.mark.parametrize("votes,expected", [
    ([10, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0),
    ([4, 0, 0, 1, 3, 2, 0, 0, 0, 0], 8),          # single votes dropped: 4 of 9 is not a majority
    ([5, 5, 0, 0, 0, 0, 0, 0, 0, 0], 8),          # a tie never exceeds half
    ([0, 0, 0, 0, 0, 0, 0, 0, 6, 4], 8),          # unknown wins: not used
    ([6, 0, 1, 1, 0, 0, 0, 0, 2, 0], 0),          # 6 of 8 after removal
    ([1, 1, 1, 1, 1, 1, 1, 1, 1, 1], 8),          # every vote single: nothing left
])
def test_ferplus_majority_rule(votes, expected):
    from fer_bench.data.ferplus import process_votes
    out = process_votes(np.array(votes), "majority")
    assert out.sum() == pytest.approx(1.0) and int(out.argmax()) == expected and out.max() == 1.0


def test_ferplus_probability_and_multi_target_rules():
    from fer_bench.data.ferplus import process_votes
    # after removal [4,0,0,0,3,2,...], s = 9: probability takes 4 then 3 (7 >= 6.75): {0: 4/7, 4: 3/7}
    prob = process_votes(np.array([4, 0, 0, 1, 3, 2, 0, 0, 0, 0]), "probability")
    np.testing.assert_allclose(prob[[0, 4]], [4 / 7, 3 / 7])
    np.testing.assert_allclose(process_votes(np.array([5, 5, 0, 0, 0, 0, 0, 0, 0, 0]), "crossentropy")[:2], [0.5, 0.5])
    # unknown among the largest after an emotion was taken is dropped again, and the search stops
    out = process_votes(np.array([6, 0, 0, 0, 0, 0, 0, 0, 2, 2]), "probability")
    assert out[0] == 1.0
    # unknown first: kept, so the image is not used
    assert process_votes(np.array([0, 0, 0, 0, 0, 0, 0, 0, 6, 4]), "probability").argmax() == 8
    # multi_target: entries with >= 30% of the votes: 4 and 3 of 9
    mt = process_votes(np.array([4, 0, 0, 1, 3, 2, 0, 0, 0, 0]), "multi_target")
    np.testing.assert_allclose(mt[[0, 4]], [4 / 7, 3 / 7])
    with pytest.raises(ValueError, match="label_mode"):
        process_votes(np.zeros(10), "vote")


def test_ferplus_vote_sources_names_and_duplicates(fx):
    fixture = fx["ferplus"]
    official = load("ferplus", "train", fixture.root)
    assert official.meta["vote_file"] == "label.csv" and official.meta["image_source"] == "folders"
    assert canonical_counts(official) == fixture.info["counts_label_csv"]["train"]
    new = load("ferplus", "train", fixture.root, votes="fer2013new")
    assert new.meta["vote_file"] == "fer2013new.csv"
    assert canonical_counts(new) == fixture.info["counts_fer2013new"]["train"]
    assert new.meta["rows_without_name"] == 1 and new.meta["duplicate_names_dropped"] == 1
    assert_pairs(new)                              # the repeated name carries the later row's votes and image
    assert official.fingerprint != new.fingerprint


def test_ferplus_pixels_from_fer2013_csv_match_the_png_folders(fx, tmp_path):
    pixels = fx["ferplus-pixels"]
    both = F.make_ferplus(tmp_path, "both")
    for split in ("train", "val", "test"):
        a = load("ferplus", split, pixels.root)
        b = load("ferplus", split, both.root, votes="fer2013new", images="folders")
        assert a.meta["image_source"] == "pixels" and b.meta["image_source"] == "folders"
        assert canonical_counts(a) == pixels.counts[split]
        assert list(a.factors["image_name"]) == list(b.factors["image_name"])
        np.testing.assert_array_equal(np.asarray(a.images), np.asarray(b.images))
        assert_pairs(a)


def test_ferplus_2016_file_without_names(tmp_path):
    fixture = F.make_ferplus(tmp_path, "both", year=2016)
    ds = load("ferplus", "train", fixture.root, votes="fer2013new", images="pixels")
    assert "2016" in ds.meta["vote_source"]
    # without names nothing is deduplicated: the superseded row is kept too
    assert len(ds) == sum(fixture.info["counts_fer2013new"]["train"].values()) + 1
    assert_pairs(ds)
    with pytest.raises(ValueError, match="2016 version"):
        load("ferplus", "train", fixture.root, votes="fer2013new", images="folders")


def test_ferplus_label_modes_distributions_and_classes(fx):
    root = fx["ferplus"].root
    maj = load("ferplus", "train", root, votes="fer2013new")
    prob = load("ferplus", "train", root, votes="fer2013new", label_mode="probability")
    assert len(prob) == len(maj) + 2               # the 4/3/2 row and the tie row keep a distribution
    assert prob.meta["label_mode"] == "probability"
    assert load("ferplus", "test", root, label_mode="probability").meta["label_mode"] == "majority"
    assert maj.label_dist.shape == (len(maj), 8) and maj.label_dist.dtype == np.float32
    np.testing.assert_allclose(maj.label_dist.sum(1), 1.0, rtol=1e-6)
    # label_dist is the annotators' votes over the classes, in canonical order
    cols = [f"votes_{c}" for c in F.FERPLUS_COLUMNS[:8]]
    votes = maj.factors[cols].to_numpy(float)
    expect = np.zeros_like(votes)
    for j, name in enumerate(F.FERPLUS_COLUMNS[:8]):
        expect[:, maj.classes.index(F.canon(name))] = votes[:, j]
    np.testing.assert_allclose(maj.label_dist, expect / expect.sum(1, keepdims=True), rtol=1e-6)
    targets = prob.factors[[f"target_{L.NAMES[c]}" for c in prob.classes]].to_numpy()
    assert (targets.argmax(1) == prob.labels).all()
    seven = load("ferplus", "test", root, classes=7)
    assert seven.classes == L.BASIC7 and seven.label_dist.shape[1] == 7
    assert len(seven) == fx["ferplus"].total("test") - fx["ferplus"].counts["test"].get(L.CONTEMPT, 0)


# ---------------------------------------------------------------------------------------------
# AffectNet


def test_affectnet_csv_boxes_codes_and_invalid_rows(fx):
    fixture = fx["affectnet-csv"]
    train = load("affectnet8", "train", fixture.root)
    assert train.meta["invalid_box_rows"] == 1                  # face_width = -1
    assert train.meta["dropped_codes"] == {8: 1, 9: 1, 10: 1}
    assert train.meta["sampler"] == "balanced"
    assert np.isnan(train.factors["valence"]).sum() == 1         # valence -2
    assert_pairs(train)                                          # the box crop removed the background
    seven = load("affectnet7", "test", fixture.root)
    assert seven.classes == L.BASIC7 and canonical_counts(seven) == fixture.info["counts7"]["test"]
    assert "sampler" not in seven.meta


def test_affectnet_class_folders_need_an_explicit_scheme(fx, tmp_path):
    root = fx["affectnet-folders"].root
    with pytest.raises(ValueError, match=r"label_scheme=.*never guessed"):
        load("affectnet8", "train", root)
    # the DAN folders 0..7 read with the wrong scheme fail loudly instead of relabelling silently
    with pytest.raises(ValueError, match=r"class folder 'train/7' has no emotion under label_scheme=raf0"):
        load("affectnet7", "train", root, label_scheme="raf0")
    named = F.make_affectnet(tmp_path, "folders")
    for code, name in F.AFFECTNET_DOC.items():       # HSEmotion-style named folders
        if name is not None:
            for split in ("train", "val"):
                (named.root / split / str(code)).rename(named.root / split / name.capitalize())
    by_name = load("affectnet8", "train", named.root, label_scheme="names")
    assert canonical_counts(by_name) == named.counts["train"]
    assert_pairs(by_name)


def test_balanced_batches_draw_classes_equally():
    import torch
    from fer_bench.data.affectnet import balanced_batches, balanced_weights
    labels = np.array([0] * 90 + [1] * 9 + [2] * 1)
    w = balanced_weights(labels)
    assert w[0] == pytest.approx(1 / 90) and w[-1] == 1.0
    drawn = torch.cat(list(balanced_batches(np.tile(labels, 30), 256, torch.Generator().manual_seed(0))))
    share = np.bincount(np.tile(labels, 30)[drawn.numpy()], minlength=3) / len(drawn)
    np.testing.assert_allclose(share, 1 / 3, atol=0.04)


# ---------------------------------------------------------------------------------------------
# CK+


def test_ckplus_peak_frames_neutral_and_subject_folds(fx):
    fixture = fx["ckplus"]
    root = fixture.root
    allc = load("ckplus", "all", root, crop="none")
    assert canonical_counts(allc) == fixture.counts["all"] and allc.classes == L.SIX_BASIC + (L.CONTEMPT,)
    assert_pairs(allc)
    all8 = load("ckplus", "all", root, crop="none", classes="8")
    assert canonical_counts(all8) == fixture.info["all8"]
    assert_pairs(all8)                                  # the first frame (neutral level) was picked
    assert allc.meta["empty_emotion_dirs"] == 1 and allc.meta["labelled_sequences"] == 15
    subjects = sorted(F.CK_SUBJECTS, key=lambda s: int(s[1:]))
    seen = collections.Counter()
    for fold in range(10):
        train = load("ckplus", "train", root, crop="none", fold=fold)
        test = load("ckplus", "test", root, crop="none", fold=fold)
        assert set(train.groups).isdisjoint(test.groups)                          # subject-independent
        assert len(train) + len(test) == len(allc)
        assert set(test.groups) == {int(s[1:]) for r, s in enumerate(subjects) if r % 10 == fold}
        seen.update(test.groups.tolist())
    assert set(seen) == {int(s[1:]) for s in subjects}


def test_ckplus_label_file_must_hold_a_code(tmp_path):
    fixture = F.make_ckplus(tmp_path)
    bad = next((fixture.root / "Emotion_labels" / "Emotion" / "S005" / "001").glob("*_emotion.txt"))
    bad.write_text("   9.0000000e+00\n")
    with pytest.raises(ValueError, match=r"S005_001_00000005_emotion\.txt: 9 is not a CK\+ emotion code"):
        load("ckplus", "all", fixture.root, crop="none")


# ---------------------------------------------------------------------------------------------
# JAFFE and NimStim


def test_jaffe_loso_and_kfold(fx):
    fixture = fx["jaffe"]
    allj = load("jaffe", "all", fixture.root, crop="none")
    assert canonical_counts(allj) == fixture.counts["all"] and allj.meta["n_unmatched_image_files"] == 0
    assert_pairs(allj)
    test = load("jaffe", "test", fixture.root, crop="none", fold="KM")
    train = load("jaffe", "train", fixture.root, crop="none", fold="2")     # KM is the third subject
    assert set(test.factors["subject"]) == {"KM"} and "KM" not in set(train.factors["subject"])
    assert len(test) + len(train) == len(allj)
    folds = [load("jaffe", "test", fixture.root, crop="none", protocol="kfold", fold=str(k)) for k in range(10)]
    files = [f for ds in folds for f in ds.factors["number"]]
    assert sorted(files) == sorted(allj.factors["number"])                  # a partition of all images
    assert max(len(ds) for ds in folds) - min(len(ds) for ds in folds) <= 1
    with pytest.raises(ValueError, match=r"'fold' option of dataset 'jaffe' must be a subject code"):
        load("jaffe", "test", fixture.root, crop="none", fold="ZZ")


def test_jaffe_unknown_expression_code_names_the_file(tmp_path):
    fixture = F.make_jaffe(tmp_path)
    (fixture.root / "jaffedbase" / "KA.XX1.300.tiff").write_bytes(b"")
    with pytest.raises(ValueError, match=r"KA\.XX1\.300\.tiff: expression code 'XX' is not a JAFFE code"):
        load("jaffe", "all", fixture.root, crop="none")


def test_nimstim_six_basic_calm_excluded_and_subject_disjoint(fx):
    fixture = fx["nimstim"]
    allset = load("nimstim", "all", fixture.root, crop="none")
    assert allset.classes == L.SIX_BASIC and canonical_counts(allset) == fixture.counts["all"]
    assert_pairs(allset)
    assert "CA" not in set(allset.factors["expression"]) and "20M" in set(allset.factors["actor"])
    parts = {s: load("nimstim", s, fixture.root, crop="none") for s in ("train", "val", "test")}
    actors = {s: set(ds.factors["actor"]) for s, ds in parts.items()}
    assert [len(actors[s]) for s in ("train", "val", "test")] == [8, 1, 1]
    assert not (actors["train"] & actors["val"] or actors["train"] & actors["test"] or actors["val"] & actors["test"])
    assert sum(len(ds) for ds in parts.values()) == len(allset)
    calm = load("nimstim", "all", fixture.root, crop="none", classes=7, calm="neutral")
    neutral = sum(1 for _, code, _, _ in fixture.info["ids"] if code in ("NE", "CA"))
    assert canonical_counts(calm)[L.NEUTRAL] == neutral
    open_only = load("nimstim", "all", fixture.root, crop="none", mouth="open")
    assert set(open_only.factors["mouth"]) == {"O"}


# ---------------------------------------------------------------------------------------------
# ImageFolder


def test_folder_needs_an_explicit_mapping_and_reports_optional_val(fx, tmp_path):
    from fer_bench.data.folder import Folder
    root = fx["folder"].root
    with pytest.raises(ValueError, match="never guessed"):
        load("folder", "train", root)
    named = load("folder", "train", root, label_scheme="names")              # 'angry', 'Happy' are emotion names
    assert canonical_counts(named) == fx["folder"].counts["train"]
    with pytest.raises(ValueError, match=r"class folder 'dataset/train/Happy' has no emotion under mapping"):
        load("folder", "train", root, mapping="angry:anger")
    dropped = load("folder", "test", root, mapping=F.FOLDER_MAPPING.replace("neutral:neutral", "neutral:none"))
    assert L.NEUTRAL not in dropped.classes
    noval = F.make_folder(tmp_path, with_val=False)
    assert Folder().available_splits(noval.root, **Folder.resolve_options({})) == ("train", "test")
    with pytest.raises(ValueError, match=re.escape("no val|valid|validation/ folder")):
        load("folder", "val", noval.root, mapping=F.FOLDER_MAPPING)


# ---------------------------------------------------------------------------------------------
# Cache reuse, for every adapter

REUSE = [("rafdb", "rafdb", {}, "test"), ("fer2013", "fer2013", {}, "val"), ("ferplus", "ferplus-pixels", {}, "test"),
         ("affectnet7", "affectnet-csv", {}, "test"), ("ckplus", "ckplus", {"crop": "none"}, "test"),
         ("jaffe", "jaffe", {"crop": "center"}, "test"), ("nimstim", "nimstim", {"crop": "none"}, "val"),
         ("folder", "folder", {"label_scheme": "names"}, "test")]


@pytest.mark.parametrize("name,key,options,split", REUSE, ids=[r[0] for r in REUSE])
def test_second_load_decodes_nothing(fx, monkeypatch, name, key, options, split):
    from fer_bench.data import decode
    first = load(name, split, fx[key].root, **options)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(decode, "_decode_rows", no_decoding)
    monkeypatch.setattr(decode, "open_image", no_decoding)
    again = load(name, split, fx[key].root, **options)
    from fer_bench.registry import get_dataset
    pooled = get_dataset(name).pool_split is not None           # folds are gathered from the cached pool
    assert isinstance(again.images, np.ndarray if pooled else np.memmap)
    assert again.fingerprint == first.fingerprint
    np.testing.assert_array_equal(again.labels, first.labels)
    from fer_bench.data.dataset import dataset_record
    record = dataset_record(again)
    assert record["images"] == len(again) and record["decode"]["size"] == SIZE and "layout" in record


def test_folds_are_gathered_from_one_decode_of_the_pool(tmp_path, monkeypatch):
    from fer_bench.data import decode
    fixture = F.make_jaffe(tmp_path)
    calls = []
    real = decode._decode_rows

    def counting(sources, rows, *args, **kwargs):
        calls.append(len(rows))
        return real(sources, rows, *args, **kwargs)

    monkeypatch.setattr(decode, "_decode_rows", counting)
    sizes = [len(load("jaffe", split, fixture.root, crop="none", fold=str(k)))
             for k in range(3) for split in ("train", "test")]
    assert calls == [70] and sizes == [63, 7] * 3
    assert len(load("jaffe", "all", fixture.root, crop="none")) == 70 and calls == [70]
