"""The one submitit executor factory: training jobs and evaluation arrays are submitted alike.

Tasks get the environment ``slurm/train_mseg.sh`` gives its tasks, so a run behaves the same under
either launcher (and CPU results are identical): the checkout on ``PYTHONPATH`` (jobs unpickle
their callable, which imports ``lseg``, wherever they start), ``OMP_NUM_THREADS`` = the task's
cores, and the same ``srun`` flags: ``--kill-on-bad-exit=1`` ends the whole step as soon as one
rank dies (with NCCL the others would otherwise sit in a collective until ``dist.timeout_s``), and
``--cpus-per-task`` again, because ``srun`` in Slurm 22.05+ does not inherit it from ``sbatch``.
Jobs are submitted with ``--requeue`` (needed for ``scontrol requeue`` where ``JobRequeue=0``).
"""
from __future__ import annotations

import argparse
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from lseg.launch.flags import LaunchError, check_scheduler_args, tasks_per_node

REPO = Path(__file__).resolve().parents[2]


def job_setup(cpus_per_task: int) -> list[str]:
    """Shell lines run in the job before its tasks start."""
    return [f"export PYTHONPATH={shlex.quote(str(REPO))}${{PYTHONPATH:+:$PYTHONPATH}}",
            f"export OMP_NUM_THREADS=${{OMP_NUM_THREADS:-{cpus_per_task}}}"]


def slurm_parameters(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """``submitit.SlurmExecutor`` parameters (sbatch flags with underscores) for the scheduler flags."""
    params: dict[str, Any] = {
        "job_name": args.job_name or name, "nodes": args.nodes, "ntasks_per_node": tasks_per_node(args),
        "cpus_per_task": args.cpus_per_task, "time": args.timeout, "signal_delay_s": args.signal_delay_s,
        "setup": job_setup(args.cpus_per_task),
        "srun_args": ["--kill-on-bad-exit=1", f"--cpus-per-task={args.cpus_per_task}"],
        "additional_parameters": {"requeue": True},
    }
    if args.gpus_per_node > 0:
        params["gpus_per_node"] = args.gpus_per_node
    if getattr(args, "array_parallelism", None):
        params["array_parallelism"] = args.array_parallelism
    for key in ("mem", "partition", "account", "qos", "constraint", "exclude", "comment"):
        if getattr(args, key) is not None:
            params[key] = getattr(args, key)
    return params


def _local_tasks(args: argparse.Namespace) -> tuple[int, int]:
    """(tasks, GPUs) on this machine: one task per GPU that is really here (at most --gpus-per-node)."""
    import torch

    gpus = min(args.gpus_per_node, torch.cuda.device_count())
    return args.ntasks_per_node or max(gpus, 1), gpus


def make_executor(args: argparse.Namespace, folder: str | Path, name: str):
    """A configured submitit executor for the flags of :func:`lseg.launch.add_scheduler_args`.

    ``folder``: submitit's folder for pickles and logs (``%j`` = job id); ``name``: the default job name.
    """
    check_scheduler_args(args)
    import submitit

    if args.cluster == "local":
        tasks, gpus = _local_tasks(args)
        executor = submitit.LocalExecutor(folder=folder, max_num_timeout=args.max_requeues)
        executor.update_parameters(timeout_min=args.timeout, tasks_per_node=tasks, gpus_per_node=gpus,
                                   signal_delay_s=args.signal_delay_s, setup=job_setup(args.cpus_per_task))
        return executor
    if shutil.which("sbatch") is None or shutil.which("srun") is None:
        raise LaunchError("no Slurm on this machine (sbatch/srun not found); --local runs the job here instead")
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=args.max_requeues)
    executor.update_parameters(**slurm_parameters(args, name))
    return executor


def sbatch_script(args: argparse.Namespace, folder: str | Path, name: str) -> str:
    """What :func:`make_executor` would submit, for ``--dry-run`` (needs no Slurm)."""
    check_scheduler_args(args)
    if args.cluster == "local":
        tasks, gpus = _local_tasks(args)
        return f"# local executor: {tasks} task(s), {gpus} GPU(s), timeout {args.timeout} min"
    from submitit.slurm.slurm import _make_sbatch_string  # private; used only to show the script

    command = f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {folder}"
    return _make_sbatch_string(command=command, folder=folder, **slurm_parameters(args, name))
