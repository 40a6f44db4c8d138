#!/usr/bin/env python
"""Benchmarks of the training step, the trainer's overhead and the data loader.

    python tools/benchmark.py train-step --config configs/smoke.yaml --device cpu \
        --variants "ckpt=off;ckpt=on" [--data synthetic|loader] [--batch-size N] [key=value ...]
    python tools/benchmark.py overhead --config configs/smoke.yaml --device cpu
    python tools/benchmark.py data --workers 0 1 2 --batches 20

Every sub-command prints a table; ``--json-out FILE`` appends one JSON line per run (settings,
machine, medians and the raw per-step numbers). Method and measured figures: docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import datetime
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from lseg import bench  # noqa: E402
from lseg import data as lseg_data  # noqa: E402
from lseg.cli import cli_main  # noqa: E402
from lseg.config import Config, load_config  # noqa: E402

DEFAULT_CONFIG = "configs/lseg_vitl16_480_mseg.yaml"


def _load(args: argparse.Namespace) -> Config:
    """Config + overrides; random init always (speed and memory do not depend on the weights)."""
    overrides = list(args.overrides) + ["model.pretrained=false"]
    if getattr(args, "device", None):
        overrides.append(f"train.device={args.device}")
    if getattr(args, "batch_size", None):
        overrides.append(f"train.batch_size={args.batch_size}")
    return load_config(args.config, overrides)


def _device(cfg: Config) -> torch.device:
    want = cfg.train.device
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", 0)
    return torch.device("cpu")


def _record(command: str, args: argparse.Namespace, cfg: Config | None, **fields: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {"command": command, "time": datetime.datetime.now().isoformat(timespec="seconds"),
                           "argv": sys.argv[1:], "machine": bench.machine_info()}
    if cfg is not None:
        rec.update(config=args.config, overrides=list(args.overrides), batch_size=cfg.train.batch_size,
                   crop_size=cfg.data.crop_size, backbone=cfg.model.backbone)
    rec.update(fields)
    return rec


def _finish(args: argparse.Namespace, table: str, record: dict[str, Any]) -> dict[str, Any]:
    m = record["machine"]
    print(f"# {record['command']}: {m['cpu']}, {m['cpu_count']} cores, torch threads {m['torch_threads']}, "
          f"load average {' '.join(f'{x:.2f}' for x in m['loadavg'])}" + (f", {m['gpu']}" if "gpu" in m else ""))
    print(table)
    if args.json_out:
        bench.append_json(args.json_out, record)
    return record


def _loader_batches(cfg: Config, num_workers: int | None) -> Iterator[dict[str, torch.Tensor]]:
    """The real training loader, epoch after epoch (what the trainer would see on rank 0 of 1)."""
    epoch = 0
    while True:
        yield from lseg_data.build_train_loader(cfg, 0, 1, epoch=epoch, num_workers=num_workers)
        epoch += 1


# ------------------------------------------------------------------------------------ train-step


def cmd_train_step(args: argparse.Namespace) -> dict[str, Any]:
    cfg = _load(args)
    device = _device(cfg)
    torch.manual_seed(cfg.train.seed)
    from lseg.engine.optim import build_optimizer
    from lseg.models.lseg import LSegImage
    from lseg.models.text import text_tower_config

    num_classes = len(lseg_data.class_names(cfg))
    embed_dim = text_tower_config(cfg.model.text)[0]
    # Only the trainable image side: the frozen text tower runs once per label set, outside the step,
    # so random label embeddings of the right shape stand in for it.
    image = LSegImage(cfg.model, embed_dim).to(device).train()
    text = torch.nn.functional.normalize(torch.randn(num_classes, embed_dim), dim=-1).to(device)
    optimizer = build_optimizer(image.param_groups(), cfg.optim)
    B = cfg.train.batch_size
    if args.data == "synthetic":
        batches = bench.repeat_batch(bench.synthetic_batch(B, cfg.data.crop_size, num_classes))
    else:
        batches = _loader_batches(cfg, args.num_workers)
    runner = bench.StepBench(image, optimizer, text, batches, device, cfg.optim.clip_grad_norm,
                             exact_cpu_memory=not args.no_exact_cpu_memory)
    variants = bench.parse_variants(args.variants, bench.base_variant(cfg))
    flops = bench.train_flops_per_step(image, B, cfg.data.crop_size, num_classes)
    results = bench.interleaved({v.name: (lambda v=v: runner.step(v)) for v in variants}, args.warmup, args.steps)

    rows, out = [], []
    for v in variants:
        med = bench.medians(results[v.name])
        peak = bench.peak_tflops(device, v.precision, args.peak_tflops)
        row = {"variant": v.name, "img/s": B / med["step_s"], "step_ms": 1e3 * med["step_s"],
               "data_ms": 1e3 * med["data_s"], "fwd_ms": 1e3 * med["forward_s"], "bwd_ms": 1e3 * med["backward_s"],
               "opt_ms": 1e3 * med["optimizer_s"], "data_%": 100 * med["data_s"] / med["step_s"],
               "act_peak_MB": med["act_peak_mb"], "fwd_held_MB": med["fwd_held_mb"],
               "peak_MB": med["abs_peak_mb"], "TFLOP/s": flops / med["step_s"] / 1e12,
               "MFU_%": None if peak is None else 100 * bench.mfu(flops, med["step_s"], peak)}
        rows.append(row)
        out.append({"name": v.name, **vars(v), "median": med, "steps": results[v.name], "peak_tflops": peak,
                    "mfu": bench.mfu(flops, med["step_s"], peak), "images_per_s": row["img/s"]})
    base_ms = rows[0]["step_ms"]
    base_mem = rows[0]["act_peak_MB"]
    for r in rows:
        r["time_x"] = r["step_ms"] / base_ms
        r["act_mem_x"] = base_mem / r["act_peak_MB"] if r["act_peak_MB"] > 0 else None
    cols = ["variant", "img/s", "step_ms", "data_ms", "fwd_ms", "bwd_ms", "opt_ms", "data_%", "act_peak_MB",
            "fwd_held_MB", "peak_MB", "time_x", "act_mem_x", "TFLOP/s", "MFU_%"]
    note = (f"model FLOPs/step {flops / 1e12:.3f} TFLOP (fwd+bwd, batch {B}, counted on fake tensors, no recompute); "
            f"memory: {'CUDA allocator' if device.type == 'cuda' else 'RSS high-water mark'}"
            + ("" if device.type == "cuda" or runner.probe.cpu_exact else " (NOT exact: glibc/proc reset unavailable)")
            + f"; {args.warmup} warm-up + {args.steps} timed steps per variant, interleaved, medians")
    rec = _record("train-step", args, cfg, device=str(device), data=args.data, flops_per_step=flops,
                  num_classes=num_classes, warmup=args.warmup, steps=args.steps, cpu_memory_exact=runner.probe.cpu_exact,
                  variants=out)
    return _finish(args, bench.format_table(rows, cols) + "\n" + note, rec)


# ------------------------------------------------------------------------------------ overhead


def cmd_overhead(args: argparse.Namespace) -> dict[str, Any]:
    from lseg.distributed import DistInfo
    from lseg.engine.trainer import Trainer, segmentation_loss

    with tempfile.TemporaryDirectory(prefix="lseg-bench-") as tmp:
        args.overrides = list(args.overrides) + [f"train.output_dir={tmp}", "train.resume=false"]
        cfg = _load(args)
        trainer = Trainer(cfg, DistInfo())
        trainer._setup_run_dir()  # the real writers (console, metrics.jsonl, TensorBoard) as in train()
        device = trainer.device
        trainer.model.image.train()
        B = cfg.train.batch_size
        batch = bench.synthetic_batch(B, cfg.data.crop_size, len(trainer.class_names))
        trainer.batch_source = bench.repeat_batch(batch)  # same pre-loaded batch for both loops
        dtype = trainer.autocast_dtype
        bare_scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.precision == "fp16")

        def full() -> dict[str, float]:
            t0, c0 = time.perf_counter(), time.process_time()
            trainer._log_step(trainer.run_step())  # what Trainer.train() does per step
            bench.sync(device)
            return {"step_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}

        def bare() -> dict[str, float]:
            t0, c0 = time.perf_counter(), time.process_time()
            trainer.optimizer.zero_grad(set_to_none=True)
            images = batch["image"].to(device, non_blocking=True)
            labels = batch["label"].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                logits = trainer.forward(images, trainer.text_features)
            bare_scaler.scale(segmentation_loss(logits, labels)).backward()
            bare_scaler.step(trainer.optimizer)
            bare_scaler.update()
            bench.sync(device)
            return {"step_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}

        results = bench.interleaved({"trainer": full, "bare": bare}, args.warmup, args.steps)
        if trainer.tb is not None:
            trainer.tb.close()
    t_full = [r["step_s"] for r in results["trainer"]]
    t_bare = [r["step_s"] for r in results["bare"]]
    c_full = [r["cpu_s"] for r in results["trainer"]]
    c_bare = [r["cpu_s"] for r in results["bare"]]
    med = statistics.median
    ratio = med(t_full) / med(t_bare)
    pair_ratio = med(f / b for f, b in zip(t_full, t_bare))
    cpu_ratio = med(c_full) / med(c_bare)
    rows = [{"loop": name, "step_ms": 1e3 * med(t), "cpu_ms": 1e3 * med(c), "img/s": B / med(t),
             "min_step_ms": 1e3 * min(t)} for name, t, c in (("trainer", t_full, c_full), ("bare", t_bare, c_bare))]
    note = (f"overhead: {100 * (ratio - 1):+.2f} % wall (ratio of medians), {100 * (pair_ratio - 1):+.2f} % "
            f"(median of per-round ratios), {100 * (cpu_ratio - 1):+.2f} % process CPU time; "
            f"{args.warmup} warm-up + {args.steps} rounds trainer/bare, interleaved")
    rec = _record("overhead", args, cfg, device=str(device), warmup=args.warmup, steps=args.steps,
                  trainer_s=t_full, bare_s=t_bare, trainer_cpu_s=c_full, bare_cpu_s=c_bare, ratio=ratio,
                  pair_ratio=pair_ratio, cpu_ratio=cpu_ratio, overhead_pct=100 * (ratio - 1),
                  pair_overhead_pct=100 * (pair_ratio - 1), cpu_overhead_pct=100 * (cpu_ratio - 1))
    return _finish(args, bench.format_table(rows, ["loop", "step_ms", "cpu_ms", "min_step_ms", "img/s"]) + "\n" + note,
                   rec)


# ------------------------------------------------------------------------------------ data


def cmd_data(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="lseg-bench-data-") as tmp:
        if args.data_root is None:
            args.overrides = list(args.overrides) + [f"data.root={tmp}"]
        cfg = _load(args)
        B = cfg.train.batch_size
        if args.data_root is None:
            from lseg.data.synthetic import make_synthetic_mseg

            per_dataset = math.ceil((args.warmup + args.batches) * B / len(cfg.data.train_datasets)) + B
            make_synthetic_mseg(tmp, per_dataset, 1, tuple(args.size), num_classes=0,
                                datasets=cfg.data.train_datasets, mseg_root=cfg.data.mseg_root)
        else:
            cfg.data.root = args.data_root
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
    rec = _record("data", args, cfg, size=list(args.size), workers_needed=need, gpu_img_s=args.gpu_img_s,
                  headroom=args.headroom, per_worker_img_s=per_worker, results=runs,
                  rows=[{k: v for k, v in r.items() if k != "runs"} for r in rows])
    return _finish(args, bench.format_table(rows, ["workers", "img/s", "img/s/worker", "img/cpu_s", "runs"])
                   + "\n" + note, rec)


# ------------------------------------------------------------------------------------ CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser, steps: int | None, warmup: int) -> None:
        sp.add_argument("--config", default=DEFAULT_CONFIG, help=f"YAML config (default {DEFAULT_CONFIG})")
        sp.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
        sp.add_argument("--batch-size", type=int, default=None, help="per-GPU batch (default: train.batch_size)")
        if steps is not None:
            sp.add_argument("--steps", type=int, default=steps, help="timed steps (rounds) per contender")
        sp.add_argument("--warmup", type=int, default=warmup, help="untimed steps (batches) per contender first")
        sp.add_argument("--json-out", default=None, help="append one JSON line with the results to this file")

    ts = sub.add_parser("train-step", help="images/s, phase times, peak memory and MFU of the training step")
    common(ts, steps=5, warmup=2)
    ts.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: train.device")
    ts.add_argument("--variants", action="append", default=None,
                    help="combos like 'precision=bf16,ckpt=on;ckpt=off'; keys precision, ckpt, compile, "
                         "channels_last (cl); a|b expands a grid; repeatable. Default: the config as is")
    ts.add_argument("--data", choices=["synthetic", "loader"], default="synthetic",
                    help="one pre-loaded synthetic batch, or the real training loader")
    ts.add_argument("--num-workers", type=int, default=None, help="loader workers (default data.num_workers)")
    ts.add_argument("--peak-tflops", type=float, default=None,
                    help="device peak for MFU (default: table of known GPUs; none on CPU)")
    ts.add_argument("--no-exact-cpu-memory", action="store_true",
                    help="leave glibc's allocator alone: faster CPU steps, but the CPU memory columns then "
                         "over-estimate (freed memory stays in RSS)")
    ts.set_defaults(func=cmd_train_step)

    ov = sub.add_parser("overhead", help="Trainer.run_step vs a bare forward/backward/optimizer loop")
    common(ov, steps=10, warmup=2)
    ov.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: train.device")
    ov.set_defaults(func=cmd_overhead)

    da = sub.add_parser("data", help="training-loader throughput (lseg.data.benchmark_loader)")
    common(da, steps=None, warmup=2)
    da.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="num_workers values to measure")
    da.add_argument("--batches", type=int, default=20, help="timed batches per measurement")
    da.add_argument("--repeats", type=int, default=3, help="measurements per num_workers (median reported)")
    da.add_argument("--data-root", default=None,
                    help="existing MSeg-layout data; default: synthetic JPEGs of --size in a temp dir")
    da.add_argument("--size", type=int, nargs=2, default=[480, 640], metavar=("H", "W"))
    da.add_argument("--gpu-img-s", type=float, default=190.0,
                    help="GPU step rate to feed (img/s/GPU; default: anchors' H100 bf16 upper estimate)")
    da.add_argument("--headroom", type=float, default=1.25, help="loader rate / GPU rate to plan for")
    da.set_defaults(func=cmd_data)
    return p


@cli_main()  # bad config, data or output path: one line, exit 2
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "json_out", None):  # an unwritable results file fails now, not after minutes of timing
        bench.append_json(args.json_out, None)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
