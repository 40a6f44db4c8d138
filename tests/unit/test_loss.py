"""lseg.engine.loss: per-image averaging, ignore pixels, and the banded upsample + cross-entropy."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lseg.engine.loss import segmentation_loss, upsampled_segmentation_loss


def _reference(logit_map: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """What training computed before the banded loss: full-resolution logits, then the loss."""
    up = F.interpolate(logit_map, size=tuple(labels.shape[-2:]), mode="bilinear", align_corners=True)
    return segmentation_loss(up, labels)


def test_per_image_average_then_mean_over_images():
    """Image 0: one labelled pixel with CE log 2; image 1: three labelled pixels with CE log 4 each.
    Per image, then over images: (log 2 + log 4) / 2, not the pixel mean (log 2 + 3 log 4) / 4."""
    logits = torch.zeros(2, 4, 2, 2)
    logits[0, 2:] = -math.inf  # image 0: two equal candidates -> CE = log 2 on every pixel
    labels = torch.tensor([[[0, 255], [255, 255]], [[1, 2], [3, 255]]])
    assert segmentation_loss(logits, labels).item() == pytest.approx((math.log(2) + math.log(4)) / 2, rel=1e-6)


def test_image_without_labelled_pixels_contributes_zero():
    logits = torch.randn(2, 3, 4, 4)
    labels = torch.randint(0, 3, (2, 4, 4))
    only_first = segmentation_loss(logits[:1], labels[:1])
    labels[1] = 255
    assert segmentation_loss(logits, labels).item() == pytest.approx(only_first.item() / 2, rel=1e-6)


@pytest.mark.parametrize("shape", [(2, 5, 12, 10, 24, 20), (3, 7, 9, 13, 17, 26), (1, 4, 6, 6, 11, 11),
                                   (2, 3, 5, 1, 9, 1)])
@pytest.mark.parametrize("chunks", [1, 3, 8, 1000])
def test_banded_loss_and_gradient_equal_full_resolution(shape, chunks):
    """Any number of bands (one, uneven, more than rows), odd and non-square sizes, ignore pixels,
    and an image with no labelled pixel: same loss and gradient as upsampling everything first."""
    b, n, h, w, height, width = shape
    torch.manual_seed(0)
    logit_map = (3 * torch.randn(b, n, h, w)).requires_grad_()
    labels = torch.randint(0, n, (b, height, width))
    labels[0, : height // 3] = 255
    if b > 1:
        labels[-1] = 255
    want = _reference(logit_map, labels)
    (want_grad,) = torch.autograd.grad(want, logit_map)
    got = upsampled_segmentation_loss(logit_map, labels, chunks)
    (got_grad,) = torch.autograd.grad(got, logit_map)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-5, atol=1e-5 * want_grad.abs().max().item())


def test_banded_loss_real_size_and_upstream_gradient():
    """194 labels, 240 -> 480 px: equal to the full-resolution path, and a scaled upstream gradient
    (GradScaler, accumulation) scales the result."""
    torch.manual_seed(0)
    logit_map = (5 * torch.randn(2, 194, 30, 30)).requires_grad_()
    labels = torch.randint(0, 194, (2, 60, 60))
    labels[:, :7] = 255
    want = _reference(logit_map, labels)
    (want_grad,) = torch.autograd.grad(want * 1024, logit_map)
    got = upsampled_segmentation_loss(logit_map, labels)
    (got_grad,) = torch.autograd.grad(got * 1024, logit_map)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-5, atol=1e-5 * want_grad.abs().max().item())


def test_banded_loss_is_fp32_under_autocast():
    torch.manual_seed(0)
    logit_map = torch.randn(1, 3, 4, 4)
    labels = torch.randint(0, 3, (1, 8, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = upsampled_segmentation_loss(logit_map, labels)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(_reference(logit_map, labels).item(), rel=1e-6)


def test_banded_loss_rejects_zero_chunks():
    with pytest.raises(ValueError, match="chunks must be >= 1"):
        upsampled_segmentation_loss(torch.zeros(1, 2, 2, 2), torch.zeros(1, 4, 4, dtype=torch.long), 0)


@pytest.mark.parametrize("override, message", [("train.loss_chunks=0", "train.loss_chunks: must be > 0, got 0"),
                                               ("train.fp16_init_scale=0", "train.fp16_init_scale: must be > 0")])
def test_loss_settings_are_validated(override, message):
    from lseg.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])
