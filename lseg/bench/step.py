"""Timing the real training step: ``Trainer.run_step``, per phase, variants side by side.

What makes the numbers truthful rather than flattering:

* Nothing of the step is copied here. Each variant gets its own ``Trainer`` (same seed, so the same
  initial weights), fed through its ``batch_source`` seam, and the phase split comes from its
  ``phase_hook`` seam, so the benchmark cannot drift from what training runs.
* Variants run in one process, interleaved (A B A B ...), so drift from other jobs on a shared
  machine hits every variant alike; medians over steps, warm-up steps excluded.
* Memory is read relative to the first phase, i.e. after ``run_step`` freed the previous step's
  gradients: what is held then is weights and optimizer state. ``act_peak_mb`` (peak up to the
  optimizer phase) is therefore activations, autograd temporaries, recomputation *and* the
  gradients that backward creates, which is what a step adds on top of the model in training;
  ``fwd_held_mb`` (held when backward starts) is what autograd saved, gradients not yet created.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Iterator

import torch

from lseg import data as lseg_data
from lseg import runtime
from lseg.bench.flops import train_flops_per_step
from lseg.bench.memory import MemoryProbe
from lseg.bench.variants import Variant
from lseg.config import Config
from lseg.distributed import DistInfo
from lseg.engine.loss import upsampled_segmentation_loss
from lseg.engine.trainer import Trainer

#: The phases ``Trainer.run_step`` reports to its ``phase_hook``, in order ("end" closes the step).
PHASES = ("data", "forward", "backward", "optimizer")

Batch = dict[str, torch.Tensor]


def synthetic_batch(batch_size: int, size: int, num_classes: int, seed: int = 0) -> Batch:
    """A batch in the loader's contract (image, label with some ignore pixels, index, num_bad)."""
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, num_classes, (batch_size, size, size), generator=g)
    label[:, : size // 8] = 255
    return {"image": torch.rand(batch_size, 3, size, size, generator=g) * 2 - 1, "label": label,
            "index": torch.arange(batch_size), "num_bad": torch.zeros(batch_size, dtype=torch.long)}


def repeat_batch(batch: Batch) -> Iterator[Batch]:
    """Endless iterator over one pre-loaded batch (no data cost, same data for every contender)."""
    while True:
        yield batch


def loader_batches(cfg: Config, num_workers: int | None = None) -> Iterator[Batch]:
    """The real training loader, epoch after epoch (what the trainer sees on rank 0 of 1).

    One of these is shared by all variants, so they do not run one worker pool each.
    """
    epoch = 0
    while True:
        yield from lseg_data.build_train_loader(cfg, 0, 1, epoch=epoch, num_workers=num_workers)
        epoch += 1


def build_trainer(cfg: Config, batches: Iterator[Batch] | None) -> Trainer:
    """A single-process ``Trainer`` taking its batches from ``batches`` (None: its own loader)."""
    trainer = Trainer(cfg, DistInfo())
    trainer.batch_source = batches
    trainer.model.image.train()
    return trainer


def gradient_mb(trainer: Trainer) -> float:
    """MiB of the gradients one backward creates (every trainable parameter gets one)."""
    return sum(p.numel() * p.element_size() for p in trainer.params) / 2**20


class TimedStep:
    """Calling it runs ``trainer.run_step()`` once and returns seconds per phase and memory.

    With ``split`` the device is synchronised at every phase boundary, so queued GPU work counts in
    the phase that queued it; this costs the host's queueing ahead across boundaries. Without it
    only the whole step is timed (one synchronisation, at the end), as training runs it, and the
    record has no phase or ``fwd_held``/``act_peak`` entries.
    """

    def __init__(self, trainer: Trainer, probe: MemoryProbe, split: bool = True) -> None:
        self.trainer, self.probe, self.split = trainer, probe, split

    def __call__(self) -> dict[str, float]:
        device, probe = self.trainer.device, self.probe
        rec: dict[str, float] = {f"{p}_s": 0.0 for p in PHASES} if self.split else {}
        current: list = [None, 0.0]  # phase, its start time

        def hook(phase: str) -> None:
            if current[0] is None:
                probe.start()  # run_step has just freed the gradients: weights + optimizer state
            elif not self.split and phase != "end":
                return  # whole-step timing: no synchronisation inside the step
            else:
                runtime.synchronize(device)
                key = f"{current[0]}_s" if self.split else "step_s"
                rec[key] = rec.get(key, 0.0) + time.perf_counter() - current[1]
                if phase == "backward":  # with accumulation: the last micro-step, earlier gradients included
                    rec["fwd_held_mb"] = probe.held_mb()
                elif phase == "optimizer":
                    rec["act_peak_mb"] = probe.peak_mb()
                elif phase == "end":
                    rec["step_peak_mb"], rec["abs_peak_mb"] = probe.peak_mb(), probe.absolute_peak_mb()
            current[:] = [phase, time.perf_counter()]  # memory reads are not part of any phase

        self.trainer.phase_hook = hook
        try:
            out = self.trainer.run_step()
        finally:
            self.trainer.phase_hook = None
        if self.split:
            rec["step_s"] = sum(rec[f"{p}_s"] for p in PHASES)
        rec["loss"] = out["train/loss"]
        return rec


def interleaved(contenders: dict[str, Callable[[], dict[str, float]]], warmup: int, repeats: int,
                time_limit_s: float | None = None) -> dict[str, list[dict[str, float]]]:
    """Run each contender ``warmup`` times, then up to ``repeats`` rounds of A B C ...; the timed results.

    ``time_limit_s`` bounds the timed rounds (warm-up is not counted: compilation belongs there): no
    round starts once it is spent, and at least one always runs. A slow device or a busy machine then
    shortens the measurement instead of overrunning a budget; the record says how many steps ran.
    """
    for _ in range(warmup):
        for fn in contenders.values():
            fn()
    results: dict[str, list[dict[str, float]]] = {k: [] for k in contenders}
    start = time.perf_counter()
    for _ in range(repeats):
        for name, fn in contenders.items():
            results[name].append(fn())
        if time_limit_s is not None and time.perf_counter() - start >= time_limit_s:
            break
    return results


def medians(rows: list[dict[str, float]]) -> dict[str, float]:
    """Per-key median over steps (keys of the first row)."""
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


@dataclasses.dataclass
class Measurement:
    """What :func:`measure_variants` timed, and what its figures are relative to."""

    device: torch.device
    variants: list[Variant]
    steps: dict[str, list[dict[str, float]]]  # timed step records by variant name
    images_per_step: int  # batch size x accumulation steps
    flops_per_step: int  # model FLOPs of one optimizer step (all micro-steps), no recomputation
    num_classes: int
    grad_mb: float
    cpu_memory_exact: bool


def measure_variants(cfg: Config, variants: list[Variant], *, warmup: int, steps: int, data: str = "synthetic",
                     num_workers: int | None = None, split: bool = True, exact_cpu_memory: bool = True,
                     time_limit_s: float | None = None) -> Measurement:
    """Time ``Trainer.run_step`` for each variant of ``cfg``, interleaved, after ``warmup`` steps each.

    ``data``: ``synthetic`` (one pre-loaded batch: no data cost) or ``loader`` (the real training
    loader, shared by all variants). ``cfg.train.output_dir`` is not written to.
    """
    device = runtime.pick_device(cfg.train.device)
    probe = MemoryProbe(device, exact_cpu_memory)  # before the models: glibc's switch then covers them
    num_classes = len(lseg_data.class_names(cfg))
    batch_size, size = cfg.train.batch_size, cfg.data.crop_size
    batches = (repeat_batch(synthetic_batch(batch_size, size, num_classes)) if data == "synthetic"
               else loader_batches(cfg, num_workers))
    trainers = {v.name: build_trainer(v.apply(cfg), batches) for v in variants}
    first = next(iter(trainers.values()))
    flops = train_flops_per_step(first.model.image, batch_size, size, num_classes) * cfg.train.accum_steps
    timed = {name: TimedStep(t, probe, split) for name, t in trainers.items()}
    results = interleaved(timed, warmup, steps, time_limit_s)
    return Measurement(device, list(variants), results, batch_size * cfg.train.accum_steps, flops, num_classes,
                       gradient_mb(first), probe.cpu_exact)


def bare_step(trainer: Trainer, batch: Batch, scaler: torch.amp.GradScaler) -> None:
    """Forward, loss, backward and optimizer step on ``trainer``'s model and nothing else.

    This is a reference, not the training step, on purpose: the ``overhead`` measurement compares
    ``Trainer.run_step`` (gradient norm, non-finite check, statistics, scheduler, counters) plus its
    logging hook against it, and the difference is the overhead being measured. The forward and the
    loss are the trainer's (half-resolution logit map, chunked upsampled loss), so the two loops do
    the same model work.
    """
    trainer.optimizer.zero_grad(set_to_none=True)
    images = batch["image"].to(trainer.device, non_blocking=True)
    labels = batch["label"].to(trainer.device, non_blocking=True)
    if trainer.cfg.train.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with runtime.autocast(trainer.device, trainer.cfg.train.precision):
        logit_map = trainer.forward(images, trainer.text_features, upsample=False)
    scaler.scale(upsampled_segmentation_loss(logit_map, labels, trainer.cfg.train.loss_chunks)).backward()
    scaler.step(trainer.optimizer)
    scaler.update()
    runtime.synchronize(trainer.device)
