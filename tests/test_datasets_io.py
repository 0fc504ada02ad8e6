"""The shared decode machinery of the dataset adapters: cache reuse, missing / corrupt images, path
confinement, fingerprints, image modes, face cropping and ``fer-bench datasets verify``."""
from __future__ import annotations

import importlib
import os
import re
import sys

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import fixtures as F
from fer_bench.data import load_dataset
from fer_bench.data import decode as D

for _module in ("rafdb", "fer2013", "ferplus", "affectnet", "ckplus", "jaffe", "nimstim", "folder"):
    importlib.import_module(f"fer_bench.data.{_module}")

SIZE = 16


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and len(text) < 1200
    return text


# ---------------------------------------------------------------------------------------------
# Cache


def test_second_load_maps_the_cache_and_decodes_nothing(tmp_path, monkeypatch):
    fixture = F.make_rafdb(tmp_path)
    first = load_dataset("rafdb", "train", fixture.root, size=SIZE)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(D, "open_image", no_decoding)
    monkeypatch.setattr(D, "_decode_rows", no_decoding)
    second = load_dataset("rafdb", "train", fixture.root, size=SIZE)
    assert isinstance(second.images, np.memmap) and not second.images.flags.writeable
    assert second.fingerprint == first.fingerprint
    np.testing.assert_array_equal(np.asarray(first.images), np.asarray(second.images))
    monkeypatch.undo()
    # a replaced file (new size / modification time) is decoded again; the fingerprint stays the content's
    image = fixture.root / "basic" / "Image" / "aligned" / "train_00001_aligned.jpg"
    F.flat((100, 100), F.level(2), "RGB", seed=99).save(image, quality=90)
    os.utime(image, ns=(1, 1))
    third = load_dataset("rafdb", "train", fixture.root, size=SIZE)
    assert third.meta["cache_key"] != first.meta["cache_key"]


def test_fingerprint_covers_files_labels_and_settings_not_the_location(tmp_path):
    a = F.make_jaffe(tmp_path / "a")
    b = F.make_jaffe(tmp_path / "b" / "deeper")
    fa = load_dataset("jaffe", "all", a.root, size=SIZE, crop="none")
    fb = load_dataset("jaffe", "all", b.root, size=SIZE, crop="none")
    assert fa.fingerprint == fb.fingerprint
    assert load_dataset("jaffe", "all", a.root, size=SIZE + 8, crop="none").fingerprint != fa.fingerprint
    assert load_dataset("jaffe", "all", a.root, size=SIZE, crop="center").fingerprint != fa.fingerprint
    six = load_dataset("jaffe", "all", a.root, size=SIZE, crop="none", classes=6)
    assert six.fingerprint != fa.fingerprint


# ---------------------------------------------------------------------------------------------
# Bad inputs: one line naming the path, what was expected and the fix


def test_wrong_root_and_missing_list_file(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError) as err:
        load_dataset("rafdb", "train", tmp_path / "empty")
    assert "is not a rafdb folder: no EmoLabel/list_patition_label.txt" in one_line(err)
    fixture = F.make_rafdb(tmp_path)
    (fixture.root / "basic" / "EmoLabel" / "list_patition_label.txt").unlink()
    with pytest.raises(ValueError, match="no EmoLabel/list_patition_label.txt"):
        load_dataset("rafdb", "train", fixture.root)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("rafdb", "train", tmp_path / "nowhere")
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(FileNotFoundError, match="is a file, not a folder"):      # #19 item 7
        load_dataset("rafdb", "train", tmp_path / "a_file")
    with pytest.raises(FileNotFoundError, match="FER_BENCH_DATA"):
        load_dataset("rafdb", "train")
    for name in ("fer2013", "ferplus", "affectnet8", "ckplus", "jaffe", "nimstim"):
        with pytest.raises(ValueError) as err:
            load_dataset(name, "train", tmp_path / "empty", crop="none") if name in ("ckplus", "jaffe", "nimstim") \
                else load_dataset(name, "train", tmp_path / "empty")
        assert str(tmp_path / "empty") in one_line(err)


