"""BatchAugment: shapes, seeding, identity, exact flips, crop scale, erasing rectangles, the jitter
against torchvision's functional ops as the oracle, validation, and a printed speed figure."""
from __future__ import annotations

import time

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from fer_bench.data.augment import _BRIGHT, _CONTRAST, _HUE, _N_DRAWS, _SAT, BatchAugment

OFF = dict(hflip=0.0, crop_scale=None, degrees=0.0, brightness=0.0, contrast=0.0, saturation=0.0, erase_p=0.0)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def batch() -> torch.Tensor:
    return torch.rand(8, 3, 20, 24, generator=gen(123))                # (B, 3, H, W), non-square


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_device_and_input_untouched(batch, dtype):
    x = batch.to(dtype)
    before = x.clone()
    y = BatchAugment()(x, gen(0))
    assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
    assert torch.equal(x, before)
    assert not torch.equal(y, x)


def test_seeding(batch):
    aug = BatchAugment.from_string("standard")
    assert torch.equal(aug(batch, gen(1)), aug(batch, gen(1)))
    assert not torch.equal(aug(batch, gen(1)), aug(batch, gen(2)))


def test_global_rng_is_not_used(batch):
    state = torch.get_rng_state()
    BatchAugment()(batch, gen(0))
    assert torch.equal(state, torch.get_rng_state())
    with pytest.raises(TypeError, match="torch.Generator"):
        BatchAugment()(batch, None)  # type: ignore[arg-type]


def test_everything_disabled_is_the_identity(batch):
    assert torch.equal(BatchAugment.from_string("none")(batch, gen(0)), batch)
    assert torch.equal(BatchAugment(**OFF)(batch, gen(0)), batch)
    # geometry on but neutral (full crop, no rotation, no flip) goes through grid_sample: pixel exact
    # up to rounding because align_corners=False maps pixel centres onto pixel centres
    neutral = BatchAugment(**{**OFF, "crop_scale": (1.0, 1.0), "crop_ratio": (24 / 20, 24 / 20)})
    assert torch.allclose(neutral(batch, gen(0)), batch, atol=1e-5)


def test_flip_only_is_torch_flip(batch):
    flip = BatchAugment(**{**OFF, "hflip": 1.0})
    assert torch.equal(flip(batch, gen(0)), batch.flip(-1))              # indexing path: exact
    via_grid = BatchAugment(**{**OFF, "hflip": 1.0, "crop_scale": (1.0, 1.0), "crop_ratio": (24 / 20, 24 / 20)})
    assert torch.allclose(via_grid(batch, gen(0)), batch.flip(-1), atol=1e-5)


def test_flip_probability_half():
    x = torch.arange(4.0).expand(400, 3, 1, 4).contiguous()              # each row 0 1 2 3
    y = BatchAugment(**{**OFF, "hflip": 0.5})(x, gen(0))
    flipped = y[:, 0, 0, 0] == 3
    assert torch.equal(y[flipped], x[flipped].flip(-1)) and torch.equal(y[~flipped], x[~flipped])
    assert 150 < int(flipped.sum()) < 250


def test_crop_scale_zooms():
    # a ramp along the width: value = column index. A crop of a quarter of the area (half the width)
    # resized back doubles the slope's spacing: neighbouring output pixels differ by 0.5.
    W = 32
    x = torch.arange(float(W)).expand(4, 3, W, W).contiguous()
    y = BatchAugment(**{**OFF, "crop_scale": (0.25, 0.25), "crop_ratio": (1.0, 1.0)})(x, gen(0))
    steps = y[..., 1:-1].diff(dim=-1)
    assert torch.allclose(steps, torch.full_like(steps, 0.5), atol=1e-4)
    assert (y.amin(dim=(1, 2, 3)) >= 0).all() and (y.amax(dim=(1, 2, 3)) <= W - 1).all()


def test_rotation_keeps_the_centre_pixel():
    x = torch.rand(6, 3, 9, 9, generator=gen(5))
    y = BatchAugment(**{**OFF, "degrees": 30.0})(x, gen(0))
    assert torch.allclose(y[..., 4, 4], x[..., 4, 4], atol=1e-5)
    assert not torch.allclose(y, x, atol=1e-3)


@pytest.mark.parametrize("fill", [0.5, (0.1, 0.2, 0.3)])
def test_erasing_fills_one_rectangle(fill):
    B, H, W = 16, 20, 24
    x = torch.full((B, 3, H, W), 2.0)                                     # outside any fill value
    aug = BatchAugment(**{**OFF, "erase_p": 1.0, "erase_value": fill})
    y = aug(x, gen(0))
    values = torch.as_tensor(fill).expand(3)
    for b in range(B):
        mask = y[b, 0] != 2.0                                             # (H, W)
        rows, cols = mask.any(dim=1).nonzero().flatten(), mask.any(dim=0).nonzero().flatten()
        assert len(rows) and len(cols)
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        assert mask[r0:r1, c0:c1].all() and int(mask.sum()) == (r1 - r0) * (c1 - c0)   # one full rectangle
        for c in range(3):
            assert torch.all(y[b, c][mask] == values[c])
        assert 0.02 * H * W * 0.5 <= int(mask.sum()) <= 0.2 * H * W * 1.5
    assert torch.equal(BatchAugment(**{**OFF, "erase_p": 0.0})(x, gen(0)), x)


