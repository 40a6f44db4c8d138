"""The measurements behind ``tools/benchmark.py``: ``train-step``, ``overhead`` and ``data``.

Each takes the parsed command line, prints a table headed by the machine and, with ``--json-out``,
appends one JSON record (settings, machine, medians and every timed step). Weights are always
random (``model.pretrained=false``): speed and memory do not depend on them. A new measurement is
built from the same pieces: :func:`load` (config), :func:`lseg.bench.step.measure_variants` (time
``Trainer.run_step``), :func:`variant_rows` (table rows and records), :func:`record` and
:func:`lseg.bench.report.emit`.
"""
from __future__ import annotations

import argparse
import datetime
import math
import statistics
import sys
import tempfile
import time
from typing import Any

import torch

from lseg import data as lseg_data
from lseg import runtime
from lseg.bench.flops import mfu, peak_tflops
from lseg.bench.report import append_json, emit, format_table, machine_info
from lseg.bench.step import (Measurement, bare_step, build_trainer, interleaved, measure_variants, medians,
                             repeat_batch, synthetic_batch)
from lseg.bench.variants import base_variant, parse_variants
from lseg.config import Config, load_config

DEFAULT_CONFIG = "configs/lseg_vitl16_480_mseg.yaml"

TRAIN_STEP_COLUMNS = ["variant", "img/s", "step_ms", "data_ms", "fwd_ms", "bwd_ms", "opt_ms", "data_%",
                      "act_peak_MB", "fwd_held_MB", "peak_MB", "time_x", "act_mem_x", "TFLOP/s", "MFU_%"]


def load(args: argparse.Namespace, *extra: str) -> Config:
    """``--config`` + overrides + ``extra``; random init always; ``--device``/``--batch-size`` when given."""
    overrides = [*args.overrides, *extra, "model.pretrained=false"]
    if getattr(args, "device", None):
        overrides.append(f"train.device={args.device}")
    if getattr(args, "batch_size", None):
        overrides.append(f"train.batch_size={args.batch_size}")
    return load_config(args.config, overrides)


def record(command: str, args: argparse.Namespace, cfg: Config | None, **fields: Any) -> dict[str, Any]:
    """The JSON record's common part: command, time, argv, machine and (with a config) its main settings."""
    rec: dict[str, Any] = {"command": command, "time": datetime.datetime.now().isoformat(timespec="seconds"),
                           "argv": sys.argv[1:], "machine": machine_info()}
    if cfg is not None:
        rec.update(config=args.config, overrides=list(args.overrides), batch_size=cfg.train.batch_size,
                   crop_size=cfg.data.crop_size, backbone=cfg.model.backbone)
    rec.update(fields)
    return rec


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else 1e3 * seconds


def variant_rows(m: Measurement, peak_override: float | None = None) -> tuple[list[dict], list[dict]]:
    """Table rows (:data:`TRAIN_STEP_COLUMNS`) and JSON records, one per variant; the first is the 1x base."""
    rows, records = [], []
    for v in m.variants:
        med = medians(m.steps[v.name])
        step_s, peak = med["step_s"], peak_tflops(m.device, v.precision, peak_override)
        util = mfu(m.flops_per_step, step_s, peak)
        row = {"variant": v.name, "img/s": m.images_per_step / step_s, "step_ms": 1e3 * step_s,
               "data_ms": _ms(med.get("data_s")), "fwd_ms": _ms(med.get("forward_s")),
               "bwd_ms": _ms(med.get("backward_s")), "opt_ms": _ms(med.get("optimizer_s")),
               "data_%": None if "data_s" not in med else 100 * med["data_s"] / step_s,
               "act_peak_MB": med.get("act_peak_mb"), "fwd_held_MB": med.get("fwd_held_mb"),
               "peak_MB": med["abs_peak_mb"], "TFLOP/s": m.flops_per_step / step_s / 1e12,
               "MFU_%": None if util is None else 100 * util}
        rows.append(row)
        records.append({"name": v.name, **vars(v), "median": med, "steps": m.steps[v.name], "peak_tflops": peak,
                        "mfu": util, "images_per_s": row["img/s"]})
    base_ms, base_mem = rows[0]["step_ms"], rows[0]["act_peak_MB"]
    for r in rows:
        r["time_x"] = r["step_ms"] / base_ms
        r["act_mem_x"] = base_mem / r["act_peak_MB"] if base_mem is not None and r["act_peak_MB"] else None
    return rows, records