def test_corrupt_and_missing_images_are_listed_in_one_error(tmp_path):
    fixture = F.make_rafdb(tmp_path)
    aligned = fixture.root / "basic" / "Image" / "aligned"
    data = (aligned / "train_00002_aligned.jpg").read_bytes()
    (aligned / "train_00002_aligned.jpg").write_bytes(data[: len(data) // 3])          # truncated JPEG
    (aligned / "train_00005_aligned.jpg").unlink()
    (aligned / "train_00007_aligned.jpg").write_bytes(b"not an image at all")
    with pytest.raises(ValueError) as err:
        load_dataset("rafdb", "train", fixture.root, size=SIZE)
    text = one_line(err)
    assert "rafdb/train: 3 of 21 images cannot be used (1 missing, 2 unreadable)" in text
    for k, line in ((2, 2), (5, 5), (7, 7)):
        assert f"Image/aligned/train_0000{k}_aligned.jpg" in text
        assert f"EmoLabel/list_patition_label.txt line {line}" in text
    assert "allow_missing=true" in text
    ds = load_dataset("rafdb", "train", fixture.root, size=SIZE, allow_missing=True)
    assert len(ds) == 18 and ds.meta["n_missing"] == 1 and ds.meta["n_unreadable"] == 2
    assert ds.meta["images_dropped"] == 3 and len(ds.factors) == 18
    assert [F.decode_level(np.asarray(i).mean()) for i in ds.images] == [ds.classes[y] for y in ds.labels]


@pytest.mark.parametrize("line", ["../train_x.jpg 4", "/etc/train_x.jpg 4", "train_00002/../../../train_x.jpg 4"])
def test_annotation_paths_cannot_leave_the_root(tmp_path, line):
    fixture = F.make_rafdb(tmp_path)
    lst = fixture.root / "basic" / "EmoLabel" / "list_patition_label.txt"
    lines = lst.read_text().splitlines()
    lines.insert(3, line)
    lst.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError) as err:
        load_dataset("rafdb", "train", fixture.root, variant="original")
    text = one_line(err)
    assert "EmoLabel/list_patition_label.txt line 4" in text and "must stay inside the dataset root" in text


def test_affectnet_csv_path_escape_names_the_line(tmp_path):
    fixture = F.make_affectnet(tmp_path, "csv")
    csv = fixture.root / "Manually_Annotated_file_lists" / "training.csv"
    lines = csv.read_text().splitlines()
    lines[2] = "../../secret.jpg" + lines[2][lines[2].index(","):]
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"training\.csv line 3: path '.*secret\.jpg' contains '\.\.'"):
        load_dataset("affectnet8", "train", fixture.root, size=SIZE)


def test_symlink_leaving_the_root_is_refused(tmp_path):
    outside = tmp_path / "outside.tiff"
    F.flat((32, 32), F.level(1)).save(outside)
    fixture = F.make_jaffe(tmp_path / "data")
    link = fixture.root / "jaffedbase" / "KA.HA3.500.tiff"
    try:
        link.symlink_to(outside)
    except OSError:
        pytest.skip("symlinks are not available here")
    with pytest.raises(ValueError) as err:
        load_dataset("jaffe", "all", fixture.root, size=SIZE, crop="none")
    assert "KA.HA3.500.tiff" in one_line(err) and "symlink to a file outside the root" in str(err.value)
    inside = fixture.root / "jaffedbase" / "KA.HA4.501.tiff"       # a link that stays inside is fine
    link.unlink()
    inside.symlink_to(sorted((fixture.root / "jaffedbase").glob("KA.HA*.tiff"))[0])
    assert len(load_dataset("jaffe", "all", fixture.root, size=SIZE, crop="none")) == 71


def test_option_errors_are_one_sentence(fx_rafdb):
    with pytest.raises(ValueError, match=r"The 'variant' option of dataset 'rafdb' must be one of aligned, original\. "
                                         r"Got 'raw' instead\."):
        load_dataset("rafdb", "train", fx_rafdb.root, variant="raw")
    with pytest.raises(ValueError, match=r"Dataset 'rafdb' has no option 'colour'"):
        load_dataset("rafdb", "train", fx_rafdb.root, colour=True)
    with pytest.raises(ValueError, match=r"'classes' option of dataset 'rafdb' must be one of 7, 6"):
        load_dataset("rafdb", "train", fx_rafdb.root, classes=8)


@pytest.fixture
def fx_rafdb(tmp_path):
    return F.make_rafdb(tmp_path)


# ---------------------------------------------------------------------------------------------
# Image decoding


def test_modes_become_rgb_and_jpeg_draft_keeps_the_box(tmp_path):
    arr16 = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)
    assert np.asarray(D.to_rgb(Image.fromarray(arr16))).max() >= 250
    rgba = Image.new("RGBA", (8, 8), (10, 20, 30, 0))
    assert D.to_rgb(rgba).mode == "RGB" and D.to_rgb(Image.new("P", (4, 4))).mode == "RGB"
    assert D.to_rgb(Image.new("LA", (4, 4), (100, 255))).getpixel((0, 0)) == (100, 100, 100)
    # a large JPEG whose face box is a small part: decoded at 1/8 scale, the box still lands on the face
    big = np.full((1200, 1600), 250, np.uint8)
    big[300:700, 500:900] = 80
    Image.fromarray(big).save(tmp_path / "big.jpg", quality=95)
    settings = D.DecodeSettings(size=32, crop="box")
    img = D.open_image(tmp_path / "big.jpg", settings, (500, 300, 400, 400))
    assert img.info["fer_bench_scale"] == 8 and img.size == (200, 150)
    out, error, _ = D.decode_image(img, settings, (500, 300, 400, 400))
    assert error is None and abs(out.mean() - 80) < 3
    out, error, _ = D.decode_image(D.open_image(tmp_path / "big.jpg"), settings, (5000, 5000, 10, 10))
    assert out is None and "outside" in error


