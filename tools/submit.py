#!/usr/bin/env python
"""Submit LSeg training to Slurm through submitit (or run it on this machine with ``--local``).

    python tools/submit.py --config configs/lseg_vitl16_480_mseg.yaml --output-dir runs/mseg \\
        --nodes 2 --gpus-per-node 8 --partition gpu --timeout 1440 [key=value ...]

Scheduler flags sit on top of the training CLI (``--config``, ``--output-dir``, ``key=value``), so a
run launched here and one launched with ``python -m lseg.train`` read the same config the same way.
The config is loaded and validated before anything is submitted: a typo fails here, in one line.

Requeue design. Slurm sends SIGUSR2 to every task ``--signal-delay-s`` before the time limit and, with
``preempt_send_user_signal``, on preemption. While :func:`lseg.train.run` trains, its PreemptionFlag
owns USR1/USR2/TERM: the ranks agree at a step boundary, rank 0 saves, and ``run`` returns
``status="preempted"`` after putting submitit's handlers back. :class:`TrainJob` then hands the
signal to submitit's own handler, so the requeue happens exactly as submitit does it (it calls our
``checkpoint()``, counts timeouts against ``--max-requeues``, ``scontrol requeue``s the job). We do not
requeue ourselves and do not let submitit act mid-step: submitit's handler would requeue from rank 0
while the other ranks sit in a collective, before any checkpoint exists. ``checkpoint()`` resubmits a
fresh callable: all state is on disk, and the restarted job auto-resumes from the run dir.

Rendezvous: on Slurm the trainer reads SLURM_PROCID/SLURM_NTASKS/SLURM_JOB_NODELIST itself, exactly
as under ``slurm/train_mseg.sh``; only ``--local`` (no Slurm variables) exports torchrun-style
variables through ``submitit.helpers.TorchDistributedEnvironment``.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # running as `python tools/submit.py` from a checkout
    sys.path.insert(0, str(REPO))

import submitit  # noqa: E402

from lseg.cli import cli_main  # noqa: E402
from lseg.config import Config, add_config_args, load_config  # noqa: E402

#: How long a non-zero rank waits for rank 0's requeue to end the job before exiting by itself.
FOLLOWER_GRACE_S = 120


class TrainJob(submitit.helpers.Checkpointable):
    """The submitted callable: train with a validated config, requeue when told to stop."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def __call__(self) -> dict[str, Any]:
        from lseg.train import run

        env = submitit.JobEnvironment()
        if env.cluster != "slurm":
            # The local executor sets only SUBMITIT_LOCAL_* variables; give the trainer torchrun's.
            submitit.helpers.TorchDistributedEnvironment().export()
        result = run(self.cfg)
        if result["status"] == "preempted":
            self._requeue(env)
        return result

    def _requeue(self, env: submitit.JobEnvironment) -> None:
        """Replay the stop signal to submitit's handler, which ``run`` has just restored."""
        signum = env._usr_sig()  # USR2, or $SUBMITIT_PREEMPT_SIGNAL
        handler = signal.getsignal(signum)
        if not callable(handler):  # not started by submitit: nothing to hand over to
            return
        # Rank 0: checkpoint() + `scontrol requeue` + SystemExit (no result file, the job restarts),
        # or UncompletedJobError once the timeout budget is spent. Other ranks: a log line.
        handler(signum, None)
        if env.cluster == "slurm":
            # Exiting now could let srun (KillOnBadExit/--wait) kill rank 0 mid-requeue; the requeue
            # ends this process within seconds.
            time.sleep(FOLLOWER_GRACE_S)
        sys.exit(0)  # SystemExit: submitit writes no result file for this attempt

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on rank 0 before requeueing: the state lives in the run dir."""
        return submitit.helpers.DelayedSubmission(TrainJob(self.cfg))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python tools/submit.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--output-dir", default=None,
                        help="run directory (sets train.output_dir; default: the config's)")
    s = parser.add_argument_group("scheduler")
    s.add_argument("--nodes", type=int, default=1)
    s.add_argument("--gpus-per-node", type=int, default=8, help="0 for CPU-only jobs")
    s.add_argument("--ntasks-per-node", type=int, default=None,
                   help="processes per node (default: --gpus-per-node, or 1 without GPUs)")
    s.add_argument("--cpus-per-task", type=int, default=10)
    s.add_argument("--mem", default=None, help="memory per node, e.g. 200G; 0 = all of it")
    s.add_argument("--timeout", type=int, default=24 * 60, help="time limit in minutes")
    s.add_argument("--partition", default=None)
    s.add_argument("--account", default=None)
    s.add_argument("--qos", default=None)
    s.add_argument("--constraint", default=None)
    s.add_argument("--exclude", default=None, help="nodes to avoid, e.g. node[01-03]")
    s.add_argument("--comment", default=None)
    s.add_argument("--job-name", default="lseg")
    s.add_argument("--signal-delay-s", type=int, default=300,
                   help="USR2 this many seconds before the time limit: time to save a checkpoint")
    s.add_argument("--max-requeues", type=int, default=30,
                   help="time-limit requeues before giving up (submitit's slurm_max_num_timeout)")
    r = parser.add_argument_group("run")
    r.add_argument("--dry-run", action="store_true", help="print what would be submitted and exit")
    r.add_argument("--local", action="store_true",
                   help="run on this machine through submitit's local executor (waits for the result)")
    r.add_argument("--wait", action="store_true", help="wait for the job and print its result")
    return parser


def resolve_config(args: argparse.Namespace) -> Config:
    """Load and validate now, with the run dir made absolute (jobs may start in another cwd)."""
    overrides = list(args.overrides)
    if args.output_dir is not None:
        overrides.append(f"train.output_dir={args.output_dir}")
    cfg = load_config(args.config, overrides)
    cfg.train.output_dir = str(Path(cfg.train.output_dir).expanduser().resolve())
    return cfg


def job_setup(args: argparse.Namespace) -> list[str]:
    """Shell lines run before the tasks start; the same environment slurm/train_mseg.sh gives them.

    PYTHONPATH: jobs unpickle TrainJob, which imports lseg, wherever they start. OMP_NUM_THREADS:
    one intra-op pool per task sized to its CPUs (torch would otherwise use every core of the node;
    it also keeps CPU results identical between the two launchers).
    """
    return [f"export PYTHONPATH={shlex.quote(str(REPO))}${{PYTHONPATH:+:$PYTHONPATH}}",
            f"export OMP_NUM_THREADS=${{OMP_NUM_THREADS:-{args.cpus_per_task}}}"]


def slurm_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """submitit SlurmExecutor parameters (sbatch flags with underscores)."""
    tasks = args.ntasks_per_node or max(args.gpus_per_node, 1)
    params: dict[str, Any] = {
        "job_name": args.job_name, "nodes": args.nodes, "ntasks_per_node": tasks,
        "cpus_per_task": args.cpus_per_task, "time": args.timeout,
        "signal_delay_s": args.signal_delay_s, "setup": job_setup(args),
        # --requeue: needed for `scontrol requeue` and preemption-requeue where JobRequeue=0.
        "additional_parameters": {"requeue": True},
    }
    if args.gpus_per_node > 0:
        params["gpus_per_node"] = args.gpus_per_node
    for key in ("mem", "partition", "account", "qos", "constraint", "exclude", "comment"):
        if getattr(args, key) is not None:
            params[key] = getattr(args, key)
    return params


def dry_run(args: argparse.Namespace, cfg: Config, folder: Path) -> None:
    from lseg.config import dump_yaml

    print(f"# run dir: {cfg.train.output_dir}\n# submitit folder: {folder}")
    if args.local:
        print(f"# local executor: {args.ntasks_per_node or 1} task(s), timeout {args.timeout} min")
    else:
        from submitit.slurm.slurm import _make_sbatch_string  # private, used only to show the script

        command = f"{sys.executable} -u -m submitit.core._submit {folder}"
        print(_make_sbatch_string(command=command, folder=folder, **slurm_parameters(args)))
    print("# resolved config:")
    print(dump_yaml(cfg), end="")


def make_executor(args: argparse.Namespace, folder: Path) -> submitit.Executor:
    if args.local:
        executor = submitit.LocalExecutor(folder=folder, max_num_timeout=args.max_requeues)
        executor.update_parameters(timeout_min=args.timeout, tasks_per_node=args.ntasks_per_node or 1,
                                   gpus_per_node=max(args.gpus_per_node, 0),
                                   signal_delay_s=args.signal_delay_s, setup=job_setup(args))
        return executor
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=args.max_requeues)
    executor.update_parameters(**slurm_parameters(args))
    return executor


class SubmitError(Exception):
    """The job cannot be submitted from here (no Slurm client); one line."""


@cli_main(SubmitError)  # config errors, an unwritable run dir, ...: one line, exit 2
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = resolve_config(args)
    folder = Path(cfg.train.output_dir) / "submitit" / "%j"
    if args.dry_run:
        dry_run(args, cfg, folder)
        return 0
    try:
        executor = make_executor(args, folder)
    except RuntimeError as exc:  # no srun on this machine
        raise SubmitError(f"{exc} (use --local to run here)") from None
    Path(cfg.train.output_dir).mkdir(parents=True, exist_ok=True)
    job = executor.submit(TrainJob(cfg))
    where = "locally" if args.local else f"to Slurm ({args.nodes} node(s))"
    print(f"submitted job {job.job_id} {where}")
    print(f"  run dir:     {cfg.train.output_dir}")
    print(f"  logs:        {job.paths.stdout}  (rank 0; stderr: {job.paths.stderr})")
    print(f"  tensorboard: tensorboard --logdir {Path(cfg.train.output_dir) / 'tb'}")
    sys.stdout.flush()
    if not (args.wait or args.local):
        return 0
    try:
        results = job.results()
    except (submitit.core.utils.FailedJobError, submitit.core.utils.UncompletedJobError) as exc:
        print(f"job {job.job_id} failed: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    print(json.dumps(results[0], default=str))
    return 0 if results[0].get("status") == "completed" else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
