"""Measuring the training step: variants, timers, memory probes, FLOP counting and MFU.

Used by ``tools/benchmark.py``; kept in the package so tests can call the pieces directly. Design
choices that make the numbers truthful rather than flattering:

* Variants run in one process, interleaved (A B A B ...), so drift from other jobs on a shared
  machine hits every variant alike; medians over steps, warm-up steps excluded.
* Model FLOPs are counted once with :class:`torch.utils.flop_counter.FlopCounterMode` on fake
  tensors (shapes only, no compute), with activation checkpointing *off*: MFU counts the model's
  work, not the recomputation (the PaLM / torchtitan convention). SDPA runs in its math form there
  so the counter sees the attention matmuls; the fused CPU attention kernel has no FLOP formula
  and would silently count as zero.
* Peak memory of a step is measured *relative to the step's start*, after gradients already
  exist, so it is activation memory (plus autograd temporaries and recomputation), not weights,
  gradients or optimizer state. On CUDA: the caching allocator's peak. On CPU: the kernel's RSS
  high-water mark (``VmHWM``), reset at each step through ``/proc/self/clear_refs`` with glibc told
  to return every large block to the OS at ``free`` (fixed mmap threshold), so RSS follows what is
  really allocated instead of ratcheting up.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import itertools
import json
import math
import os
import platform
import re
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from lseg.config import Config, ConfigError
from lseg.engine.trainer import segmentation_loss

_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}

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
                         dtype: torch.dtype | None = None) -> dict[str, float]:
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
                with torch.autocast(images.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                    logits = functional_call(image, state, (images, text))
                region[0] = "loss"
                segmentation_loss(logits, labels)
    finally:
        for h in handles:
            h.remove()
    totals["total"] = sum(totals.values())
    return totals


# ------------------------------------------------------------------------------------ variants


@dataclasses.dataclass(frozen=True)
class Variant:
    """One point of the grid: the four switches that change step speed or memory."""

    precision: str = "fp32"
    ckpt: bool = False
    compile: bool = False
    channels_last: bool = False

    @property
    def name(self) -> str:
        flags = [f for f, on in (("ckpt", self.ckpt), ("compile", self.compile),
                                 ("cl", self.channels_last)) if on]
        return "+".join([self.precision, *flags])


_ON_OFF = {"on": True, "off": False, "true": True, "false": False, "1": True, "0": False}
_VARIANT_KEYS = {"precision": "precision", "ckpt": "ckpt", "compile": "compile",
                 "channels_last": "channels_last", "cl": "channels_last"}


def base_variant(cfg: Config) -> Variant:
    """The variant the config itself describes."""
    return Variant(cfg.train.precision, cfg.model.grad_checkpointing, cfg.train.compile, cfg.train.channels_last)


def parse_variants(specs: list[str] | None, base: Variant) -> list[Variant]:
    """``["precision=bf16,ckpt=on", "ckpt=off"]`` -> Variants; each spec changes only what it names.

    A spec may hold several combos separated by ``;``. A value may be ``a|b`` to expand a grid:
    ``precision=fp32|bf16,ckpt=on|off`` gives four variants. No specs: just ``base``.
    """
    combos = [c.strip() for s in (specs or []) for c in s.split(";") if c.strip()]
    if not combos:
        return [base]
    out: list[Variant] = []
    for combo in combos:
        choices: list[list[tuple[str, Any]]] = []
        for item in combo.split(","):
            key, sep, raw = item.strip().partition("=")
            if not sep or key not in _VARIANT_KEYS:
                raise ConfigError(f"variant item '{item}': expected one of {sorted(_VARIANT_KEYS)}=value")
            field = _VARIANT_KEYS[key]
            values = []
            for v in raw.split("|"):
                if field == "precision":
                    if v not in _AUTOCAST:
                        raise ConfigError(f"variant precision '{v}': expected one of {list(_AUTOCAST)}")
                    values.append((field, v))
                elif v.lower() in _ON_OFF:
                    values.append((field, _ON_OFF[v.lower()]))
                else:
                    raise ConfigError(f"variant {key}='{v}': expected on or off")
            choices.append(values)
        for picked in itertools.product(*choices):
            v = dataclasses.replace(base, **dict(picked))
            if v not in out:
                out.append(v)
    return out


# ------------------------------------------------------------------------------------ memory


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


class MemoryProbe:
    """Peak memory of a code region above its start, in MiB, on CUDA or (Linux) CPU.

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
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device) / 2**20
        return _proc_status_kib("VmRSS") / 1024

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.cpu_exact:
            Path("/proc/self/clear_refs").write_text("5")
        self._base = self.current_mb()

    def held_mb(self) -> float:
        """Memory in use now minus the memory in use at ``start()``."""
        return self.current_mb() - self._base

    def peak_mb(self) -> float:
        """Peak since ``start()`` minus the memory in use at ``start()``."""
        return self.absolute_peak_mb() - self._base

    def absolute_peak_mb(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**20
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


# ------------------------------------------------------------------------------------ the step


def synthetic_batch(batch_size: int, size: int, num_classes: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch in the loader's contract (image, label with some ignore pixels, index, num_bad)."""
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, num_classes, (batch_size, size, size), generator=g)
    label[:, : size // 8] = 255
    return {"image": torch.rand(batch_size, 3, size, size, generator=g) * 2 - 1, "label": label,
            "index": torch.arange(batch_size), "num_bad": torch.zeros(batch_size, dtype=torch.long)}


def repeat_batch(batch: dict[str, torch.Tensor]) -> Iterator[dict[str, torch.Tensor]]:
    """Endless iterator over one pre-loaded batch (no data cost, same data for every contender)."""
    while True:
        yield batch


def sync(device: torch.device) -> None:
    """Wait for queued GPU work so that wall-clock timers measure it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepBench:
    """The trainer's step (autocast, per-image CE loss, GradScaler, clipping, optimizer) with timers.

    One model and optimizer serve every variant; a variant only flips switches before its step
    (checkpointing, autocast dtype, memory format, compiled or eager module), so ABAB interleaving
    costs no rebuilds. Gradients are kept between steps (``zero_grad(set_to_none=False)``) so they
    exist at the step's start and the memory probe sees activations, not gradient allocation.
    """

    def __init__(self, image: torch.nn.Module, optimizer: torch.optim.Optimizer, text_features: torch.Tensor,
                 batches: Iterator[dict[str, torch.Tensor]], device: torch.device,
                 clip_grad_norm: float | None = None, exact_cpu_memory: bool = True) -> None:
        self.image, self.optimizer, self.text = image, optimizer, text_features
        self.batches, self.device, self.clip = batches, device, clip_grad_norm
        self.params = [p for p in image.parameters() if p.requires_grad]
        self.probe = MemoryProbe(device, exact_cpu_memory)
        self._compiled: torch.nn.Module | None = None
        self._scalers: dict[str, torch.amp.GradScaler] = {}
        self._format = torch.contiguous_format

    def _module(self, v: Variant) -> torch.nn.Module:
        if not v.compile:
            return self.image
        if self._compiled is None:
            self._compiled = torch.compile(self.image)
        return self._compiled

    def _set_format(self, v: Variant) -> None:
        fmt = torch.channels_last if v.channels_last else torch.contiguous_format
        if fmt != self._format:
            self.image.to(memory_format=fmt)
            self._format = fmt

    def step(self, v: Variant) -> dict[str, float]:
        """One timed step of variant ``v``: seconds per phase and peak memory above the step start."""
        self.image.set_grad_checkpointing(v.ckpt)
        self._set_format(v)
        model = self._module(v)
        scaler = self._scalers.setdefault(
            v.precision, torch.amp.GradScaler(self.device.type, enabled=v.precision == "fp16"))
        dtype = _AUTOCAST[v.precision]
        self.optimizer.zero_grad(set_to_none=False)
        sync(self.device)
        self.probe.start()
        t0 = time.perf_counter()
        batch = next(self.batches)
        images = batch["image"].to(self.device, non_blocking=True)
        labels = batch["label"].to(self.device, non_blocking=True)
        if v.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        sync(self.device)
        t1 = time.perf_counter()
        with torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(images, self.text)
        loss = segmentation_loss(logits, labels)
        sync(self.device)
        t2 = time.perf_counter()
        fwd_mb = self.probe.held_mb()  # held for backward at the end of forward
        scaler.scale(loss).backward()
        del logits
        sync(self.device)
        t3 = time.perf_counter()
        act_peak = self.probe.peak_mb()
        scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip or math.inf)
        if torch.isfinite(grad_norm):
            scaler.step(self.optimizer)
        scaler.update()
        sync(self.device)
        t4 = time.perf_counter()
        return {"data_s": t1 - t0, "forward_s": t2 - t1, "backward_s": t3 - t2, "optimizer_s": t4 - t3,
                "step_s": t4 - t0, "fwd_held_mb": fwd_mb, "act_peak_mb": act_peak,
                "step_peak_mb": self.probe.peak_mb(), "abs_peak_mb": self.probe.absolute_peak_mb(),
                "loss": float(loss.detach())}


def interleaved(contenders: dict[str, Callable[[], dict[str, float]]], warmup: int,
                repeats: int) -> dict[str, list[dict[str, float]]]:
    """Run each contender ``warmup`` times, then ``repeats`` rounds of A B C ...; return the timed results."""
    for _ in range(warmup):
        for fn in contenders.values():
            fn()
    results: dict[str, list[dict[str, float]]] = {k: [] for k in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            results[name].append(fn())
    return results


def medians(rows: list[dict[str, float]]) -> dict[str, float]:
    """Per-key median over steps (keys of the first row)."""
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


# ------------------------------------------------------------------------------------ reporting


def machine_info() -> dict[str, Any]:
    """What a reader needs to judge a CPU figure: CPU model, cores, load, versions."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        if m:
            cpu = m.group(1).strip()
    info: dict[str, Any] = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                            "loadavg": list(os.getloadavg()), "torch": torch.__version__,
                            "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """Plain aligned text table; floats with 3 significant decimals, None as n/a."""
    def cell(x: Any) -> str:
        if x is None:
            return "n/a"
        if isinstance(x, float):
            return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"
        return str(x)

    body = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) if body else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(x.rjust(w) for x, w in zip(b, widths)) for b in body]
    return "\n".join(lines)


def append_json(path: str | Path, record: dict[str, Any] | None) -> None:
    """Append one record as a JSON line (a history of runs, one file); ``None`` only checks that it can."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        if record is not None:
            f.write(json.dumps(record, sort_keys=True) + "\n")
