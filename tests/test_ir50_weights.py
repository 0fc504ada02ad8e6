"""The MS-Celeb-1M IR-50 that POSTER / QCS distribute (``ir50.pth``) loads into ``ir50_s3`` (issue #17).

Nothing is downloaded (the file is on Google Drive). The tests build state_dicts with the exact key names
and shapes of the official definitions, kept in ``tests/fixtures/ir50_official_keys.json``. That file was
written by instantiating the official classes (no weights involved; torch 2.14.1), outside this repository:
  - "qcs": github.com/birdwcp/QCS @ 293f28f948dccdca385917fbc0cfeafd6220d2e2, ``models/ir50.py``
    (unchanged since 673e82d; the same module layout as Talented-Q/POSTER_V2 ``models/ir50.py``),
    ``Backbone(50, 0.0, 'ir')``: the module QCS / DCS load ``ir50.pth`` into. 304 entries: ``input_layer``,
    ``body1.0-2``, ``body2.0-3``, ``body3.0-13`` and the unused embedding head ``output_layer``.
  - "face_evolve": github.com/ZhaoJ9014/face.evoLVe @ a9897bda52bdbb8d7c2fe28f1e21827dfd69d14e,
    ``backbone/model_irse.py`` (last changed ec8382a), ``Backbone([112, 112], 50, 'ir')`` (= ``IR_50``): the
    training code of the MS-Celeb IR-50. 349 entries: one ``body.0-23`` Sequential (all 4 stages) and
    ``output_layer``.
Which of the two layouts the distributed file has could not be checked without the file (the official
loader silently skips keys it cannot place); both must load with nothing missing and nothing unexplained.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from torch import Tensor

import fer_bench_methods.qcs as Q  # registers qcs and dcs
from fer_bench.models import build_backbone
from fer_bench.models.backbones import WEIGHTS_ENV
from fer_bench.registry import get_method

FIXTURE = Path(__file__).with_name("fixtures") / "ir50_official_keys.json"
LAYOUTS = {name: [(key, tuple(shape)) for key, shape in entry["keys"]]
           for name, entry in json.loads(FIXTURE.read_text()).items() if name != "about"}
EVOLVE_STAGE_STARTS = (0, 3, 7, 21)          # face.evoLVe body.<k>: stage s starts at unit k = 0, 3, 7, 21
HEAD_OF_QCS = [k for k, _ in LAYOUTS["qcs"] if k.startswith("output_layer.")]
LOGGER = "fer_bench.models.backbones"


def official_state(layout: str, seed: int = 0) -> dict[str, Tensor]:
    """Random tensors under the official keys and shapes (the counters as int64 scalars, as torch saves them)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in LAYOUTS[layout]:
        if key.endswith("num_batches_tracked"):
            state[key] = torch.randint(1, 10**6, shape, generator=g)
        else:
            state[key] = torch.randn(shape, generator=g)
    return state


def evolve_to_trunk_name(key: str) -> str:
    """``body.<k>.rest`` -> ``body<s>.<i>.rest`` (the oracle for the face.evoLVe numbering); others unchanged."""
    if not key.startswith("body."):
        return key
    k, rest = key[len("body."):].split(".", 1)
    stage = max(s for s, start in enumerate(EVOLVE_STAGE_STARTS) if start <= int(k))
    return f"body{stage + 1}.{int(k) - EVOLVE_STAGE_STARTS[stage]}.{rest}"


def dropped_log(caplog) -> list[tuple[int, str]]:
    """(count, listed keys) of every "ignoring N keys of parts the backbone does not build" record."""
    return [(r.args[1], r.args[2]) for r in caplog.records
            if r.name == LOGGER and r.levelno == logging.INFO and "does not build" in r.msg]


@pytest.fixture(scope="module")
def qcs_file(tmp_path_factory) -> tuple[Path, dict[str, Tensor]]:
    """The QCS layout saved once as <folder>/ir50.pth (about 120 MB, most of it the unused output_layer)."""
    state = official_state("qcs")
    path = tmp_path_factory.mktemp("weights") / "ir50.pth"
    torch.save(state, path)
    return path, state


def test_fixture_is_the_official_layout():
    assert len(LAYOUTS["qcs"]) == 304 and len(LAYOUTS["face_evolve"]) == 349
    qcs = dict(LAYOUTS["qcs"])
    assert qcs["input_layer.0.weight"] == (64, 3, 3, 3) and qcs["output_layer.3.weight"] == (512, 512 * 7 * 7)
    assert qcs["body2.0.shortcut_layer.0.weight"] == (128, 64, 1, 1) and "body1.0.shortcut_layer.0.weight" not in qcs
    assert max(int(k.split(".")[1]) for k in qcs if k.startswith("body3.")) == 13
    assert len(HEAD_OF_QCS) == 12


