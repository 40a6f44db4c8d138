"""The one training entry point.

    python -m lseg.train --config configs/smoke.yaml [--output-dir DIR] [key=value ...]

Both launchers (``slurm/train_mseg.sh`` and ``tools/submit.py``) call this. Exit codes: 0 finished,
75 saved after a stop signal (requeue me), 2 a user error (config, data, checkpoint), 1 a crash.
"""
from __future__ import annotations

import argparse
import logging
import sys
import traceback
from typing import Any

from lseg import cli
from lseg.config import Config, ConfigError, add_config_args, load_config
from lseg.engine.preemption import REQUEUE_EXIT_CODE

log = logging.getLogger("lseg")


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions whose message is the whole story: printed as one line, no traceback (lseg.cli's list)."""
    return cli.user_error_types()


def run(cfg: Config) -> dict[str, Any]:
    """Train with ``cfg`` (output dir = ``cfg.train.output_dir``); the Python API submitit uses."""
    from lseg import distributed
    from lseg.engine.trainer import Trainer, pick_device
    from lseg.engine.writers import setup_logging

    info = distributed.detect(port=cfg.dist.port)
    device_type = pick_device(cfg, info).type
    info = distributed.init_distributed(cfg.dist.backend, cfg.dist.timeout_s, cfg.dist.port, device_type)
    try:
        from pathlib import Path

        run_dir = Path(cfg.train.output_dir)
        if info.is_main:
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / ".write_test").touch()
                (run_dir / ".write_test").unlink()
            except OSError as exc:
                raise ConfigError(f"train.output_dir: cannot write to {run_dir} ({exc.strerror})") from None
        setup_logging(run_dir if info.is_main else None, info.is_main, info.rank)
        return Trainer(cfg, info).train()
    finally:
        distributed.cleanup()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lseg.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--output-dir", default=None, help="run directory (sets train.output_dir)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = list(args.overrides)
    if args.output_dir is not None:
        overrides.append(f"train.output_dir={args.output_dir}")
    rank, world = "?", 1
    try:
        cfg = load_config(args.config, overrides)
        from lseg.distributed import detect

        info = detect()
        rank, world = str(info.rank), info.world_size
        result = run(cfg)
    except KeyboardInterrupt:
        print(f"interrupted (rank {rank})", file=sys.stderr)
        return cli.INTERRUPTED_EXIT_CODE
    except Exception as exc:  # noqa: BLE001 - classified below; tracebacks only for real crashes
        if cli.is_user_error(exc):
            print(f"error (rank {rank}): {cli.describe(exc)}", file=sys.stderr)
            return cli.USER_ERROR_EXIT_CODE
        if world > 1 and cli.is_peer_failure(exc):
            # The rank that failed prints its own error; a second traceback here would only
            # point at the collective that noticed it.
            print(f"rank {rank}: stopping because another rank failed ({cli.first_line(exc)})", file=sys.stderr)
            return 1
        print(f"rank {rank} failed:\n{traceback.format_exc()}", file=sys.stderr)
        return 1
    return REQUEUE_EXIT_CODE if result["status"] == "preempted" else 0


if __name__ == "__main__":
    sys.exit(main())
