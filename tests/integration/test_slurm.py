"""Both launchers on a real Slurm cluster (tests/slurm_cluster.sh: 2 nodes on this machine, CPU).

What is checked, on the smoke config shrunk to 60 steps of 32 px crops (gloo, 1 task per node):
1. ``sbatch slurm/train_mseg.sh`` on 2 nodes runs to completion: checkpoints, TensorBoard events,
   the final eval, and both ranks took part. Its final weights are the reference for 2. and 3.
2. Preemption: the same job, preempted by a job in the higher-priority partition, saves, is
   requeued by the script, resumes, and ends with bit-identical weights.
3. ``tools/submit.py --nodes 2``, interrupted by its real time limit: submitit requeues it, it
   resumes, the result is read back through submitit, and the weights are again bit-identical.
4. ``tools/eval_sweep.py --submit`` on the reference run: one job-array task per cell, with the same
   confusion matrices as the sweep run locally.

The tests skip where Slurm or root is missing, except under CI (CI=true), where that is a failure.
"""
from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

pytestmark = pytest.mark.slow

from helpers import REPO  # noqa: E402
HARNESS = REPO / "tests" / "slurm_cluster.sh"
MAX_STEPS = 60
TINY = [  # ~0.7 s per step with 2 ranks on 2 shared cores; startup ~25 s
    f"train.max_steps={MAX_STEPS}", "train.ckpt_every=10", "eval.every=0", "log.every=5",
    "train.batch_size=2", "data.crop_size=32", "data.base_size=36", "data.eval_size=32",
    "data.num_workers=0", "eval.batch_size=2", "eval.max_samples=2", "optim.warmup_steps=2",
]
CPU_JOB = ["--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=0", "--cpus-per-task=1"]
JOB_TIMEOUT_S = 300


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def skip_or_fail(reason: str) -> None:
    """Skip with a visible reason locally; in CI a missing cluster must not pass silently."""
    if in_ci():
        pytest.fail(f"Slurm tests cannot run in CI: {reason}")
    pytest.skip(reason)


# ------------------------------------------------------------------------------------ cluster


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

    def cancel_all(self, *jobs: str) -> None:
        if jobs:
            self.cmd("scancel", *jobs, check=False)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.5)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """Start the 2-node cluster for the session (reusing one that is already up) and stop it."""
    if sys.platform != "linux":
        skip_or_fail("needs Linux")
    if os.geteuid() != 0:
        skip_or_fail("needs root to run slurmctld/slurmd/munged")
    missing = [b for b in ("sbatch", "slurmctld", "slurmd", "munged", "slurmdbd", "mariadbd") if not shutil.which(b)]
    if missing:
        skip_or_fail(f"Slurm is not installed (missing {', '.join(missing)}); run tests/ci_setup_slurm.sh")
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


@pytest.fixture(scope="session")
def data_root(synthetic_root: Path) -> Path:
    """The suite's synthetic MSeg dataset (tests/conftest.py)."""
    return synthetic_root


def overrides(data_root: Path) -> list[str]:
    return [f"data.root={data_root}", *TINY]


def sbatch_train(cluster: Cluster, run_dir: Path, data_root: Path, *sbatch_args: str) -> str:
    return cluster.sbatch(*CPU_JOB, "--time=10", f"--output={run_dir.parent / (run_dir.name + '.sbatch.out')}",
                          *sbatch_args, str(REPO / "slurm" / "train_mseg.sh"),
                          "--config", "configs/smoke.yaml", "--output-dir", str(run_dir), *overrides(data_root))


def final_checkpoint(run_dir: Path) -> dict:
    import torch

    return torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)


def assert_same_weights(run_dir: Path, reference: Path) -> None:
    import torch

    got, want = final_checkpoint(run_dir), final_checkpoint(reference)
    assert got["step"] == want["step"] == MAX_STEPS
    assert got["model"].keys() == want["model"].keys()
    differ = [k for k in want["model"] if not torch.equal(got["model"][k], want["model"][k])]
    assert not differ, f"{len(differ)} tensors differ from the uninterrupted run, e.g. {differ[:3]}"


def job_log(run_dir: Path, job: str) -> str:
    return (run_dir / "slurm" / f"job-{job}.out").read_text()


