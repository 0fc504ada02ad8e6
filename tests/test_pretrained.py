"""fer-bench's face-pretrained trunks (#17): leakage guards, shipped files, the ``pretrained`` option."""
from __future__ import annotations

import dataclasses
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fer_bench import registry
from fer_bench.data import synthetic as S
from fer_bench.method import ParameterError, TorchMethod
from fer_bench.models import build_backbone
from fer_bench.models import named_weights
from fer_bench.models import pretrained as P

ROOT = Path(__file__).resolve().parents[1]
IDENTITY_FACTORS = ("face_width", "face_length", "jaw", "skin_tone", "eye_spacing", "eye_size", "nose_size",
                    "mouth_size", "lip_thickness", "brow_arch", "hair_volume")


# -- leakage guards ----------------------------------------------------------------------------------------


def _people(split: str, n_people: int, per_identity: int, **options) -> tuple[np.ndarray, np.ndarray]:
    """Global ids and identity-factor rows of the first ``n_people`` persons of ``split``."""
    F = S.sample_factors(split, np.arange(n_people) * per_identity, per_identity=per_identity, **options)
    return F["identity"], np.stack([F[k] for k in IDENTITY_FACTORS], 1)


@pytest.mark.parametrize("seed", [0, 1, 2])   # the default dataset and the seed= variants of the cross-dataset tables
def test_pretraining_identities_are_no_benchmark_persons(seed):
    recipe = _recipe()["faces"]
    pre_ids, pre_rows = _people(S.PRETRAIN_SPLIT, recipe["n_identities"], recipe["per_identity"], seed=recipe["seed"])
    for split in S.SPLITS:
        # every person a default-sized split holds (10 images each), and more
        ids, rows = _people(split, 1000, 10, seed=seed)
        assert not set(pre_ids.tolist()) & set(ids.tolist()), split
        # a person is a draw of continuous factors: an identical row would be the same person
        same = (pre_rows[:, None, :] == rows[None, :, :]).all(-1)
        assert not same.any(), f"{split} seed {seed}: pretraining person equals a benchmark person"


