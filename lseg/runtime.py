"""Where and how tensors run: the device, the autocast dtype, peak memory.

Training, evaluation, benchmarking, prediction and the demo all make the same three choices; they
make them here so that ``device=auto`` or ``precision=bf16`` means one thing everywhere.
"""
from __future__ import annotations

import contextlib
import resource
from typing import Iterator

import torch

#: Precision names accepted by every entry point, mapped to the autocast dtype (None = plain fp32).
PRECISIONS: dict[str, torch.dtype | None] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
DEVICES = ("auto", "cpu", "cuda")


class DeviceError(RuntimeError):
    """The requested device is not there (one line; a user error)."""


def pick_device(requested: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` takes this process's GPU when CUDA is visible, else the CPU; ``cuda`` insists on one.

    ``local_rank`` picks the GPU of this process on a multi-GPU node (wrapped around the visible
    devices, so a node that hides some GPUs still works).
    """
    if requested not in DEVICES:
        raise DeviceError(f"device '{requested}' is not one of {list(DEVICES)}")
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError("device cuda requested but no CUDA device is visible (use auto or cpu)")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype for ``precision`` (None for fp32: autocast stays off)."""
    if precision not in PRECISIONS:
        raise DeviceError(f"precision '{precision}' is not one of {list(PRECISIONS)}")
    return PRECISIONS[precision]


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``precision`` on ``device`` (a no-op context for fp32)."""
    dtype = autocast_dtype(precision)
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so wall-clock timings mean something on a GPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak window for :func:`peak_memory_mb` (CUDA only; the CPU figure is a high-water mark)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory in MB: CUDA max allocated since the last reset, or the process's RSS high-water mark."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


@contextlib.contextmanager
def no_autocast(device: torch.device) -> Iterator[None]:
    """Run a block in full precision inside an autocast region (logits, softmax, loss)."""
    with torch.autocast(device.type, enabled=False):
        yield
