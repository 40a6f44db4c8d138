"""The scheduler flags of every submitit launcher: one definition, one set of defaults, all validated.

Defaults fit the real recipe (``configs/lseg_vitl16_480_mseg.yaml``): whole 8-GPU nodes, one
process per GPU with 10 cores each for data loading, 24 h jobs warned 5 minutes before the limit
(enough to save a ViT-L checkpoint), requeued up to 30 times. A tool may default to fewer GPUs
(``add_scheduler_args(parser, gpus_per_node=1)``); everything else means the same everywhere.

A bad value is argparse's usage error (exit 2) naming the flag; :func:`check_scheduler_args` adds
the rules that involve two flags and raises :class:`LaunchError` (one line, exit 2).
"""
from __future__ import annotations

import argparse
import re

from lseg.cli import non_negative_int, positive_int

GPUS_PER_NODE = 8
CPUS_PER_TASK = 10
TIMEOUT_MIN = 24 * 60
SIGNAL_DELAY_S = 300
MAX_REQUEUES = 30
ARRAY_PARALLELISM = 64


class LaunchError(RuntimeError):
    """The job cannot be launched as asked (conflicting flags, no Slurm here); one line."""


def timeout_minutes(text: str) -> int:
    """argparse type: minutes (``90``) or Slurm's ``HH:MM:SS`` / ``D-HH[:MM[:SS]]``, seconds rounded up.

    Slurm reads ``2:00`` as two minutes; such a two-part value is refused rather than guessed.
    """
    days, dash, clock = text.strip().rpartition("-")
    parts = clock.split(":")
    if not all(p.isdigit() for p in [days] * bool(dash) + parts) or len(parts) > 3 or (len(parts) == 2 and not dash):
        hint = " (Slurm reads A:B as minutes:seconds)" if len(parts) == 2 else ""
        raise argparse.ArgumentTypeError(f"cannot read {text!r}: give minutes, HH:MM:SS or D-HH:MM:SS{hint}")
    if dash or len(parts) == 3:
        hours, mins, secs = (int(p) for p in (parts + ["0", "0"])[:3])
        minutes = int(days or 0) * 1440 + hours * 60 + mins + (secs > 0)
    else:
        minutes = int(parts[0])
    if minutes <= 0:
        raise argparse.ArgumentTypeError(f"must be at least one minute, got {text!r}")
    return minutes


def memory(text: str) -> str:
    """argparse type: memory per node for sbatch, with a unit (``64G``, ``500M``, ``1T``), or ``0`` = all."""
    m = re.fullmatch(r"(\d+)([KMGT]?)", text.strip().upper())
    if not m or (not m.group(2) and m.group(1) != "0"):
        raise argparse.ArgumentTypeError(f"cannot read {text!r}: give a size with a unit, e.g. 64G (0 = all of it)")
    return m.group(1) + m.group(2)


def slurm_word(text: str) -> str:
    """argparse type for names and lists Slurm takes as one word (partition, account, hostlist, ...)."""
    if not text or any(c.isspace() for c in text):
        raise argparse.ArgumentTypeError(f"expected one word without spaces, got {text!r}")
    return text


def one_line(text: str) -> str:
    """argparse type for free text that lands on one ``#SBATCH`` line (``--comment``)."""
    if not text.strip() or "\n" in text or "\r" in text:
        raise argparse.ArgumentTypeError(f"expected one non-empty line, got {text!r}")
    return text


def add_scheduler_args(parser: argparse.ArgumentParser, *, gpus_per_node: int = GPUS_PER_NODE,
                       job_arrays: bool = False) -> argparse._ArgumentGroup:
    """Add the scheduler flag group to ``parser`` (``job_arrays``: also ``--array-parallelism``)."""
    g = parser.add_argument_group("scheduler (Slurm through submitit)")
    g.add_argument("--nodes", type=positive_int, default=1, help="nodes per job")
    g.add_argument("--gpus-per-node", type=non_negative_int, default=gpus_per_node,
                   help="GPUs per node, one process each; 0 for CPU-only jobs")
    g.add_argument("--ntasks-per-node", type=positive_int, default=None,
                   help="processes per node (default: one per GPU, or 1 with --gpus-per-node 0)")
    g.add_argument("--cpus-per-task", type=positive_int, default=CPUS_PER_TASK,
                   help="CPU cores per process (data loading); also its OMP_NUM_THREADS")
    g.add_argument("--mem", type=memory, default=None, help="memory per node, e.g. 200G; 0 = all of it")
    g.add_argument("--timeout", type=timeout_minutes, default=TIMEOUT_MIN,
                   help="time limit: minutes, HH:MM:SS or D-HH:MM:SS (default: %(default)s minutes)")
    for flag, what in (("partition", "Slurm partition"), ("account", "Slurm account"), ("qos", "Slurm QOS"),
                       ("constraint", "node features, e.g. a100"), ("exclude", "nodes to avoid, e.g. node[01-03]"),
                       ("job-name", "job name (default: the tool's)")):
        g.add_argument(f"--{flag}", type=slurm_word, default=None, help=what)
    g.add_argument("--comment", type=one_line, default=None, help="Slurm job comment")
    g.add_argument("--signal-delay-s", type=non_negative_int, default=SIGNAL_DELAY_S,
                   help="SIGUSR2 this many seconds before the time limit: time to save and requeue")
    g.add_argument("--max-requeues", type=non_negative_int, default=MAX_REQUEUES,
                   help="time-limit requeues before giving up (preemptions always requeue)")
    if job_arrays:
        g.add_argument("--array-parallelism", type=positive_int, default=ARRAY_PARALLELISM,
                       help="array tasks running at once")
    g.add_argument("--cluster", choices=["slurm", "local"], default="slurm",
                   help="slurm, or local: run the tasks on this machine through submitit")
    g.add_argument("--local", dest="cluster", action="store_const", const="local", help="same as --cluster local")
    return g


def tasks_per_node(args: argparse.Namespace) -> int:
    """Processes per node: ``--ntasks-per-node``, else one per GPU, else 1."""
    return args.ntasks_per_node or max(args.gpus_per_node, 1)


def check_scheduler_args(args: argparse.Namespace) -> None:
    """The rules between flags; raises :class:`LaunchError` with the one line to show."""
    tasks = tasks_per_node(args)
    if args.gpus_per_node and tasks > args.gpus_per_node:
        raise LaunchError(f"--ntasks-per-node {tasks} > --gpus-per-node {args.gpus_per_node}: "
                          "each process needs a GPU of its own")
    if args.signal_delay_s >= args.timeout * 60:
        raise LaunchError(f"--signal-delay-s {args.signal_delay_s} is not shorter than --timeout "
                          f"({args.timeout} min): the job would be told to stop as soon as it starts")
    if args.cluster == "local" and args.nodes > 1:
        raise LaunchError(f"--local runs on this machine only: --nodes must be 1, got {args.nodes}")
