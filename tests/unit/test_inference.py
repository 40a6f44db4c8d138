"""Sliding-window / multi-scale / flip inference against stand-in models with known outputs."""
from __future__ import annotations

import itertools

import pytest
import torch

from lseg.inference import (
    OFFICIAL_SCALES, Protocol, ProtocolError, infer, logits_fn, official_protocol,
    reduce_prompts, scaled_size, single_protocol, sliding_window, whole_image, whole_protocol,
    window_starts,
)


def identity(x: torch.Tensor) -> torch.Tensor:
    """A 'model' whose logits are its input channels: tiling errors show up pixel by pixel."""
    return x.clone()


def integer_image(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    # Small integers: sums and divisions by small counts are exact in fp32.
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-8, 9, (b, 3, h, w), generator=g).float()


def test_window_starts_official_numbers():
    assert window_starts(520, 480, 320) == [0, 320]
    assert window_starts(480, 480, 320) == [0]
    assert window_starts(1000, 480, 320) == [0, 320, 640]
    assert window_starts(961, 480, 320) == [0, 320, 640]


@pytest.mark.parametrize("length,crop,stride", [(33, 16, 10), (16, 16, 16), (97, 32, 21), (64, 32, 32)])
def test_windows_cover_every_position(length, crop, stride):
    covered = torch.zeros(length, dtype=torch.bool)
    for s in window_starts(length, crop, stride):
        covered[s:s + crop] = True
    assert bool(covered.all())


@pytest.mark.parametrize("h,w", [(20, 30), (32, 32), (70, 45), (45, 101)])
@pytest.mark.parametrize("flip", [False, True])
def test_sliding_window_identity_is_exact(h, w, flip):
    img = integer_image(2, h, w)
    out = sliding_window(identity, img, crop=32, stride=21, flip=flip)
    expected = 2 * img if flip else img
    assert out.shape == img.shape
    assert torch.equal(out, expected)


def test_sliding_window_count_map_normalises_overlaps():
    # Constant-one logits: any pixel counted twice without normalisation would read 2.
    ones = lambda x: torch.ones(x.shape[0], 1, *x.shape[-2:])  # noqa: E731
    out = sliding_window(ones, torch.zeros(1, 3, 77, 50), crop=32, stride=10)
    assert torch.equal(out, torch.ones(1, 1, 77, 50))


def test_windows_are_padded_with_normalised_black():
    seen: list[torch.Tensor] = []

    def record(x):
        seen.append(x.clone())
        return x[:, :1]

    img = torch.full((1, 3, 40, 20), 5.0)  # taller than the crop, narrower than it
    sliding_window(record, img, crop=32, stride=21, window_batch=1)
    windows = torch.cat(seen)
    assert windows.shape[1:] == (3, 32, 32)  # the model always sees the crop size
    assert len(windows) == 2  # rows 0 and 21, one column
    # real pixels keep 5, padding is (0 - 0.5) / 0.5 = -1
    assert set(windows.unique().tolist()) == {5.0, -1.0}
    assert bool((windows[0, :, :, 20:] == -1).all()) and bool((windows[0, :, :, :20] == 5).all())
    assert bool((windows[1, :, 19:, :] == -1).all())  # second window: rows 21..40 real, rest padded


def test_window_batch_does_not_change_results():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    img = torch.randn(1, 3, 50, 61)
    with torch.no_grad():
        a = sliding_window(conv, img, crop=24, stride=16, flip=True, window_batch=1)
        b = sliding_window(conv, img, crop=24, stride=16, flip=True, window_batch=100)
    assert torch.allclose(a, b, atol=1e-6)


def test_scaled_size_follows_official_rounding():
    assert scaled_size(480, 640, 1.0, 520) == (390, 520)
    assert scaled_size(640, 480, 0.5, 520) == (260, 195)
    assert scaled_size(480, 640, 1.75, 520) == (683, 910)  # 682.5 rounds half up
    assert scaled_size(100, 100, 0.75, 520) == (390, 390)
    assert scaled_size(30, 40, 0.5, None) == (15, 20)


def linear_image(h: int, w: int) -> torch.Tensor:
    ys = torch.linspace(-1, 1, h).view(h, 1).expand(h, w)
    xs = torch.linspace(-2, 3, w).view(1, w).expand(h, w)
    return torch.stack([ys + xs, 2 * ys - xs, 0.5 * ys]).unsqueeze(0)


def test_multiscale_flip_of_identity_sums_to_2S_times_image():
    # Bilinear align_corners=True resampling reproduces linear images, windows are exact, and the
    # identity is flip-equivariant, so each scale contributes exactly 2·image.
    img = linear_image(37, 53)
    proto = official_protocol(base_size=40, crop_size=32, stride=21)
    out = infer(identity, img, proto)
    assert out.shape == img.shape
    assert torch.allclose(out, 2 * len(OFFICIAL_SCALES) * img, atol=1e-4)


