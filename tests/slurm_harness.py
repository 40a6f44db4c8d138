"""Client side of the local Slurm test cluster: commands, job states, waiting (plain code, no fixtures)."""
from __future__ import annotations

import subprocess
import time
from typing import Callable

from helpers import REPO

HARNESS = REPO / "tests" / "slurm_cluster.sh"
JOB_TIMEOUT_S = 300


class Cluster:
    """Runs Slurm client commands against the test cluster."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def cmd(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        proc = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout.strip()

    def sbatch(self, *args: str) -> str:
        return self.cmd("sbatch", "--parsable", *args).split(";")[0]

    def state(self, job: str) -> tuple[str, str]:
        """(state, reason) from squeue, or (sacct state, "") once the job has left the queue."""
        line = self.cmd("squeue", "-h", "-j", job, "-o", "%T|%r", check=False)
        if line:
            state, _, reason = line.partition("|")
            return state, reason
        acct = self.cmd("sacct", "-X", "-n", "-P", "-j", job, "-o", "State", check=False)
        return (acct.splitlines()[0].split()[0] if acct else "UNKNOWN"), ""

    def release_if_held(self, job: str, released: dict[str, float]) -> None:
        """A requeued job is held ~121 s (BeginTime): let it start in 3 s.

        Never StartTime=now: a restart in the same second as the requeue is rejected by slurmd and
        the job fails. Release at most every 15 s, since each update moves the start time again.
        """
        state, reason = self.state(job)
        if state == "PENDING" and reason == "BeginTime" and time.time() - released.get(job, 0) > 15:
            self.cmd("scontrol", "update", f"jobid={job}", "StartTime=now+3")
            released[job] = time.time()

    def wait_done(self, job: str, timeout: float = JOB_TIMEOUT_S) -> str:
        """Wait until the job leaves the queue (releasing requeue holds); its final sacct state."""
        released: dict[str, float] = {}
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.release_if_held(job, released)
            state, _ = self.state(job)
            if state not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "SUSPENDED"):
                # sacct lags squeue by a second or two
                time.sleep(2)
                return self.state(job)[0]
            time.sleep(1)
        raise AssertionError(f"job {job} not finished after {timeout} s (state {self.state(job)})")

    def history(self, job: str) -> list[str]:
        """sacct's record of every run of the job (a requeue adds a REQUEUED record)."""
        return [ln.split()[0] for ln in self.cmd("sacct", "-X", "-n", "-P", "-D", "-j", job, "-o", "State").splitlines()]

    def cancel_all(self, *jobs: str) -> None:
        if jobs:
            self.cmd("scancel", *jobs, check=False)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.5)
