"""Launching on Slurm through submitit: the shared scheduler flags, the executor factory, training jobs.

``tools/submit.py`` (training) and ``tools/eval_sweep.py --submit`` (evaluation arrays) take the
same flags (:func:`add_scheduler_args`) and build their executor the same way (:func:`make_executor`),
so a ``--partition/--account/--timeout`` line that works for one works for the other, and the tasks
run in the environment ``slurm/train_mseg.sh`` gives its tasks. What a stop signal means is fixed in
:mod:`lseg.engine.preemption`; :mod:`lseg.launch.train_job` is the training job submitit runs.
"""
from lseg.launch.executor import make_executor, sbatch_script
from lseg.launch.flags import LaunchError, add_scheduler_args, check_scheduler_args

__all__ = ["LaunchError", "add_scheduler_args", "check_scheduler_args", "make_executor", "sbatch_script"]
