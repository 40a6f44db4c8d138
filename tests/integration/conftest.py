"""The integration tests' shared fixture: a real 2-node Slurm cluster on this machine.

``tests/slurm_cluster.sh`` runs slurmctld, two slurmd "nodes", munge and slurmdbd (for ``sacct``).
The fixture starts it once per session (reusing one that is already up), and skips where Slurm or
root is missing, except under CI (CI=true), where that is a failure.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from helpers import REPO, skip_or_fail_in_ci
from slurm_harness import HARNESS, Cluster


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """Start the 2-node cluster for the session (reusing one that is already up) and stop it."""
    if sys.platform != "linux":
        skip_or_fail_in_ci("needs Linux")
    if os.geteuid() != 0:
        skip_or_fail_in_ci("needs root to run slurmctld/slurmd/munged")
    missing = [b for b in ("sbatch", "slurmctld", "slurmd", "munged", "slurmdbd", "mariadbd") if not shutil.which(b)]
    if missing:
        skip_or_fail_in_ci(f"Slurm is not installed (missing {', '.join(missing)}); run tests/ci_setup.sh slurm")
    env = dict(os.environ)
    for key in [k for k in env if k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))]:
        del env[key]  # never inherit an outer allocation
    env.setdefault("MSEG_ROOT", str((REPO.parent / "shared" / "mseg").resolve()))
    already_up = subprocess.run(["bash", str(HARNESS), "status"], env=env, capture_output=True).returncode == 0
    started = subprocess.run(["bash", str(HARNESS), "start"], env=env, capture_output=True, text=True, timeout=180)
    if started.returncode != 0:
        pytest.fail(f"could not start the Slurm test cluster:\n{started.stderr[-2000:]}")
    env["SLURM_CONF"] = started.stdout.strip().split("=", 1)[1]
    try:
        yield Cluster(env)
    finally:
        if not already_up:
            subprocess.run(["bash", str(HARNESS), "stop"], env=env, capture_output=True, timeout=180)