def train_step(args: argparse.Namespace) -> dict[str, Any]:
    """Images/s, phase times, peak memory and MFU of ``Trainer.run_step`` for each variant."""
    with tempfile.TemporaryDirectory(prefix="lseg-bench-") as tmp:
        cfg = load(args, f"train.output_dir={tmp}")
        variants = parse_variants(args.variants, base_variant(cfg))
        m = measure_variants(cfg, variants, warmup=args.warmup, steps=args.steps, data=args.data,
                             num_workers=args.num_workers, split=not args.no_phase_split,
                             exact_cpu_memory=not args.no_exact_cpu_memory, time_limit_s=args.time_limit)
    rows, out = variant_rows(m, args.peak_tflops)
    timed = len(m.steps[variants[0].name])
    note = (f"model FLOPs/step {m.flops_per_step / 1e12:.3f} TFLOP (fwd+bwd, {m.images_per_step} images, counted on "
            f"fake tensors, no recompute); memory: {'CUDA allocator' if m.device.type == 'cuda' else 'RSS high-water mark'}"
            + ("" if m.device.type == "cuda" or m.cpu_memory_exact else " (NOT exact: glibc/proc reset unavailable)")
            + f", act_peak_MB includes the {m.grad_mb:.0f} MB of gradients backward creates"
            + f"; Trainer.run_step, {args.warmup} warm-up + {timed} timed steps per variant, interleaved, medians"
            + ("" if timed == args.steps else f" (--time-limit {args.time_limit:g} s reached)"))
    rec = record("train-step", args, cfg, device=str(m.device), data=args.data, flops_per_step=m.flops_per_step,
                 num_classes=m.num_classes, warmup=args.warmup, steps=args.steps, timed_steps=timed,
                 grad_mb=m.grad_mb, phase_split=not args.no_phase_split, cpu_memory_exact=m.cpu_memory_exact,
                 variants=out)
    return emit(rec, format_table(rows, TRAIN_STEP_COLUMNS) + "\n" + note, args.json_out)