def test_eye_line_is_levelled():
    from fer_bench.data.faces import eye_angle, level_and_crop
    img = Image.new("L", (200, 200), 0)
    left, right = (70, 90), (130, 110)                         # right eye lower: a clockwise tilt
    for x, y in (left, right):
        img.paste(255, (x - 3, y - 3, x + 4, y + 4))
    angle = eye_angle(left, right)
    assert angle == pytest.approx(np.degrees(np.arctan2(20, 60)))
    out = np.asarray(level_and_crop(img, (60, 60, 80, 80), 0.25, angle))
    ys, xs = np.nonzero(out > 128)
    left_y = ys[xs < out.shape[1] / 2].mean()
    right_y = ys[xs >= out.shape[1] / 2].mean()
    assert abs(left_y - right_y) < 1.5 and out.shape == (120, 120)


def test_haar_crop_finds_rendered_faces(tmp_path):
    pytest.importorskip("cv2")
    fixture = F.make_ckplus(tmp_path, faces=True)
    ds = load_dataset("ckplus", "all", fixture.root, size=SIZE, workers=2)
    counts = ds.meta["face_crop"]["counts"]
    assert sum(counts.values()) == len(ds)
    assert counts.get("ok", 0) + counts.get("no_eyes", 0) >= len(ds) // 2       # most frames have a face
    boxes = tmp_path / "boxes.csv"
    rows = ["file,x,y,w,h"] + [f"{s},52,20,96,96" for s in
                               [str(p.relative_to(fixture.root)) for p in sorted(fixture.root.rglob("*.png"))]]
    boxes.write_text("\n".join(rows) + "\n")
    user = load_dataset("ckplus", "all", fixture.root, size=SIZE, crop="boxes", boxes=str(boxes), margin=0.0)
    assert "face_crop" not in user.meta and len(user) == len(ds)


def test_missing_opencv_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    fixture = F.make_jaffe(tmp_path)
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(ImportError) as err:
        load_dataset("jaffe", "all", fixture.root, size=SIZE)
    assert "pip install fer-bench[align]" in one_line(err)
    assert isinstance(err.value, ValueError)          # a usage error for the CLI (exit code 2)


def test_boxes_csv_is_confined_and_complete(tmp_path):
    fixture = F.make_jaffe(tmp_path)
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("file,x,y,w,h\n../x.tiff,0,0,4,4\n")
    with pytest.raises(ValueError, match=r"boxes\.csv line 2: path '\.\./x\.tiff' contains '\.\.'"):
        load_dataset("jaffe", "all", fixture.root, size=SIZE, crop="boxes", boxes=str(boxes))
    first = sorted((fixture.root / "jaffedbase").glob("*.tiff"))[0].name
    boxes.write_text(f"file,x,y,w,h\njaffedbase/{first},0,0,16,16\n")
    with pytest.raises(ValueError, match=r"no box for 69 image\(s\) of jaffe"):
        load_dataset("jaffe", "all", fixture.root, size=SIZE, crop="boxes", boxes=str(boxes))


# ---------------------------------------------------------------------------------------------
# fer-bench datasets verify