def test_jitter_matches_torchvision_functional():
    # oracle: torchvision's adjust_brightness -> adjust_contrast -> adjust_saturation per image, with the
    # factors this call draws; mid-range inputs so torchvision's intermediate clamps do not bite.
    x = torch.rand(6, 3, 16, 16, generator=gen(3)) * 0.5 + 0.2
    aug = BatchAugment(**{**OFF, "brightness": 0.3, "contrast": 0.3, "saturation": 0.3})
    y = aug(x, gen(7))
    u = torch.rand(6, _N_DRAWS, generator=gen(7))
    for i in range(6):
        b, c, s = (1 + 0.3 * (2 * u[i, col] - 1) for col in (_BRIGHT, _CONTRAST, _SAT))
        ref = TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(x[i], float(b)), float(c)), float(s))
        assert torch.allclose(y[i], ref, atol=1e-4)       # float32 rounding of two summation orders


def test_hue_matches_torchvision_functional():
    x = torch.rand(6, 3, 16, 16, generator=gen(8))
    x[0, :, :2] = 0.5                                                    # grey pixels: no hue to shift
    x[1, :, :2] = 0.0                                                    # black pixels
    y = BatchAugment(**{**OFF, "hue": 0.1})(x, gen(9))
    u = torch.rand(6, _N_DRAWS, generator=gen(9))
    for i in range(6):
        ref = TF.adjust_hue(x[i], float(0.1 * (2 * u[i, _HUE] - 1)))
        assert torch.allclose(y[i], ref, atol=1e-5)


def test_turning_one_transform_off_keeps_the_others_draws(batch):
    with_jitter = BatchAugment(**{**OFF, "erase_p": 1.0, "erase_value": float("nan"), "brightness": 0.2})
    without = BatchAugment(**{**OFF, "erase_p": 1.0, "erase_value": float("nan")})
    assert torch.equal(with_jitter(batch, gen(4)).isnan(), without(batch, gen(4)).isnan())


def test_presets_and_overrides():
    assert BatchAugment.from_string("none").is_identity
    light = BatchAugment.from_string("light")
    assert light.hflip == 0.5 and light.crop_scale == (0.8, 1.0) and light.degrees == 0 and light.erase_p == 0
    custom = BatchAugment.from_string("standard:degrees=5,crop_scale=none", erase_scale=(0.1, 0.3))
    assert custom.degrees == 5.0 and custom.crop_scale is None and custom.erase_scale == (0.1, 0.3)
    assert BatchAugment.from_string("standard") == BatchAugment()
    with pytest.raises(ValueError, match="preset 'heavy'.*standard"):
        BatchAugment.from_string("heavy")
    with pytest.raises(ValueError, match="'rotation'"):
        BatchAugment.from_string("standard:rotation=3")


def test_bad_parameters_are_one_sentence():
    with pytest.raises(ValueError, match=r"The 'hflip' parameter of BatchAugment must be a float in \[0, 1\]\. "
                                         r"Got 2 instead\."):
        BatchAugment(hflip=2)
    with pytest.raises(ValueError, match="crop_scale"):
        BatchAugment(crop_scale=(0.9, 0.5))
    with pytest.raises(ValueError, match="padding_mode"):
        BatchAugment(padding_mode="wrap")
    with pytest.raises(ValueError, match="float images"):
        BatchAugment()(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), gen(0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_generator_cuda_batch(batch):
    aug = BatchAugment()
    y = aug(batch.cuda(), gen(0))
    assert y.is_cuda
    assert torch.allclose(y.cpu(), aug(batch, gen(0)), atol=1e-4)


def test_speed_batch128_48px():
    x = torch.rand(128, 3, 48, 48, generator=gen(0))
    aug, g = BatchAugment(), gen(0)
    aug(x, g)                                                             # warm-up
    times = []
    for _ in range(10):
        start = time.perf_counter()
        aug(x, g)
        times.append(time.perf_counter() - start)
    ms = 1000 * sorted(times)[len(times) // 2]
    print(f"BatchAugment standard, 128 x 3 x 48 x 48 on CPU ({torch.get_num_threads()} threads): {ms:.1f} ms median")
    assert ms < 2000                                                      # sanity only; the target is < 50 ms