def overhead(args: argparse.Namespace) -> dict[str, Any]:
    """``Trainer.run_step`` + its logging hook against :func:`lseg.bench.step.bare_step`, alternated."""
    with tempfile.TemporaryDirectory(prefix="lseg-bench-") as tmp:
        cfg = load(args, f"train.output_dir={tmp}", "train.resume=false")
        trainer = build_trainer(cfg, None)
        trainer.setup_run_dir()  # the real writers (console, metrics.jsonl, TensorBoard) as in train()
        device = trainer.device
        batch = synthetic_batch(cfg.train.batch_size, cfg.data.crop_size, len(trainer.class_names))
        trainer.batch_source = repeat_batch(batch)  # the same pre-loaded batch for both loops
        bare_scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.precision == "fp16")

        def timed(fn) -> dict[str, float]:
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            runtime.synchronize(device)
            return {"step_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}

        try:
            results = interleaved({"trainer": lambda: timed(lambda: trainer.log_step(trainer.run_step())),
                                   "bare": lambda: timed(lambda: bare_step(trainer, batch, bare_scaler))},
                                  args.warmup, args.steps)
        finally:
            if trainer.tb is not None:
                trainer.tb.close()
    t_full, t_bare = ([r["step_s"] for r in results[k]] for k in ("trainer", "bare"))
    c_full, c_bare = ([r["cpu_s"] for r in results[k]] for k in ("trainer", "bare"))
    med = statistics.median
    ratio, cpu_ratio = med(t_full) / med(t_bare), med(c_full) / med(c_bare)
    pair_ratio = med(f / b for f, b in zip(t_full, t_bare))
    B = cfg.train.batch_size * cfg.train.accum_steps
    rows = [{"loop": name, "step_ms": 1e3 * med(t), "cpu_ms": 1e3 * med(c), "img/s": B / med(t),
             "min_step_ms": 1e3 * min(t)} for name, t, c in (("trainer", t_full, c_full), ("bare", t_bare, c_bare))]
    note = (f"overhead: {100 * (ratio - 1):+.2f} % wall (ratio of medians), {100 * (pair_ratio - 1):+.2f} % "
            f"(median of per-round ratios), {100 * (cpu_ratio - 1):+.2f} % process CPU time; "
            f"{args.warmup} warm-up + {args.steps} rounds trainer/bare, interleaved")
    rec = record("overhead", args, cfg, device=str(device), warmup=args.warmup, steps=args.steps,
                 trainer_s=t_full, bare_s=t_bare, trainer_cpu_s=c_full, bare_cpu_s=c_bare, ratio=ratio,
                 pair_ratio=pair_ratio, cpu_ratio=cpu_ratio, overhead_pct=100 * (ratio - 1),
                 pair_overhead_pct=100 * (pair_ratio - 1), cpu_overhead_pct=100 * (cpu_ratio - 1))
    table = format_table(rows, ["loop", "step_ms", "cpu_ms", "min_step_ms", "img/s"])
    return emit(rec, table + "\n" + note, args.json_out)


def data(args: argparse.Namespace) -> dict[str, Any]:
    """``lseg.data.benchmark_loader`` per worker count, and the workers one GPU needs."""
    with tempfile.TemporaryDirectory(prefix="lseg-bench-data-") as tmp:
        cfg = load(args, f"data.root={args.data_root or tmp}")
        B = cfg.train.batch_size
        if args.data_root is None:
            from lseg.data.synthetic import make_synthetic_mseg

            per_dataset = math.ceil((args.warmup + args.batches) * B / len(cfg.data.train_datasets)) + B
            make_synthetic_mseg(tmp, per_dataset, 1, tuple(args.size), num_classes=0,
                                datasets=cfg.data.train_datasets, mseg_root=cfg.data.mseg_root)
        rows, runs = [], []
        for workers in args.workers:
            rep = [lseg_data.benchmark_loader(cfg, workers, args.batches, warmup_batches=args.warmup)
                   for _ in range(args.repeats)]
            runs.append(rep)
            rate = statistics.median(r["images_per_s"] for r in rep)
            cpu = [r["images_per_cpu_s"] for r in rep if r["images_per_cpu_s"]]
            rows.append({"workers": workers, "img/s": rate, "img/s/worker": rate / max(workers, 1),
                         "img/cpu_s": statistics.median(cpu) if cpu else None,
                         "runs": " / ".join(f"{r['images_per_s']:.1f}" for r in rep)})
    # Workers one GPU needs so that the loader out-runs the GPU by `headroom` (data wait ~0, < 2 %).
    per_worker = next((r["img/cpu_s"] for r in rows if r["img/cpu_s"]), None) or max(r["img/s/worker"] for r in rows)
    need = math.ceil(args.gpu_img_s * args.headroom / per_worker)
    note = (f"{args.batches} timed + {args.warmup} warm-up batches of {B}, crop {cfg.data.crop_size}, median of "
            f"{args.repeats}; at {args.gpu_img_s:g} img/s per GPU and {per_worker:.1f} img/s per worker, "
            f"{need} workers per GPU give x{args.headroom:g} headroom")
    rec = record("data", args, cfg, size=list(args.size), workers_needed=need, gpu_img_s=args.gpu_img_s,
                 headroom=args.headroom, per_worker_img_s=per_worker, results=runs,
                 rows=[{k: v for k, v in r.items() if k != "runs"} for r in rows])
    table = format_table(rows, ["workers", "img/s", "img/s/worker", "img/cpu_s", "runs"])
    return emit(rec, table + "\n" + note, args.json_out)


def run(args: argparse.Namespace) -> int:
    """Run the sub-command ``args.func``; an unwritable ``--json-out`` fails first, not after minutes of timing."""
    if getattr(args, "json_out", None):
        append_json(args.json_out, None)
    args.func(args)
    return 0