def test_known_constant_logits_sum_over_scales():
    c = torch.tensor([1.5, -2.0, 0.25])
    const = lambda x: c.view(1, 3, 1, 1).expand(x.shape[0], 3, *x.shape[-2:]).clone()  # noqa: E731
    img = torch.zeros(2, 3, 24, 40)
    proto = Protocol(name="t", scales=(0.5, 1.0, 2.0), flip=True, base_size=30, crop_size=16, stride=8)
    out = infer(const, img, proto)
    assert torch.allclose(out, (2 * 3 * c).view(1, 3, 1, 1).expand_as(out))


def test_flip_adds_mirrored_logits_of_mirrored_image():
    # Logits = absolute column index: not flip-equivariant. f(x) + flip(f(flip x)) = j + (W-1-j).
    def column(x):
        w = x.shape[-1]
        return torch.arange(w, dtype=torch.float32).view(1, 1, 1, w).expand(x.shape[0], 1, x.shape[-2], w)

    img = torch.zeros(1, 3, 16, 32)
    out = whole_image(column, img, flip=True)
    assert torch.equal(out, torch.full_like(out, 31.0))
    # Without flip the ramp comes back untouched.
    assert torch.equal(whole_image(column, img, flip=False)[0, 0, 0], torch.arange(32.0))


def test_whole_protocol_pads_to_size_divisor_and_crops_back():
    shapes = []

    def record(x):
        shapes.append(tuple(x.shape[-2:]))
        return x

    img = integer_image(1, 20, 33)
    out = infer(record, img, whole_protocol())
    assert shapes == [(32, 48)]
    assert torch.equal(out, img)


def test_single_protocol_is_one_sliding_pass_at_base_size():
    calls = []

    def record(x):
        calls.append(tuple(x.shape))
        return x

    img = linear_image(30, 60)
    out = infer(record, img, single_protocol(base_size=52, crop_size=48, stride=32))
    # long side 52 > 48 -> two windows along the width, short side 26 padded to 48
    assert calls == [(2, 3, 48, 48)]
    assert torch.allclose(out, img, atol=1e-5)


def test_protocol_validation():
    with pytest.raises(ValueError):
        Protocol(scales=())
    with pytest.raises(ValueError):
        Protocol(crop_size=32, stride=40)
    for bad, match in [({"scales": (1.0, -1.0)}, "scales must be positive"),
                       ({"scales": (float("nan"),)}, "scales must be positive"),
                       ({"scales": (float("inf"),)}, "scales must be positive"),
                       ({"base_size": 0}, "base size must be > 0"), ({"crop_size": 0}, "crop size must be > 0"),
                       ({"crop_size": 32, "stride": 33}, r"stride must be in \(0, crop size 32\], got 33"),
                       ({"window_batch": 0}, "window batch must be >= 1")]:
        with pytest.raises(ProtocolError, match=match):  # a user error: one line, no traceback
            Protocol(**bad)
    assert official_protocol().effective_stride == 320
    assert official_protocol().describe()["scales"] == "0.5,0.75,1,1.25,1.5,1.75"


def test_reduce_prompts_takes_max_per_class():
    logits = torch.tensor([1.0, 5.0, 2.0, -1.0]).view(1, 4, 1, 1)
    out = reduce_prompts(logits, [0, 1, 1, 2], 3)
    assert out.flatten().tolist() == [1.0, 5.0, -1.0]
    assert reduce_prompts(logits, [0, 1, 2, 3], 4) is logits


class _Text(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def encode(self, labels):
        self.calls += 1
        return torch.eye(len(labels), 3)


class _Image(torch.nn.Module):
    def forward(self, x, feats):
        return torch.einsum("bchw,nc->bnhw", x, feats)


class _TinyLSeg(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.text, self.image = _Text(), _Image()

    def forward(self, x, labels):  # pragma: no cover - logits_fn must use the two towers
        raise AssertionError("logits_fn should call model.image with cached text features")


def test_logits_fn_encodes_text_once():
    model = _TinyLSeg()
    fn = logits_fn(model, ["a", "b"])
    img = integer_image(1, 40, 40)
    out = infer(fn, img, official_protocol(base_size=40, crop_size=32, stride=21, scales=(1.0,), flip=False))
    assert model.text.calls == 1
    assert torch.equal(out, img[:, :2])


def test_logits_fn_autocasts_the_image_side_and_returns_fp32():
    seen = []

    class Image(torch.nn.Module):
        def forward(self, x, feats):
            y = torch.nn.functional.linear(x.permute(0, 2, 3, 1), torch.eye(3))  # autocast-eligible op
            seen.append(y.dtype)
            return y.permute(0, 3, 1, 2)

    model = _TinyLSeg()
    model.image = Image()
    out = logits_fn(model, ["a"], "bf16")(torch.ones(1, 3, 2, 2))
    assert seen == [torch.bfloat16] and out.dtype == torch.float32
    logits_fn(model, ["a"], "fp32")(torch.ones(1, 3, 2, 2))
    assert seen[-1] == torch.float32


def test_all_protocol_combinations_keep_shape():
    img = torch.randn(1, 3, 21, 34)
    for flip, crop in itertools.product([False, True], [None, 16]):
        proto = Protocol(name="x", scales=(0.5, 1.25), flip=flip, base_size=30, crop_size=crop)
        assert infer(identity, img, proto).shape == img.shape
