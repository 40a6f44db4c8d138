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
import sys
from typing import Sequence

from lseg.bench import commands
from lseg.cli import cli_main, non_negative_int, parse_args, positive_float, positive_int


def _common(sp: argparse.ArgumentParser, steps: int | None, warmup: int) -> None:
    sp.add_argument("--config", default=commands.DEFAULT_CONFIG,
                    help=f"YAML config (default {commands.DEFAULT_CONFIG})")
    sp.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    sp.add_argument("--batch-size", type=positive_int, default=None, help="per-GPU batch (default: train.batch_size)")
    if steps is not None:
        sp.add_argument("--steps", type=positive_int, default=steps, help="timed steps (rounds) per contender")
    sp.add_argument("--warmup", type=non_negative_int, default=warmup,
                    help="untimed steps (batches) per contender first")
    sp.add_argument("--json-out", default=None, help="append one JSON line with the results to this file")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tools/benchmark.py", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    ts = sub.add_parser("train-step", help="images/s, phase times, peak memory and MFU of Trainer.run_step")
    _common(ts, steps=5, warmup=2)
    ts.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: train.device")
    ts.add_argument("--variants", action="append", default=None,
                    help="combos like 'precision=bf16,ckpt=on;ckpt=off'; keys precision, ckpt, compile, "
                         "channels_last (cl); a|b expands a grid; repeatable. Default: the config as is")
    ts.add_argument("--data", choices=["synthetic", "loader"], default="synthetic",
                    help="one pre-loaded synthetic batch, or the real training loader")
    ts.add_argument("--num-workers", type=non_negative_int, default=None,
                    help="loader workers (default data.num_workers)")
    ts.add_argument("--peak-tflops", type=positive_float, default=None,
                    help="device peak for MFU (default: table of known GPUs; none on CPU)")
    ts.add_argument("--time-limit", type=positive_float, default=None, metavar="SECONDS",
                    help="stop the timed rounds once this much time is spent (at least one round runs)")
    ts.add_argument("--no-phase-split", action="store_true",
                    help="time whole steps only: no device synchronisation between phases (the host queues "
                         "ahead as in training); no data/fwd/bwd/opt or act_peak columns")
    ts.add_argument("--no-exact-cpu-memory", action="store_true",
                    help="leave glibc's allocator alone: faster CPU steps, but the CPU memory columns then "
                         "over-estimate (freed memory stays in RSS)")
    ts.set_defaults(func=commands.train_step)

    ov = sub.add_parser("overhead", help="Trainer.run_step + logging hook vs a bare forward/backward/optimizer loop")
    _common(ov, steps=10, warmup=2)
    ov.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: train.device")
    ov.set_defaults(func=commands.overhead)

    da = sub.add_parser("data", help="training-loader throughput (lseg.data.benchmark_loader)")
    _common(da, steps=None, warmup=2)
    da.add_argument("--workers", type=non_negative_int, nargs="+", default=[0, 2],
                    help="num_workers values to measure")
    da.add_argument("--batches", type=positive_int, default=20, help="timed batches per measurement")
    da.add_argument("--repeats", type=positive_int, default=3,
                    help="measurements per num_workers (median reported)")
    da.add_argument("--data-root", default=None,
                    help="existing MSeg-layout data; default: synthetic JPEGs of --size in a temp dir")
    da.add_argument("--size", type=positive_int, nargs=2, default=[480, 640], metavar=("H", "W"))
    da.add_argument("--gpu-img-s", type=positive_float, default=190.0,
                    help="GPU step rate to feed (img/s per GPU; default: the H100 bf16 estimate)")
    da.add_argument("--headroom", type=positive_float, default=1.25, help="loader rate / GPU rate to plan for")
    da.set_defaults(func=commands.data)
    return p


@cli_main()  # bad config, data, device or output path: one line, exit 2
def main(argv: Sequence[str] | None = None) -> int:
    return commands.run(parse_args(build_parser(), argv))


if __name__ == "__main__":
    sys.exit(main())