def test_verify_passes_on_fixtures_and_reports_problems(tmp_path):
    from fer_bench.data.verify import datasets_group, verify
    fixture = F.make_ckplus(tmp_path)
    ok, text = verify("ckplus", fixture.root, {"crop": "none", "size": SIZE})
    assert ok, text
    assert "RESULT: OK" in text and "all" in text and "card" in text and "fingerprints:" in text
    assert "counts differ from the card" in text
    ok, strict = verify("ckplus", fixture.root, {"crop": "none", "size": SIZE}, strict=True)
    assert not ok and "RESULT: FAILED" in strict
    frame = next(fixture.root.rglob("S010_001_00000005.png"))
    frame.write_bytes(b"broken")
    ok, text = verify("ckplus", fixture.root, {"crop": "none", "size": SIZE})
    assert not ok and "S010_001_00000005.png (unreadable" in text and "allow_missing=true" in text
    runner = CliRunner()
    res = runner.invoke(datasets_group, ["verify", "ckplus", "--data-root", str(fixture.root),
                                         "--option", f"crop=none,size={SIZE}", "--quick"])
    assert res.exit_code == 0, res.output
    assert "--quick" in res.output
    res = runner.invoke(datasets_group, ["verify", "ckplus", "--data-root", str(fixture.root),
                                         "--option", f"crop=none,size={SIZE}"])
    assert res.exit_code == 1 and "RESULT: FAILED" in res.output
    res = runner.invoke(datasets_group, ["verify", "ckplus", "--data-root", str(fixture.root), "--option", "colour=1"])
    assert res.exit_code == 2 and "has no option 'colour'" in res.output
    res = runner.invoke(datasets_group, ["verify", "rafdbb", "--data-root", str(fixture.root)])
    assert res.exit_code == 2 and "Did you mean 'rafdb'" in res.output
    res = runner.invoke(datasets_group, ["card", "ckplus"])
    assert res.exit_code == 0 and "Citation" in res.output and "Licence" in res.output


# ---------------------------------------------------------------------------------------------
# The same bad inputs for every adapter


CORRUPT = [
    ("ferplus", lambda p: F.make_ferplus(p), {}, "test", r"FER2013Test/label\.csv line \d+"),
    ("affectnet8", lambda p: F.make_affectnet(p, "csv"), {}, "test", r"validation\.csv line \d+"),
    ("affectnet8", lambda p: F.make_affectnet(p, "npy"), {}, "test", r"val_set/annotations/\d+_exp\.npy"),
    ("jaffe", F.make_jaffe, {"crop": "none"}, "all", r"jaffedbase/YM\."),
    ("nimstim", F.make_nimstim, {"crop": "none"}, "all", r"NimStim/20m_"),
    ("folder", F.make_folder, {"mapping": F.FOLDER_MAPPING}, "val", r"dataset/val/surprise/img"),
]


@pytest.mark.parametrize("name,build,options,split,where", CORRUPT,
                         ids=["ferplus", "affectnet-csv", "affectnet-npy", "jaffe", "nimstim", "folder"])
def test_each_adapter_lists_an_unreadable_image_with_where_it_was_named(tmp_path, name, build, options, split, where):
    from fer_bench.registry import get_dataset
    fixture = build(tmp_path)
    adapter = get_dataset(name)
    resolved = adapter.resolve_options({"size": SIZE, **options})
    victim = Path(adapter().index(split, fixture.root, **resolved).sources[-1].path)     # an image the split uses
    victim.write_bytes(b"\x89PNG\r\n\x1a\n-- not really --")
    with pytest.raises(ValueError) as err:
        load_dataset(name, split, fixture.root, size=SIZE, **options)
    text = one_line(err)
    assert "(0 missing, 1 unreadable)" in text and victim.name in text
    assert re.search(where, text), text


MISSING_LIST = [
    ("fer2013", lambda p: F.make_fer2013(p), {}, "train", "fer2013/fer2013.csv", "no fer2013.csv or icml_face_data.csv"),
    ("ferplus", lambda p: F.make_ferplus(p), {"votes": "label_csv"}, "val", "data/FER2013Valid/label.csv",
     "no FER2013Valid/label.csv found"),
    ("affectnet7", lambda p: F.make_affectnet(p, "csv"), {}, "test", "Manually_Annotated_file_lists/validation.csv",
     "no validation.csv found"),
    ("ckplus", F.make_ckplus, {"crop": "none"}, "train", "Emotion_labels", "no Emotion/ in it"),
    ("folder", F.make_folder, {"mapping": F.FOLDER_MAPPING}, "test", "dataset/test", "no test|testing/ folder"),
]


@pytest.mark.parametrize("name,build,options,split,remove,message", MISSING_LIST, ids=[c[0] for c in MISSING_LIST])
def test_each_adapter_names_a_missing_annotation_file(tmp_path, name, build, options, split, remove, message):
    import shutil
    fixture = build(tmp_path)
    target = fixture.root / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(ValueError) as err:
        load_dataset(name, split, fixture.root, size=SIZE, **options)
    assert message in one_line(err)


def test_ferplus_label_csv_names_cannot_leave_the_root(tmp_path):
    fixture = F.make_ferplus(tmp_path)
    label = fixture.root / "data" / "FER2013Valid" / "label.csv"
    lines = label.read_text().splitlines()
    lines[1] = "../../../../etc/fer0000001.png" + lines[1][lines[1].index(","):]
    label.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError) as err:
        load_dataset("ferplus", "val", fixture.root, size=SIZE)
    assert re.search(r"FER2013Valid/label\.csv line 2: path '.*' contains '\.\.'", one_line(err))
