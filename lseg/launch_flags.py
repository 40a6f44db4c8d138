"""Scheduler flags shared by the submitit launchers (training, evaluation sweeps).

Why a module of its own: ``tools/submit.py`` (training) and ``tools/eval_sweep.py --submit``
(job arrays) must accept the same flags with the same meaning, so a user can copy a working
``--partition/--account/--timeout`` line from one to the other. The names and meanings follow
``tools/submit.py`` (which defines its flags inline and may switch to :func:`add_scheduler_args`). Only flag parsing and the mapping
to submitit parameters live here; what is submitted is each tool's business.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any


def add_scheduler_args(parser: argparse.ArgumentParser, *, gpus_per_node: int = 1,
                       timeout: str = "240") -> argparse._ArgumentGroup:
    """Add the scheduler flag group (DESIGN §6) to ``parser`` and return the group."""
    g = parser.add_argument_group("scheduler (submitit)")
    g.add_argument("--nodes", type=int, default=1, help="nodes per job")
    g.add_argument("--gpus-per-node", type=int, default=gpus_per_node,
                   help="GPUs per node; one task (process) per GPU")
    g.add_argument("--partition", default=None, help="Slurm partition")
    g.add_argument("--timeout", default=timeout,
                   help="wall-clock limit: minutes, or [D-]HH:MM[:SS] (default %(default)s minutes)")
    g.add_argument("--account", default=None, help="Slurm account")
    g.add_argument("--qos", default=None, help="Slurm QOS")
    g.add_argument("--constraint", default=None, help="Slurm --constraint (node features)")
    g.add_argument("--exclude", default=None, help="nodes to exclude (Slurm hostlist)")
    g.add_argument("--mem", default=None, help="memory per node, e.g. 64G or 0 for the whole node")
    g.add_argument("--ntasks-per-node", type=int, default=None,
                   help="processes per node (default: --gpus-per-node, or 1 without GPUs)")
    g.add_argument("--cpus-per-task", type=int, default=8, help="CPU cores per task (data loading)")
    g.add_argument("--comment", default=None, help="Slurm --comment")
    g.add_argument("--signal-delay-s", type=int, default=180, help="USR2 this many seconds before the limit")
    g.add_argument("--job-name", default=None, help="job name (default: the tool's name)")
    g.add_argument("--logs-dir", default=None, help="submitit log folder (default: under the output dir)")
    g.add_argument("--cluster", default=None, choices=["slurm", "local", "debug"],
                   help="submitit backend (default: slurm if available, else local)")
    g.add_argument("--local", dest="cluster", action="store_const", const="local",
                   help="same as --cluster local (run the tasks on this machine)")
    g.add_argument("--array-parallelism", type=int, default=64, help="max array tasks running at once")
    g.add_argument("--dry-run", action="store_true", help="print what would be submitted and exit")
    return g


def parse_timeout_min(text: str | int) -> int:
    """``240`` / ``"240"`` -> 240; ``"4:00"`` / ``"04:00:00"`` -> 240; ``"1-00:00"`` -> 1440."""
    text = str(text).strip()
    if re.fullmatch(r"\d+", text):
        return int(text)
    m = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d{2})(?::(\d{2}))?", text)
    if not m:
        raise ValueError(f"--timeout: cannot read {text!r} (minutes, or [D-]HH:MM[:SS])")
    days, hours, minutes, seconds = (int(x) if x else 0 for x in m.groups())
    return days * 1440 + hours * 60 + minutes + (1 if seconds else 0)


def parse_mem_gb(text: str | None) -> int | None:
    """``64G`` -> 64, ``512M`` -> 1 (rounded up), ``0`` -> 0 (whole node), None -> None."""
    if text is None:
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)[bB]?", str(text).strip())
    if not m:
        raise ValueError(f"--mem: cannot read {text!r} (e.g. 64G)")
    value, unit = float(m.group(1)), m.group(2).upper() or "G"
    factor = {"K": 1 / 1024 ** 2, "M": 1 / 1024, "G": 1, "T": 1024}[unit]
    gb = value * factor
    return int(gb) if gb == int(gb) else int(gb) + 1


def executor_parameters(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """submitit ``update_parameters`` kwargs for the flags in ``args`` (one task per GPU)."""
    params: dict[str, Any] = {
        "name": args.job_name or name,
        "nodes": args.nodes,
        "tasks_per_node": args.ntasks_per_node or max(args.gpus_per_node, 1),
        "gpus_per_node": args.gpus_per_node,
        "cpus_per_task": args.cpus_per_task,
        "timeout_min": parse_timeout_min(args.timeout),
        "slurm_array_parallelism": args.array_parallelism,
        "slurm_signal_delay_s": args.signal_delay_s,
    }
    mem = parse_mem_gb(args.mem)
    if mem is not None:
        params["mem_gb"] = mem
    for flag in ("partition", "account", "qos", "constraint", "exclude", "comment"):
        value = getattr(args, flag)
        if value:
            params[f"slurm_{flag}"] = value
    return params


def make_executor(args: argparse.Namespace, folder: str | Path, name: str):
    """A configured ``submitit.AutoExecutor`` (import deferred: only launchers need submitit)."""
    import submitit
    import torch

    executor = submitit.AutoExecutor(folder=str(folder), cluster=args.cluster)
    params = executor_parameters(args, name)
    if executor.cluster != "slurm":  # local/debug executors know only the generic parameters
        params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
        if not torch.cuda.is_available():
            params["gpus_per_node"] = 0
    executor.update_parameters(**params)
    return executor
