"""Model FLOPs of a training step, device peaks and MFU.

FLOPs are counted once with :class:`torch.utils.flop_counter.FlopCounterMode` on fake tensors
(shapes only, no compute), with activation checkpointing *off*: MFU counts the model's work, not
the recomputation (the PaLM / torchtitan convention). SDPA runs in its math form there so the
counter sees the attention matmuls; the fused CPU attention kernel has no FLOP formula and would
silently count as zero. The loss is written in its plain full-resolution form: the trainer's chunked
form is the same math (its upsample and cross-entropy are elementwise work, which FLOP counts leave
out either way), and its backward recomputation is not model work.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from lseg import runtime
from lseg.engine.loss import segmentation_loss

# Dense (no sparsity) peak TFLOPS per precision from the vendors' datasheets. Matched by substring
# of torch.cuda.get_device_name(), first match wins (so "H100 PCIe" precedes "H100"). fp32 is the
# plain FP32 rate (no TF32), because the trainer does not enable TF32.
PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "fp32": 51.0}),
    ("H100", {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}),  # SXM
    ("H200", {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}),
    ("A100", {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.0, "fp16": 362.0, "fp32": 91.6}),
    ("A10", {"bf16": 125.0, "fp16": 125.0, "fp32": 31.2}),
    ("L4", {"bf16": 121.0, "fp16": 121.0, "fp32": 30.3}),
    ("V100", {"fp16": 125.0, "fp32": 15.7}),  # no bf16 tensor cores
]


def peak_tflops(device: torch.device, precision: str, override: float | None = None) -> float | None:
    """Peak TFLOPS for MFU: ``override`` if given, else the table for a known GPU, else None (CPU)."""
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAK_TFLOPS:
        if key in name:
            return peaks.get(precision)
    return None


def mfu(flops_per_step: float, step_seconds: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation = achieved model FLOP/s / peak FLOP/s (None without a peak)."""
    if peak is None or step_seconds <= 0:
        return None
    return flops_per_step / step_seconds / (peak * 1e12)


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs (2 per multiply-add) of everything ``fn`` runs, as FlopCounterMode counts them."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


@contextlib.contextmanager
def _fake_batch(image: torch.nn.Module, batch_size: int, size: int,
                num_classes: int) -> Iterator[tuple[dict, dict, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Fake copies of ``image``'s parameters and state and a fake batch, under fake mode.

    Yields ``(params, state, images, labels, text_features)``; checkpointing is off meanwhile (its
    hooks would hide what the blocks save and recompute) and restored afterwards.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    was_ckpt = getattr(getattr(image, "backbone", None), "grad_checkpointing", False)
    image.set_grad_checkpointing(False)
    try:
        mode = FakeTensorMode(allow_non_fake_inputs=True)
        params = {n: mode.from_tensor(p) for n, p in image.named_parameters()}
        state = {**params, **{n: mode.from_tensor(b) for n, b in image.named_buffers()}}
        device = next(image.parameters()).device
        with mode:
            images = torch.empty(batch_size, 3, size, size, device=device)
            labels = torch.zeros(batch_size, size, size, dtype=torch.long, device=device)
            text = torch.empty(num_classes, image.head1.out_channels, device=device)
            yield params, state, images, labels, text
    finally:
        image.set_grad_checkpointing(was_ckpt)


def train_flops_per_step(image: torch.nn.Module, batch_size: int, size: int, num_classes: int) -> int:
    """Forward + loss + backward FLOPs of ``image`` for one micro-batch, computed on fake tensors.

    Fake tensors carry shapes only, so a ViT-L step costs seconds to count, on any device. SDPA is
    pinned to its math form so the counter sees the attention matmuls (PyTorch has no FLOP formula
    for the fused CPU kernel). Checkpointing is switched off meanwhile: model FLOPs, not hardware
    FLOPs. Gradients come from ``autograd.grad`` so the real parameters' ``.grad`` stay untouched.
    """
    from torch.func import functional_call
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with _fake_batch(image, batch_size, size, num_classes) as (params, state, images, labels, text):
        def step() -> None:
            loss = segmentation_loss(functional_call(image, state, (images, text)), labels)
            torch.autograd.grad(loss, [p for p in params.values() if p.requires_grad])

        with sdpa_kernel(SDPBackend.MATH):
            return count_flops(step)


def saved_activations_mb(image: torch.nn.Module, batch_size: int, size: int, num_classes: int,
                         precision: str = "fp32") -> dict[str, float]:
    """MiB that autograd saves for backward, by part of the model (+ the loss), on fake tensors.

    Why: checkpointing the ViT blocks can only remove the backbone's share; this shows how much
    stays (reassemble, DPT decoder at 1/4 and 1/2 resolution, ``head1``, the N-class logits at full
    resolution and the loss). Counts each storage once, parameters never. Checkpointing is off
    (its own hooks would hide what the blocks save).
    """
    from torch.func import functional_call

    region = ["input"]
    seen: set[int] = set()
    totals: dict[str, float] = {}

    def enter(name: str) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            region[0] = name
        return hook

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = t.untyped_storage()._cdata
        if key not in seen:
            seen.add(key)
            totals[region[0]] = totals.get(region[0], 0.0) + t.untyped_storage().nbytes() / 2**20
        return t

    handles = [image.backbone.register_forward_pre_hook(enter("backbone")),
               image.decoder.register_forward_pre_hook(enter("decoder")),
               image.head1.register_forward_pre_hook(enter("head1")),
               image.head1.register_forward_hook(enter("logits"))]
    handles += [m.register_forward_pre_hook(enter("reassemble")) for m in image.reassemble]
    try:
        with _fake_batch(image, batch_size, size, num_classes) as (params, state, images, labels, text):
            seen.update(p.untyped_storage()._cdata for p in params.values())
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                with runtime.autocast(images.device, precision):
                    logits = functional_call(image, state, (images, text))
                region[0] = "loss"
                segmentation_loss(logits, labels)
    finally:
        for h in handles:
            h.remove()
    totals["total"] = sum(totals.values())
    return totals