def test_pretraining_faces_carry_no_expression_information():
    faces = S.pretraining_faces(3, 2, size=32)
    fields = {f.name for f in dataclasses.fields(faces)}
    assert fields == {"images", "identity", "global_identity", "options"}
    assert faces.images.shape == (6, 32, 32, 3) and faces.identity.tolist() == [0, 0, 1, 1, 2, 2]
    assert (faces.global_identity // S.IDENTITY_STRIDE == S.PRETRAIN_CODE).all()
    with pytest.raises(ValueError, match="no split 'pretrain'"):
        S.SyntheticFER().load(S.PRETRAIN_SPLIT, None)     # not a benchmark split


def _recipe() -> dict:
    return P.manifest()["recipe"]


# -- the shipped files -------------------------------------------------------------------------------------


def test_every_shipped_file_matches_its_manifest_hash_and_loads_weights_only():
    trunks = P.manifest()["trunks"]
    assert set(trunks) >= {"smallcnn", "smallcnn_tiny", "qcs_small", "siamese_small3_w32_bn", "paca_convstem_p16_d64"}
    total = 0
    for key, entry in trunks.items():
        path = P.WEIGHTS_DIR / entry["file"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"], key
        state = torch.load(path, map_location="cpu", weights_only=True)
        assert all(isinstance(v, torch.Tensor) for v in state.values()), key
        total += path.stat().st_size
    assert total < 5 * 2 ** 20                          # "a few MB" in the package


def test_a_changed_file_is_refused(tmp_path, monkeypatch):
    folder = tmp_path / "weights"
    shutil.copytree(P.WEIGHTS_DIR, folder)
    entry = P.manifest()["trunks"]["smallcnn"]
    data = bytearray((folder / entry["file"]).read_bytes())
    data[-1] ^= 1
    (folder / entry["file"]).write_bytes(bytes(data))
    monkeypatch.setattr(named_weights, "WEIGHTS_DIR", folder)   # where the shipped files are read
    with pytest.raises(ValueError, match="sha256"):
        build_backbone("smallcnn", pretrained="synthetic-faces", in_size=48)


def test_backbone_loads_synthetic_faces_and_records_name_and_hash():
    net = build_backbone("smallcnn", pretrained="synthetic-faces", in_size=48)
    state, record = P.synthetic_faces_state("smallcnn")
    assert torch.equal(net.state_dict()["blocks.0.0.weight"], state["blocks.0.0.weight"])
    assert net.weights_record_ == record == {"name": "synthetic-faces", "trunk": "smallcnn",
                                             "sha256": P.manifest()["trunks"]["smallcnn"]["sha256"]}


def test_unknown_name_is_one_line_listing_the_allowed_values():
    with pytest.raises(ParameterError) as err:
        registry.get_method("baseline")(pretrained="synthetic_faces")
    text = str(err.value)
    assert "\n" not in text and "'synthetic-faces'" in text and "'imagenet'" in text and "None" in text
    with pytest.raises(P.UnknownWeights, match="exist for"):
        build_backbone("smallcnn_wide", pretrained="synthetic-faces", in_size=48)


QUICK_TORCH = [n for n in registry.METHODS.names() if issubclass(registry.get_method(n), TorchMethod)]


@pytest.mark.parametrize("name", QUICK_TORCH)
def test_every_quick_profile_starts_from_the_shipped_trunks(name):
    cls = registry.get_method(name)
    params = cls.resolve_params("quick")
    assert params["pretrained"] == "synthetic-faces"
    method = cls(**params)
    method.classes_, method.num_classes_ = tuple(range(7)), 7
    with torch.random.fork_rng():
        method.model_ = method.build(7)
    used = method.weights_used()
    assert used and all(r["name"] == "synthetic-faces" for r in used)
    shipped = {k: e["sha256"] for k, e in P.manifest()["trunks"].items()}
    assert all(shipped[r["trunk"]] == r["sha256"] for r in used)
    scratch = cls(**{**params, "pretrained": None})
    scratch.model_ = scratch.build(7)
    assert scratch.weights_used() == []


@pytest.mark.slow
@pytest.mark.timeout(3600)      # ~165 CPU-s on one thread
def test_the_script_regenerates_a_shipped_file_byte_for_byte(tmp_path):
    key = "smallcnn_tiny"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "pretrain_trunks.py"), "--trunks", key, "--out",
                    str(tmp_path), "--jobs", "1"], check=True, cwd=ROOT)
    assert P.sha256_of(tmp_path / f"{key}.pt") == P.manifest()["trunks"][key]["sha256"]


# -- the scratch regime on the command line and in stores ---------------------------------------------------


def test_star_pretrained_none_passes_over_methods_without_the_parameter_and_keeps_old_ids():
    import dataclasses as dc

    from fer_bench.method import parse_overrides
    from fer_bench.runner import expand_grid
    specs = expand_grid(["majority", "baseline"], ["synthetic"], [0], [0.0], "quick",
                        parse_overrides(["*.pretrained=none"], ["majority", "baseline"]), device="cpu")
    majority, baseline = specs
    assert majority.overrides == {} and baseline.overrides == {"pretrained": "none"}
    assert baseline.params["pretrained"] is None and baseline.overrides_label == ""
    # the same experiment as a cell recorded before the quick profile started from pretrained trunks, when
    # random init needed no override: same id, so --reuse and committed stores still find it
    assert baseline.cell_id == dc.replace(baseline, overrides={}).cell_id
    pretrained = expand_grid(["baseline"], ["synthetic"], [0], [0.0], "quick", {}, device="cpu")[0]
    assert pretrained.params["pretrained"] == "synthetic-faces" and pretrained.cell_id != baseline.cell_id
    # the same for light augmentation, the quick default of baseline (and six others) before QUICK_AUGMENT: the
    # committed paper tables' cells restate it and keep their ids; where it never was the default it counts
    light = expand_grid(["baseline", "siamese"], ["synthetic"], [0], [0.0], "quick",
                        parse_overrides(["*.augment=light"], ["baseline", "siamese"]), device="cpu")
    assert light[0].cell_id == dc.replace(light[0], overrides={}).cell_id
    assert light[1].cell_id != dc.replace(light[1], overrides={}).cell_id
    with pytest.raises(ParameterError, match=r"no method of this run has a parameter 'pretrainde'"):
        expand_grid(["majority", "baseline"], ["synthetic"], [0], [0.0], "quick",
                    parse_overrides(["*.pretrainde=none"], ["majority", "baseline"]), device="cpu")