@pytest.fixture(scope="session")
def reference_run(cluster: Cluster, data_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """An uninterrupted 2-node sbatch run: (run dir, job id)."""
    run_dir = tmp_path_factory.mktemp("sbatch") / "reference"
    job = sbatch_train(cluster, run_dir, data_root)
    try:
        state = cluster.wait_done(job)
    finally:
        cluster.cancel_all(job)
    assert state == "COMPLETED", f"reference job {job} ended {state}:\n{job_log(run_dir, job)[-3000:]}"
    return run_dir, job


# -------------------------------------------------------------------------------------- tests


def test_sbatch_two_nodes_completes(reference_run) -> None:
    run_dir, job = reference_run
    log = job_log(run_dir, job)
    # both tasks started, one per node, and the trainer saw a world of 2
    assert re.search(r"^0: task 0/2 on 127\.0\.0\.1", log, re.M), log[-3000:]
    assert re.search(r"^1: task 1/2 on 127\.0\.0\.2", log, re.M), log[-3000:]
    assert f"from step 0 to {MAX_STEPS} on 2 process(es)" in log
    ckpt = final_checkpoint(run_dir)
    assert ckpt["step"] == MAX_STEPS and ckpt["provenance"]["world_size"] == 2
    assert (run_dir / "checkpoints" / f"step_{MAX_STEPS:08d}.pt").is_file()
    assert (run_dir / "checkpoints" / "index.json").is_file()
    assert (run_dir / "config.yaml").is_file() and (run_dir / "log.txt").is_file()
    events = list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)
    import json

    evals = [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "eval/mIoU" in r]
    assert evals and evals[-1]["step"] == MAX_STEPS
    assert "srun exited with 0" in log


def test_sbatch_preemption_requeues_and_resumes_exactly(cluster: Cluster, data_root: Path, reference_run,
                                                       tmp_path: Path) -> None:
    run_dir = tmp_path / "preempted"
    job = sbatch_train(cluster, run_dir, data_root)
    high = ""
    try:
        wait_for(lambda: (run_dir / "checkpoints" / "step_00000010.pt").exists(), JOB_TIMEOUT_S,
                 "the first checkpoint")
        # a job in the high-priority partition that needs both whole nodes preempts ours
        high = cluster.sbatch("--partition=high", "--nodes=2", "--exclusive", "--gpus-per-node=0",
                              f"--output={tmp_path / 'high.out'}", "--wrap", "sleep 1")
        state = cluster.wait_done(job)
        assert cluster.wait_done(high, timeout=30) == "COMPLETED"
    finally:
        cluster.cancel_all(job, *([high] if high else []))
    log = job_log(run_dir, job)
    assert state == "COMPLETED", f"job {job} ended {state}:\n{log[-3000:]}"
    assert "batch shell got SIGUSR2" in log and "requeueing job" in log, log[-3000:]
    assert "stop signal (SIGUSR2) received" in log  # the trainer saved on the forwarded signal
    resumed = re.search(rf"from step (\d+) to {MAX_STEPS}", log.split(f"job {job} restart 1")[-1])
    assert resumed and 0 < int(resumed.group(1)) < MAX_STEPS, log[-3000:]
    assert_same_weights(run_dir, reference_run[0])


