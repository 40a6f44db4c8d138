"""Training as a submitit job: the callable ``tools/submit.py`` submits, and the submission itself.

Signals (:mod:`lseg.engine.preemption`). Slurm sends SIGUSR2 to every task ``--signal-delay-s``
before the time limit and, with ``preempt_send_user_signal``, on preemption. While the trainer runs,
its PreemptionFlag owns SIGUSR1/SIGUSR2/SIGTERM: the ranks agree at a step boundary, rank 0 saves,
and the trainer returns ``"preempted"`` (SIGUSR1/2) or ``"stopped"`` (SIGTERM) after putting
submitit's handlers back. On ``"preempted"`` :class:`TrainJob` hands the signal to submitit's own
handler, so the requeue happens exactly as submitit does it (it calls our ``checkpoint()``, counts
time-outs against ``--max-requeues``, ``scontrol requeue``s the job). We never let submitit act
mid-step: its handler would requeue from rank 0 while the other ranks sit in a collective, before
any checkpoint exists. On ``"stopped"`` the job simply ends with the trainer's result: ``scancel``
means stop, and a preemption by SIGTERM alone is requeued by Slurm itself.

Errors are reported by :func:`lseg.train.run_reported`, as ``python -m lseg.train`` reports them: a
user error is one line on the task's stderr and the task exits 2, with no result file, so submitit
neither retries nor prints a traceback.

Rendezvous: on Slurm the trainer reads SLURM_PROCID/SLURM_NTASKS/SLURM_JOB_NODELIST itself, exactly
as under ``slurm/train_mseg.sh``; only ``--local`` (no Slurm variables) exports torchrun-style
variables through ``submitit.helpers.TorchDistributedEnvironment``.
"""
from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import submitit

from lseg.cli import USER_ERROR_EXIT_CODE
from lseg.config import Config, dump_yaml
from lseg.engine.preemption import REQUEUE_EXIT_CODE, STATUS_EXIT_CODES
from lseg.launch.executor import make_executor, sbatch_script

#: How long a non-zero rank waits for rank 0's requeue to end the job before exiting by itself.
FOLLOWER_GRACE_S = 120


class TrainJob(submitit.helpers.Checkpointable):
    """The submitted callable: train with a validated config, requeue when told to."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def __call__(self) -> dict[str, Any]:
        from lseg.train import run_reported

        env = submitit.JobEnvironment()
        if env.cluster != "slurm":
            # The local executor sets only SUBMITIT_LOCAL_* variables; give the trainer torchrun's.
            submitit.helpers.TorchDistributedEnvironment().export()
        code, result = run_reported(lambda: self.cfg)
        if code == REQUEUE_EXIT_CODE:
            self._requeue(env)
        if result is None:
            raise SystemExit(code)  # reported already; SystemExit: no result file, no traceback
        return result

    def _requeue(self, env: submitit.JobEnvironment) -> None:
        """Replay the stop signal to submitit's handler, which the trainer has just restored."""
        signum = env._usr_sig()  # USR2, or $SUBMITIT_PREEMPT_SIGNAL
        handler = signal.getsignal(signum)
        if not callable(handler):  # not started by submitit: nothing to hand over to
            return
        # Rank 0: checkpoint() + `scontrol requeue` + SystemExit (no result file, the job restarts),
        # or UncompletedJobError once the time-out budget is spent. Other ranks: a log line.
        handler(signum, None)
        if env.cluster == "slurm":
            # Exiting now could let srun (--kill-on-bad-exit) kill rank 0 mid-requeue. The requeue's
            # SIGTERM ends this process (submitit would ignore it; nothing is left to save here).
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            time.sleep(FOLLOWER_GRACE_S)
        sys.exit(0)  # SystemExit: submitit writes no result file for this attempt

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on rank 0 before requeueing: the state lives in the run dir."""
        return submitit.helpers.DelayedSubmission(TrainJob(self.cfg))


def resolve_config(args: argparse.Namespace) -> Config:
    """Load and validate now, with the run dir made absolute (jobs may start in another cwd)."""
    from lseg.train import config_from_args

    cfg = config_from_args(args)
    cfg.train.output_dir = str(Path(cfg.train.output_dir).expanduser().resolve())
    return cfg


def submit_training(args: argparse.Namespace) -> int:
    """``tools/submit.py``: validate, then submit (or with ``--dry-run`` show) one training job."""
    cfg = resolve_config(args)
    run_dir = Path(cfg.train.output_dir)
    folder = run_dir / "submitit" / "%j"
    if args.dry_run:
        print(f"# run dir: {run_dir}\n# submitit folder: {folder}")
        print(sbatch_script(args, folder, "lseg"))
        print("# resolved config:")
        print(dump_yaml(cfg), end="")
        return 0
    executor = make_executor(args, folder, "lseg")
    run_dir.mkdir(parents=True, exist_ok=True)
    job = executor.submit(TrainJob(cfg))
    where = "locally" if args.cluster == "local" else f"to Slurm ({args.nodes} node(s))"
    print(f"submitted job {job.job_id} {where}")
    print(f"  run dir:     {run_dir}")
    print(f"  logs:        {job.paths.stdout}  (rank 0; stderr: {job.paths.stderr})")
    print(f"  tensorboard: tensorboard --logdir {run_dir / 'tb'}")
    sys.stdout.flush()
    if not (args.wait or args.cluster == "local"):
        return 0
    return wait_for(job)


def wait_for(job: submitit.Job) -> int:
    """Wait for the job; print its result (or its error line) and return the trainer's exit code."""
    try:
        results = job.results()
    except (submitit.core.utils.FailedJobError, submitit.core.utils.UncompletedJobError) as exc:
        error = re.search(r"^error \(rank [^)]*\): .*$", job.stderr() or "", re.M)
        if error:  # the trainer's own one-line report
            print(error.group(0), file=sys.stderr)
            return USER_ERROR_EXIT_CODE
        print(f"job {job.job_id} failed: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    print(json.dumps(results[0], default=str))
    return STATUS_EXIT_CODES.get(results[0].get("status"), 1)