def test_qcs_layout_loads_into_ir50_s3(qcs_file, caplog):
    path, state = qcs_file
    with caplog.at_level(logging.INFO, logger=LOGGER):
        model = build_backbone("ir50_s3", pretrained=path, in_size=112, strict=True)
    own = model.state_dict()
    assert set(own) == set(state) - set(HEAD_OF_QCS)                     # nothing missing, nothing renamed
    assert dropped_log(caplog) == [(12, ", ".join(HEAD_OF_QCS))]         # the head, dropped by name, logged
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    for key, value in own.items():
        assert value.dtype == state[key].dtype and torch.equal(value, state[key]), key
    # spot checks, by the official names: stem conv, a PReLU, a stage-entry shortcut, the last BN of stage 3
    assert torch.equal(model.input_layer[0].weight, state["input_layer.0.weight"])
    assert torch.equal(model.body1[2].res_layer[2].weight, state["body1.2.res_layer.2.weight"])
    assert torch.equal(model.body2[0].shortcut_layer[0].weight, state["body2.0.shortcut_layer.0.weight"])
    assert torch.equal(model.body3[13].res_layer[4].running_var, state["body3.13.res_layer.4.running_var"])


def test_qcs_checkpoint_prefixes_load(qcs_file, tmp_path):
    # The DataParallel "module." and QCS's "ir_back." prefixes (how QCS saves its trunk) are stripped.
    _, state = qcs_file
    head_free = {k: v for k, v in state.items() if not k.startswith("output_layer.")}
    torch.save({"module.ir_back." + k: v for k, v in head_free.items()}, tmp_path / "qcs_trunk.pth")
    model = build_backbone("ir50_s3", pretrained=tmp_path / "qcs_trunk.pth", in_size=112, strict=True)
    assert torch.equal(model.body3[7].res_layer[3].weight, state["body3.7.res_layer.3.weight"])


def test_face_evolve_layout_loads_into_ir50_s3(tmp_path, caplog):
    state = official_state("face_evolve", seed=1)
    torch.save(state, tmp_path / "ir50.pth")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        model = build_backbone("ir50_s3", pretrained=tmp_path / "ir50.pth", in_size=112, strict=True)
    own = model.state_dict()
    renamed = {evolve_to_trunk_name(k): k for k in state}
    not_built = sorted(set(renamed) - set(own))
    stage4 = [k for k in not_built if k.startswith("body4.")]
    assert sorted(set(own)) == sorted(set(renamed) - set(not_built))     # every trunk key came from the file
    assert set(not_built) == set(stage4) | {k for k in renamed if k.startswith("output_layer.")}
    assert {k.split(".")[1] for k in stage4} == {"0", "1", "2"} and len(stage4) == 45   # units 21-23
    assert [count for count, _ in dropped_log(caplog)] == [len(not_built)] == [57]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    for key, value in own.items():
        assert torch.equal(value, state[renamed[key]]), key
    assert torch.equal(model.body3[0].shortcut_layer[1].running_mean, state["body.7.shortcut_layer.1.running_mean"])
    assert torch.equal(model.body3[13].res_layer[1].weight, state["body.20.res_layer.1.weight"])


def test_paper_profile_reads_ir50_pth_from_the_weights_folder(qcs_file, tmp_path, monkeypatch):
    path, state = qcs_file
    monkeypatch.setenv(WEIGHTS_ENV, str(path.parent))
    monkeypatch.chdir(tmp_path)                                          # no ir50.pth in the working directory
    model = build_backbone(Q.PAPER["backbone"], pretrained=Q.PAPER["pretrained"], in_size=Q.PAPER["trunk_input"])
    assert torch.equal(model.body2[3].res_layer[0].weight, state["body2.3.res_layer.0.weight"])


@pytest.mark.parametrize("env", ["weights", "cache", "home"])
def test_missing_ir50_pth_is_one_line_naming_source_and_folder(env, tmp_path, monkeypatch):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.delenv("FER_BENCH_CACHE", raising=False)                 # (conftest sets it per session)
    if env == "weights":
        monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "w"))
        folder = tmp_path / "w"
    elif env == "cache":
        monkeypatch.setenv("FER_BENCH_CACHE", str(tmp_path / "c"))
        folder = tmp_path / "c" / "weights"
    else:
        monkeypatch.setenv("HOME", str(tmp_path / "h"))
        folder = tmp_path / "h" / ".cache" / "fer_bench" / "weights"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as err:
        build_backbone(Q.PAPER["backbone"], pretrained=Q.PAPER["pretrained"], in_size=Q.PAPER["trunk_input"])
    message = str(err.value)
    assert "\n" not in message
    assert "'ir50.pth'" in message and f"{folder}/" in message and WEIGHTS_ENV in message
    assert "https://drive.google.com/file/d/1FV8kUSeVbZ815iWt-YIYiQrCDChrhO2G" in message
    assert "https://github.com/birdwcp/QCS#pretrained-model" in message
    assert f"save it as {folder / 'ir50.pth'}," in message and "pretrained=None" in message


@pytest.mark.parametrize("name, weights", [
    ("qcs", "ir50.pth"), ("dcs", "ir50.pth"),
    ("baseline", "imagenet"), ("sgm", "imagenet"), ("triplet", "imagenet"), ("dgms", "imagenet"),
    ("sceald", "imagenet"), ("paca", "imagenet"), ("paca_learned", "imagenet"), ("vit", "imagenet"),
    ("siamese", "imagenet"),
])
def test_paper_profiles_start_from_the_papers_pretrained_weights(name, weights):
    # Read from the profile tables, not resolve_params: a missing file is reported when the network is built.
    paper = get_method(name).profiles["paper"]
    per_dataset = [d["pretrained"] for d in paper.get("datasets", {}).values() if "pretrained" in d]
    assert [paper.get("pretrained")] + per_dataset == [weights] * (1 + len(per_dataset))
