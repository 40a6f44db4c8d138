"""The one training entry point.

    python -m lseg.train --config configs/smoke.yaml [--output-dir DIR] [key=value ...]

Both launchers (``slurm/train_mseg.sh`` and ``tools/submit.py``) run this, and report its outcome
the same way through :func:`run_reported`. Exit codes: 0 finished, 75 saved after SIGUSR1/SIGUSR2
(requeue me), 143 saved after SIGTERM (stopped: do not requeue), 2 a user error (config, data,
checkpoint; one line), 1 a crash (traceback), 130 Ctrl-C. ``key=value`` overrides may go anywhere.
"""
from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from lseg import cli
from lseg.config import Config, ConfigError, add_config_args, load_config
from lseg.engine.preemption import STATUS_EXIT_CODES

if TYPE_CHECKING:
    from lseg.distributed import DistInfo


def prepare_run_dir(run_dir: Path) -> None:
    """Create the run dir and prove it writable, before any work (one line if it is not)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / ".write_test").touch()
        (run_dir / ".write_test").unlink()
    except OSError as exc:
        raise ConfigError(f"train.output_dir: cannot write to {run_dir} ({exc.strerror})") from None


def run(cfg: Config, info: DistInfo) -> dict[str, Any]:
    """Train with ``cfg`` in the launcher environment ``info``; returns the trainer's result."""
    from lseg import distributed, runtime
    from lseg.engine.trainer import Trainer
    from lseg.engine.writers import setup_logging

    device = runtime.pick_device(cfg.train.device, info.local_rank)
    distributed.init_distributed(cfg.dist.backend, cfg.dist.timeout_s, device_type=device.type, info=info)
    try:
        run_dir = Path(cfg.train.output_dir)
        if info.is_main:
            prepare_run_dir(run_dir)
        setup_logging(run_dir if info.is_main else None, info.is_main, info.rank)
        return Trainer(cfg, info, device).train()
    finally:
        distributed.cleanup()


def run_reported(load: Callable[[], Config]) -> tuple[int, dict[str, Any] | None]:
    """Load the config, train, and report: (exit code, the trainer's result or None after an error).

    The one place that turns an outcome into what users see, shared by ``main`` and submitit's
    ``TrainJob``: a user error is one line ``error (rank R): ...`` (``rank ?`` before the launcher
    environment is read), a dead peer one line, a crash one traceback from the rank that raised.
    """
    from lseg import distributed

    rank, world = "?", 1
    try:
        cfg = load()
        info = distributed.detect(port=cfg.dist.port)
        rank, world = str(info.rank), info.world_size
        result = run(cfg, info)
    except KeyboardInterrupt:
        print(f"interrupted (rank {rank})", file=sys.stderr)
        return cli.INTERRUPTED_EXIT_CODE, None
    except Exception as exc:  # noqa: BLE001 - classified below; tracebacks only for real crashes
        if cli.is_user_error(exc):
            print(f"error (rank {rank}): {cli.describe(exc)}", file=sys.stderr)
            return cli.USER_ERROR_EXIT_CODE, None
        if world > 1 and cli.is_peer_failure(exc):
            # The rank that failed prints its own error; a second traceback here would only
            # point at the collective that noticed it.
            print(f"rank {rank}: stopping because another rank failed ({cli.first_line(exc)})", file=sys.stderr)
            return 1, None
        print(f"rank {rank} failed:\n{traceback.format_exc()}", file=sys.stderr)
        return 1, None
    return STATUS_EXIT_CODES[result["status"]], result


def config_from_args(args: argparse.Namespace) -> Config:
    """``--config``, ``key=value`` overrides and ``--output-dir`` (which wins) -> a validated Config."""
    overrides = list(args.overrides)
    if args.output_dir is not None:
        overrides.append(f"train.output_dir={args.output_dir}")
    return load_config(args.config, overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lseg.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--output-dir", default=None, help="run directory (sets train.output_dir)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = cli.parse_args(build_parser(), argv)
    return run_reported(lambda: config_from_args(args))[0]


if __name__ == "__main__":
    sys.exit(main())
