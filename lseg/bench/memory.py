"""Peak memory of a code region above its start, on CUDA or (Linux) CPU.

On CUDA this is the caching allocator's peak (through :mod:`lseg.runtime`). On CPU it is the
kernel's RSS high-water mark (``VmHWM``), reset through ``/proc/self/clear_refs`` with glibc told
to return every large block to the OS at ``free`` (fixed mmap threshold), so RSS follows what is
really allocated instead of ratcheting up; without that, a second measurement in the same process
would inherit the first one's peak.
"""
from __future__ import annotations

import ctypes
import re
from pathlib import Path

import torch

from lseg import runtime

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


class MemoryProbe:
    """Peak memory of a code region above its start, in MiB.

    CPU: ``start()`` resets the RSS high-water mark; ``peak_mb()`` reads it. ``cpu_exact`` tells
    whether glibc was switched to returning freed blocks (without it, RSS keeps memory that torch
    already freed and the figure is an over-estimate).
    """

    def __init__(self, device: torch.device, exact_cpu: bool = True) -> None:
        self.device = device
        self.cpu_exact = False
        self._base = 0.0
        if device.type == "cpu" and exact_cpu:  # process-wide and irreversible: opt-out for in-process callers
            self.cpu_exact = _return_freed_memory_to_os() and _can_reset_hwm()

    def current_mb(self) -> float:
        """Memory in use now: CUDA allocated, or the process's RSS."""
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device) / 2**20
        return _proc_status_kib("VmRSS") / 1024

    def start(self) -> None:
        """Open a new window: peaks from here on, relative to what is in use now."""
        runtime.synchronize(self.device)
        runtime.reset_peak_memory(self.device)
        if self.device.type == "cpu" and self.cpu_exact:
            Path("/proc/self/clear_refs").write_text("5")
        self._base = self.current_mb()

    def held_mb(self) -> float:
        """Memory in use now minus the memory in use at ``start()``."""
        return self.current_mb() - self._base

    def peak_mb(self) -> float:
        """Peak since ``start()`` minus the memory in use at ``start()``."""
        return self.absolute_peak_mb() - self._base

    def absolute_peak_mb(self) -> float:
        """Peak since ``start()``, including what was in use before it."""
        if self.device.type == "cuda":
            runtime.synchronize(self.device)
            return runtime.peak_memory_mb(self.device)
        return _proc_status_kib("VmHWM") / 1024


def _proc_status_kib(key: str) -> float:
    text = Path("/proc/self/status").read_text()
    m = re.search(rf"^{key}:\s+(\d+)", text, re.M)
    if m is None:
        raise RuntimeError(f"/proc/self/status has no {key}")
    return float(m.group(1))


def _return_freed_memory_to_os(threshold: int = 1 << 16) -> bool:
    """Serve blocks >= 64 KiB by mmap (returned at free) and trim the heap eagerly (glibc only)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False


def _can_reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        _proc_status_kib("VmHWM")
        return True
    except (OSError, RuntimeError):
        return False
