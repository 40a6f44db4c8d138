"""The training loss: cross-entropy over labelled pixels, averaged per image, then over images.

Per-image averaging makes the gradient of a global batch the same whether it is split over ranks
(DDP averages per-rank means) or over accumulation micro-steps; an image without labelled pixels
contributes zero.

Training computes it from the model's half-resolution logit map (``model.image(..., upsample=False)``)
with :func:`upsampled_segmentation_loss`: the official x2 bilinear upsample and the cross-entropy
run over bands of output rows, in the forward and again in the backward, so the full-resolution
logits of all labels (B x N x H x W fp32, 0.7 GB for 4 images x 194 labels at 480 px) and their
log-probabilities and gradient never exist at once. Only the half-resolution map is kept for backward.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from lseg.metrics import IGNORE_INDEX


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The loss from full-resolution ``logits (B, N, H, W)`` and ``labels (B, H, W)`` (255 = ignore)."""
    ce = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="none")
    valid = (labels != IGNORE_INDEX).to(ce.dtype)
    per_image = (ce * valid).flatten(1).sum(1) / valid.flatten(1).sum(1).clamp(min=1)
    return per_image.mean()


def upsampled_segmentation_loss(logit_map: torch.Tensor, labels: torch.Tensor, chunks: int = 8) -> torch.Tensor:
    """:func:`segmentation_loss` of ``logit_map (B, N, h, w)`` upsampled bilinearly (``align_corners=True``)
    to the labels' ``(H, W)``, computed over ``chunks`` bands of output rows.

    Equal, within float rounding, to ``segmentation_loss(F.interpolate(logit_map, (H, W), mode="bilinear",
    align_corners=True), labels)``, gradients included. Memory beyond the saved map is about 3/``chunks``
    of the full-resolution logits; each band costs a few more kernel launches.
    """
    if chunks < 1:
        raise ValueError(f"chunks must be >= 1, got {chunks}")
    return _UpsampledCrossEntropy.apply(logit_map.float(), labels, chunks)


def _source_rows(in_size: int, out_size: int) -> tuple[list[int], list[int], list[float]]:
    """For each output index: the two input indices and the weight of the second (align_corners=True)."""
    scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    lo = [min(math.floor(i * scale), in_size - 1) for i in range(out_size)]
    return lo, [min(i + 1, in_size - 1) for i in lo], [i * scale - j for i, j in zip(range(out_size), lo)]


def _on(device: torch.device, rows: tuple[list[int], list[int], list[float]]) -> tuple[torch.Tensor, ...]:
    lo, hi, weight = rows
    return (torch.tensor(lo, device=device), torch.tensor(hi, device=device),
            torch.tensor(weight, dtype=torch.float32, device=device))


class _Bands:
    """The row bands of one loss evaluation and how to compute the loss of each."""

    def __init__(self, logit_map: torch.Tensor, labels: torch.Tensor, chunks: int) -> None:
        (b, _, h, w), (height, width) = logit_map.shape, labels.shape[-2:]
        self.host_rows = _source_rows(h, height)  # band limits are read on the host: no device sync
        self.rows = _on(logit_map.device, self.host_rows)
        self.cols = _on(logit_map.device, _source_rows(w, width))
        self.labels = labels
        self.height = height
        self.step = -(-height // min(chunks, height))
        # Each image's share: 1 / (its labelled pixels) / (images), as in segmentation_loss.
        count = (labels != IGNORE_INDEX).flatten(1).sum(1).clamp(min=1)
        self.weight = 1.0 / (count.to(logit_map.dtype) * b)

    def __iter__(self):
        """``(r0, r1, s0, s1)``: output rows ``r0:r1`` need rows ``s0:s1`` of the half-resolution map."""
        lo, hi, _ = self.host_rows
        for r0 in range(0, self.height, self.step):
            r1 = min(r0 + self.step, self.height)
            yield r0, r1, lo[r0], hi[r1 - 1] + 1

    def loss(self, band: torch.Tensor, r0: int, r1: int, s0: int) -> torch.Tensor:
        """Weighted cross-entropy sum of output rows ``r0:r1`` from ``band`` = map rows ``s0:...``."""
        lo, hi, wy = (t[r0:r1] for t in self.rows)
        x_lo, x_hi, wx = self.cols
        wy = wy.view(1, 1, -1, 1)
        rows = band.index_select(2, lo - s0) * (1 - wy) + band.index_select(2, hi - s0) * wy
        up = rows.index_select(3, x_lo) * (1 - wx) + rows.index_select(3, x_hi) * wx
        ce = F.cross_entropy(up, self.labels[:, r0:r1], ignore_index=IGNORE_INDEX, reduction="none")
        return (ce.flatten(1).sum(1) * self.weight).sum()


class _UpsampledCrossEntropy(torch.autograd.Function):
    """Forward: the loss band by band, no graph. Backward: each band recomputed with its own small graph."""

    @staticmethod
    def forward(ctx: Any, logit_map: torch.Tensor, labels: torch.Tensor, chunks: int) -> torch.Tensor:
        with torch.autocast(logit_map.device.type, enabled=False):
            bands = _Bands(logit_map, labels, chunks)
            total = logit_map.new_zeros(())
            for r0, r1, s0, s1 in bands:
                total += bands.loss(logit_map[:, :, s0:s1], r0, r1, s0)
        ctx.save_for_backward(logit_map, labels)
        ctx.chunks = chunks
        return total

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        logit_map, labels = ctx.saved_tensors
        grad = torch.zeros_like(logit_map)
        with torch.autocast(logit_map.device.type, enabled=False), torch.enable_grad():
            bands = _Bands(logit_map, labels, ctx.chunks)
            for r0, r1, s0, s1 in bands:
                band = logit_map[:, :, s0:s1].detach().requires_grad_()
                (g,) = torch.autograd.grad(bands.loss(band, r0, r1, s0), band)
                grad[:, :, s0:s1] += g
        return grad * grad_out, None, None