def test_submitit_time_limit_requeues_and_resumes_exactly(cluster: Cluster, data_root: Path, reference_run,
                                                         tmp_path: Path) -> None:
    import submitit

    run_dir = tmp_path / "submitit"
    submit = subprocess.run(
        [sys.executable, str(REPO / "tools" / "submit.py"), "--config", str(REPO / "configs" / "smoke.yaml"),
         "--output-dir", str(run_dir), "--nodes", "2", "--gpus-per-node", "0", "--cpus-per-task", "1",
         "--partition", "debug", "--timeout", "10", "--signal-delay-s", "90", *overrides(data_root)],
        env=cluster.env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert submit.returncode == 0, submit.stderr
    match = re.search(r"submitted job (\d+)", submit.stdout)
    assert match, submit.stdout
    job = match.group(1)
    assert str(run_dir) in submit.stdout and f"{job}_0_log.out" in submit.stdout
    try:
        # Once the first checkpoint is written the trainer is mid-run. Then cut the time limit
        # so that the real time-limit signal (USR2, 90 s before the end) is due at slurmctld's
        # next check (it runs every ~30 s), while leaving more than a minute to save. The ranks
        # are frozen until the signal is pending, so it lands mid-training however fast the
        # machine is; the pause does not change what is computed.
        wait_for(lambda: (run_dir / "checkpoints" / "step_00000010.pt").exists(), JOB_TIMEOUT_S,
                 "the first checkpoint")
        tasks = task_pids(job)
        assert len(tasks) == 2, f"expected 2 trainer processes for job {job}, found {tasks}"
        with frozen(tasks):
            elapsed = _seconds(cluster.cmd("squeue", "-h", "-j", job, "-o", "%M"))
            cluster.cmd("scontrol", "update", f"JobId={job}", f"TimeLimit={math.ceil(elapsed / 60) + 1}")
            wait_for(lambda: all(signal_reached(p) for p in tasks), 90, "the time-limit signal")
        wait_for(lambda: cluster.state(job) == ("PENDING", "BeginTime"), 150, "submitit's requeue")
        # the restarted job gets its full limit back
        cluster.cmd("scontrol", "update", f"JobId={job}", "TimeLimit=10", "StartTime=now+3")
        state = cluster.wait_done(job)
        results = submitit.SlurmJob(folder=run_dir / "submitit" / "%j", job_id=job, tasks=(0, 1)).results()
    finally:
        cluster.cancel_all(job)
    rank0_log = _read(run_dir / "submitit" / job / f"{job}_0_log.err")
    assert state == "COMPLETED", rank0_log[-3000:]
    assert [r["status"] for r in results] == ["completed", "completed"]
    assert [r["step"] for r in results] == [MAX_STEPS, MAX_STEPS]
    assert "this job is timed-out" in rank0_log and f"Requeued job {job}" in rank0_log, rank0_log[-3000:]
    train_log = _read(run_dir / "log.txt")
    assert "stop signal (SIGUSR2) received" in train_log
    resumed = re.findall(rf"from step (\d+) to {MAX_STEPS}", train_log)
    assert len(resumed) == 2 and 10 <= int(resumed[1]) < MAX_STEPS, train_log[-3000:]
    assert_same_weights(run_dir, reference_run[0])


def test_eval_sweep_submit_runs_one_array_task_per_cell(cluster: Cluster, data_root: Path, reference_run,
                                                      tmp_path: Path) -> None:
    """``eval_sweep.py --submit``: a submitit job array, one task per cell, whose confusion matrices are
    exactly those of the same sweep run in one local process."""
    import torch

    from helpers import load_tool

    run_dir, _ = reference_run
    common = ["--run-dir", str(run_dir), "--last", "2", "--datasets", "ade20k-150-relabeled", "--protocols",
              "single", "--max-samples", "2", "--num-workers", "0", "--device", "cpu", f"data.root={data_root}"]
    array_dir, local_dir = tmp_path / "array", tmp_path / "local"
    submit = subprocess.run(
        [sys.executable, str(REPO / "tools" / "eval_sweep.py"), *common, "--output-dir", str(array_dir),
         "--submit", "--partition", "debug", "--gpus-per-node", "0", "--cpus-per-task", "1", "--timeout", "10"],
        env=cluster.env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert submit.returncode == 0, submit.stderr[-3000:]
    tasks = re.findall(r"^  job (\d+_\d+): ", submit.stdout, re.M)
    assert len(tasks) == 2 and len({t.split("_")[0] for t in tasks}) == 1, submit.stdout  # one array, 2 tasks
    try:
        states = [cluster.wait_done(t) for t in tasks]
    finally:
        cluster.cancel_all(*tasks)
    logs = "".join(_read(p) for p in (array_dir / "submitit").glob("*_log.*"))
    assert states == ["COMPLETED", "COMPLETED"], logs[-3000:]
    rows = (array_dir / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 3, rows  # header + one row per task

    assert load_tool("eval_sweep").main([*common, "--output-dir", str(local_dir)]) == 0
    conf = lambda d: {p.name: torch.load(p, weights_only=True)["confusion"]  # noqa: E731
                      for p in (d / "cells").glob("*.conf.pt")}
    array, local = conf(array_dir), conf(local_dir)
    assert len(array) == 2 and array.keys() == local.keys()
    assert all(torch.equal(array[k], local[k]) for k in local)


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _seconds(elapsed: str) -> int:
    """squeue %M ("[days-][hours:]minutes:seconds") -> seconds."""
    days, _, clock = elapsed.rpartition("-")
    total = 0
    for part in clock.split(":"):
        total = total * 60 + int(part)
    return total + int(days or 0) * 86400


def task_pids(job: str) -> list[int]:
    """The job's Python task processes on this machine (found through SLURM_JOB_ID in /proc)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if (Path(argv[0].decode()).name.startswith("python") and b"submitit.core._submit" in argv
                and f"SLURM_JOB_ID={job}".encode() in environ):
            pids.append(int(proc.name))
    return sorted(pids)


def signal_reached(pid: int) -> bool:
    """True once the stopped process got SIGUSR2: pending (bit 12 of ShdPnd/SigPnd), or already
    running again (slurmstepd sends SIGCONT along with job signals), or gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return True
    for line in status:
        key, _, value = line.partition(":")
        if key == "State" and not value.strip().startswith("T"):
            return True
        if key in ("ShdPnd", "SigPnd") and int(value.strip(), 16) & (1 << (signal.SIGUSR2 - 1)):
            return True
    return False


@contextlib.contextmanager
def frozen(pids: list[int]):
    """SIGSTOP the processes for the duration of the block; SIGCONT them whatever happens."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
