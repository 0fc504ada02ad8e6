"""Backbone factory: shapes of every registered backbone, the registry's errors, weight loading
(user files, strict / lenient key reports, ImageNet from the torch cache, the offline error)."""
from __future__ import annotations

import logging
from urllib.error import URLError

import pytest
import torch
import torchvision
from torchvision.models import WeightsEnum

from fer_bench.models import (
    BACKBONES,
    IR50,
    Backbone,
    WeightsMismatch,
    WeightsUnavailable,
    build_backbone,
    imagenet_cache_path,
    normalize,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Batch-2 forwards of 32 px images gain nothing from a second thread, and two OpenMP threads
    # slow down ~10x when another process holds a core (shared 2-core machines); restored after.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# name, in_size, batch, expected feature-map side at that size
SHAPES = [
    ("smallcnn", 32, 4, 2),
    ("smallcnn_wide", 32, 2, 2),
    ("smallcnn_tiny", 16, 2, 1),
    ("resnet18", 32, 2, 1),
    ("resnet50", 32, 2, 1),
    ("vgg16", 32, 2, 2),
    ("alexnet", 32, 2, 1),
    ("ir50", 32, 2, 2),
    ("ir50_s3", 32, 2, 4),
]


def test_every_shared_backbone_is_covered():
    # Method-specific backbone files (qcs_blocks, sgm_backbones) are covered by their methods' tests.
    shared = {name for name, builder in BACKBONES.items()
              if getattr(builder, "__module__", "") in ("fer_bench.models.backbones", "fer_bench.models.ir50")}
    assert {name for name, *_ in SHAPES} == shared


@pytest.mark.parametrize("name,size,batch,side", SHAPES)
def test_shapes(name, size, batch, side):
    model = build_backbone(name, in_size=size)
    assert isinstance(model, Backbone) and model.name == name
    x = torch.randn(batch, 3, size, size)
    with torch.no_grad():
        fmap, vec = model(x)
        assert fmap.shape == (batch, model.map_channels, side, side)
        assert vec.shape == (batch, model.out_dim)
        assert torch.isfinite(vec).all()
        assert torch.allclose(vec, fmap.mean(dim=(2, 3)))
        if BACKBONES[name].has_stages:
            model.eval()                                     # same BN statistics in both calls
            stages = model.forward_stages(x)
            assert torch.equal(stages[-1], model(x)[0])
            assert [s.shape[-1] for s in stages] == sorted((s.shape[-1] for s in stages), reverse=True)
        else:
            with pytest.raises(NotImplementedError, match=name):
                model.forward_stages(x)


def test_ir50_stages():
    with torch.no_grad():
        stages = build_backbone("ir50", in_size=32).eval().forward_stages(torch.randn(1, 3, 32, 32))
    assert [tuple(s.shape) for s in stages] == [(1, 64, 16, 16), (1, 128, 8, 8), (1, 256, 4, 4), (1, 512, 2, 2)]


def test_ir50_layout_matches_the_qcs_checkpoint_names():
    # notes/qcs-official-code.md 5.1: the official 3-stage IR-50 state_dict has 304 entries, 12 of them in
    # the unused output_layer (BN2d 5 + Linear 2 + BN1d 5), which this trunk does not build.
    state = build_backbone("ir50_s3", in_size=32).state_dict()
    assert len(state) == 304 - 12
    for key in ("input_layer.0.weight", "input_layer.2.weight", "body1.0.res_layer.4.running_var",
                "body2.0.shortcut_layer.0.weight", "body3.13.res_layer.3.weight"):
        assert key in state
    assert "body1.0.shortcut_layer.0.weight" not in state          # 64 -> 64: parameter-free subsampling
    unit = build_backbone("ir50", in_size=32, mid_bn=True).body1[0].res_layer
    assert [type(m).__name__ for m in unit] == ["BatchNorm2d", "Conv2d", "BatchNorm2d", "PReLU", "Conv2d",
                                                "BatchNorm2d"]


def test_ir50_reads_single_body_numbering_and_prefixes(tmp_path):
    # A face.evoLVe-style file: one "body.<k>" Sequential (stage s starts at k = 0, 3, 7, 21), QCS's
    # "ir_back." prefix and the embedding head. Kept small: a 2-stage trunk, so body.7+ (stage 3) and
    # output_layer are keys the target does not build and are dropped; everything else must land.
    src = IR50(num_stages=2)
    starts = {1: 0, 2: 3}
    foreign = {}
    for key, value in src.state_dict().items():
        if key.startswith("body"):
            stage, rest = key[4:].split(".", 1)
            unit, rest = rest.split(".", 1)
            key = f"body.{starts[int(stage)] + int(unit)}.{rest}"
        foreign["ir_back." + key] = value
    foreign["ir_back.body.7.res_layer.0.weight"] = torch.zeros(128)
    foreign["ir_back.output_layer.3.weight"] = torch.zeros(512, 8)
    torch.save(foreign, tmp_path / "ir50.pth")
    model = build_backbone("ir50", pretrained=tmp_path / "ir50.pth", in_size=32, num_stages=2)
    assert len(model.state_dict()) == len(src.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(value, src.state_dict()[key]), key


def test_unknown_name_suggests_and_lists():
    with pytest.raises(ValueError) as err:
        build_backbone("resnt18")
    message = str(err.value)
    assert "did you mean 'resnet18'" in message and "smallcnn_wide" in message and "\n" not in message


def test_unknown_option_names_it():
    with pytest.raises(ValueError, match="'depth'.*widths"):
        build_backbone("smallcnn", depth=3)


def test_too_small_inputs_are_refused():
    with pytest.raises(ValueError, match="at least 16"):
        build_backbone("vgg16", in_size=8)
    model = build_backbone("smallcnn", in_size=32)
    with pytest.raises(ValueError, match="at least 16x16"):
        model(torch.randn(2, 3, 8, 8))
    small = build_backbone("alexnet", in_size=24)               # auto: the stride-light stem
    assert small.min_size == 19
    with torch.no_grad():
        assert small(torch.randn(2, 3, 24, 24))[0].shape[-1] >= 1


def test_stems_share_weights(tmp_path):
    torch.save(build_backbone("alexnet", in_size=64).state_dict(), tmp_path / "a.pth")
    build_backbone("alexnet", pretrained=tmp_path / "a.pth", in_size=64, stem="light")   # strict: no error


def test_user_file_round_trip(tmp_path):
    src = build_backbone("smallcnn_tiny", in_size=32)
    for p in src.parameters():
        torch.nn.init.normal_(p)
    wrapped = {"state_dict": {"module." + k: v for k, v in src.state_dict().items()}, "epoch": 3}
    torch.save(wrapped, tmp_path / "w.pth")
    model = build_backbone("smallcnn_tiny", pretrained=str(tmp_path / "w.pth"), in_size=32)
    for key, value in src.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_mismatching_keys_are_reported(tmp_path, caplog):
    src = build_backbone("smallcnn_tiny", in_size=32)
    state = dict(src.state_dict())
    del state["blocks.0.0.weight"]
    state["extra.weight"] = torch.zeros(3)
    state["blocks.1.1.bias"] = torch.zeros(5)                   # wrong shape
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(WeightsMismatch) as err:
        build_backbone("smallcnn_tiny", pretrained=tmp_path / "w.pth", in_size=32)
    message = str(err.value)
    for part in ("blocks.0.0.weight", "extra.weight", "blocks.1.1.bias", "strict=False"):
        assert part in message
    with caplog.at_level(logging.WARNING, logger="fer_bench.models.backbones"):
        model = build_backbone("smallcnn_tiny", pretrained=tmp_path / "w.pth", in_size=32, strict=False)
    logged = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "blocks.0.0.weight" in logged and "extra.weight" in logged and "blocks.1.1.bias" in logged
    assert torch.equal(model.state_dict()["blocks.2.0.weight"], src.state_dict()["blocks.2.0.weight"])


def test_missing_file_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_backbone("smallcnn", pretrained=tmp_path / "nope.pth")


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """A private, empty torch hub cache, and no network for torchvision's weights API."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert torch.hub.get_dir().startswith(str(tmp_path)), "torch.hub.set_dir was called elsewhere"

    def offline(self, *args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    return tmp_path


def test_imagenet_offline_names_the_file(torch_home):
    with pytest.raises(WeightsUnavailable) as err:
        build_backbone("resnet18", pretrained="imagenet", in_size=32)
    message = str(err.value)
    assert isinstance(err.value, RuntimeError) and "\n" not in message
    assert "resnet18-f37072fd.pth" in message
    assert str(torch_home / "hub" / "checkpoints") in message


def test_imagenet_from_the_cache_without_network(torch_home):
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    path = imagenet_cache_path(weights)
    assert path.name == "resnet18-f37072fd.pth"
    path.parent.mkdir(parents=True)
    full = torchvision.models.resnet18(weights=None)               # with its fc, as the real file is
    torch.save(full.state_dict(), path)
    model = build_backbone("resnet18", pretrained="imagenet", in_size=32)
    assert torch.equal(model.conv1.weight, full.conv1.weight)
    assert torch.equal(model.layer4[1].bn2.running_var, full.layer4[1].bn2.running_var)


@pytest.mark.parametrize("name", ["ir50", "smallcnn"])
def test_no_imagenet_weights_for_own_architectures(name, torch_home):
    with pytest.raises(ValueError, match="No ImageNet weights exist"):
        build_backbone(name, pretrained="imagenet", in_size=32)


def test_normalize_layouts():
    imgs = torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8)                  # dataset layout
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    expected = (imgs.permute(0, 3, 1, 2).float() / 255 - mean) / std
    assert torch.allclose(normalize(imgs), expected)
    assert torch.allclose(normalize(imgs.permute(0, 3, 1, 2)), expected)
    assert torch.allclose(normalize(imgs.permute(0, 3, 1, 2).float() / 255), expected)
    assert torch.allclose(build_backbone("smallcnn", in_size=16).normalize(imgs), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_forward():
    model = build_backbone("ir50_s3", in_size=32).cuda()
    fmap, vec = model(normalize(torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8).cuda()))
    assert fmap.is_cuda and vec.shape == (2, 256)
