"""Both launchers on a real Slurm cluster (tests/slurm_cluster.sh: 2 nodes on this machine, CPU).

What is checked, on the smoke config shrunk to 60 steps of 32 px crops (gloo, 1 task per node):
1. ``sbatch slurm/train_mseg.sh`` on 2 nodes runs to completion: checkpoints, TensorBoard events,
   the final eval, and both ranks took part. Its final weights are the reference for the others.
2. Preemption: the same job, preempted by a job in the higher-priority partition, saves, is
   requeued by the script, resumes, and ends with bit-identical weights.
3. ``tools/submit.py --nodes 2``, interrupted by its real time limit: submitit requeues it, it
   resumes, the result is read back through submitit, and the weights are again bit-identical.
4. The signal contract, for both launchers, with loader workers: ``scancel --signal=USR2`` saves and
   requeues; ``scancel`` saves at the step in flight and ends the job (CANCELLED, never requeued);
   a new job on the same run dir resumes from that save and ends bit-identical.
5. A rank killed with ``kill -9`` while the other one is frozen ends the job within seconds, for
   both launchers (only ``srun --kill-on-bad-exit`` can end the frozen one).
6. ``tools/eval_sweep.py --submit`` on the reference run: one job-array task per cell, with the same
   confusion matrices as the sweep run locally.
7. ``tools/eval_zeroshot.py --submit`` with the reference run's checkpoint: one job-array task per fold,
   with the same counts as the folds scored locally.

The tests skip where Slurm or root is missing, except under CI (CI=true), where that is a failure.
"""
from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

from helpers import REPO, steps_logged  # noqa: E402
from slurm_harness import JOB_TIMEOUT_S, Cluster, wait_for  # noqa: E402 - the `cluster` fixture: integration/conftest.py
MAX_STEPS = 60
TINY = [  # ~0.7 s per step with 2 ranks on 2 shared cores; startup ~25 s
    f"train.max_steps={MAX_STEPS}", "train.ckpt_every=10", "eval.every=0", "log.every=5",
    "train.batch_size=2", "data.crop_size=32", "data.base_size=36", "data.eval_size=32",
    "data.num_workers=0", "eval.batch_size=2", "eval.max_samples=2", "optim.warmup_steps=2",
]
CPU_JOB = ["--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=0", "--cpus-per-task=1"]


@pytest.fixture(scope="session")
def data_root(synthetic_root: Path) -> Path:
    """The suite's synthetic MSeg dataset (tests/conftest.py)."""
    return synthetic_root


def overrides(data_root: Path) -> list[str]:
    return [f"data.root={data_root}", *TINY]


def sbatch_train(cluster: Cluster, run_dir: Path, data_root: Path, *train_args: str) -> str:
    """``sbatch slurm/train_mseg.sh`` on 2 nodes (CPU); the job id."""
    return cluster.sbatch(*CPU_JOB, "--time=10", f"--output={run_dir.parent / (run_dir.name + '.sbatch.out')}",
                          str(REPO / "slurm" / "train_mseg.sh"), "--config", "configs/smoke.yaml",
                          "--output-dir", str(run_dir), *overrides(data_root), *train_args)


def submitit_train(cluster: Cluster, run_dir: Path, data_root: Path, *train_args: str) -> str:
    """``tools/submit.py`` on 2 nodes (CPU); the job id."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "submit.py"), "--config", str(REPO / "configs" / "smoke.yaml"),
         "--output-dir", str(run_dir), "--nodes", "2", "--gpus-per-node", "0", "--cpus-per-task", "1",
         "--partition", "debug", "--timeout", "10", "--signal-delay-s", "90", *overrides(data_root), *train_args],
        env=cluster.env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    match = re.search(r"submitted job (\d+)", proc.stdout)
    assert match, proc.stdout
    assert str(run_dir) in proc.stdout and f"{match.group(1)}_0_log.out" in proc.stdout
    return match.group(1)


LAUNCHERS = {"sbatch": sbatch_train, "submitit": submitit_train}


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
    """The sbatch script's log (batch shell and every rank), or submitit's rank-0 stdout + stderr."""
    if (run_dir / "slurm").is_dir():
        return _read(run_dir / "slurm" / f"job-{job}.out")
    return "".join(_read(run_dir / "submitit" / job / f"{job}_0_log.{ext}") for ext in ("out", "err"))


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
    job = submitit_train(cluster, run_dir, data_root)
    try:
        # Once the first checkpoint is written the trainer is mid-run. Then cut the time limit
        # so that the real time-limit signal (USR2, 90 s before the end) is due at slurmctld's
        # next check (it runs every ~30 s), while leaving more than a minute to save. The ranks
        # are frozen until the signal is pending, so it lands mid-training however fast the
        # machine is; the pause does not change what is computed.
        wait_for(lambda: (run_dir / "checkpoints" / "step_00000010.pt").exists(), JOB_TIMEOUT_S,
                 "the first checkpoint")
        tasks = list(rank_pids(job).values())
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


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_usr2_requeues_scancel_saves_and_ends_and_a_new_job_resumes_exactly(
        launcher: str, cluster: Cluster, data_root: Path, reference_run, tmp_path: Path) -> None:
    """The signal contract of both launchers. Loader workers run too: Slurm signals them as well."""
    run_dir, start = tmp_path / launcher, LAUNCHERS[launcher]
    log = run_dir / "log.txt"
    settings = ("data.num_workers=1", "log.every=1")  # neither changes what is computed
    job = start(cluster, run_dir, data_root, *settings)
    again = ""
    try:
        # scancel --signal=USR2 (what Slurm sends before the time limit): save, requeue, resume
        wait_for(lambda: (run_dir / "checkpoints" / "step_00000010.pt").exists(), JOB_TIMEOUT_S,
                 "the first checkpoint")
        cluster.cmd("scancel", "--signal=USR2", job)
        wait_for(lambda: cluster.state(job) == ("PENDING", "BeginTime"), 120, "the requeue")
        cluster.cmd("scontrol", "update", f"JobId={job}", "StartTime=now+3")
        wait_for(lambda: len(steps_after_start(_read(log), 2)) > 0, JOB_TIMEOUT_S, "the resumed run's first step")
        # scancel: save the step in flight and end the job, never requeued
        before = steps_logged(_read(log))[-1]
        cluster.cmd("scancel", job)
        state = cluster.wait_done(job)
        history = cluster.history(job)
        cancelled_log = job_log(run_dir, job)
        saved = final_checkpoint(run_dir)["step"]
        # a new job on the same run dir resumes from that save
        again = start(cluster, run_dir, data_root, *settings)
        final_state = cluster.wait_done(again)
    finally:
        cluster.cancel_all(job, *([again] if again else []))
    text = _read(log)
    assert "stop signal (SIGUSR2) received" in text and "exiting for requeue" in text, text[-3000:]
    assert (state, history) == ("CANCELLED", ["REQUEUED", "CANCELLED"]), (state, history, cancelled_log[-3000:])
    assert before < saved < MAX_STEPS, (before, saved)
    assert f"stop signal (SIGTERM) received: saving at step {saved} and ending the run (no requeue)" in text
    if launcher == "sbatch":
        assert cancelled_log.count("=== requeueing job") == 1, cancelled_log[-3000:]  # for USR2 only
        assert "batch shell got SIGTERM" in cancelled_log and "stopped, not requeueing" in cancelled_log
    assert final_state == "COMPLETED", job_log(run_dir, again)[-3000:]
    assert re.findall(rf"from step (\d+) to {MAX_STEPS}", text)[-1] == str(saved)
    assert_same_weights(run_dir, reference_run[0])


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_a_dead_rank_ends_the_job_within_seconds(launcher: str, cluster: Cluster, data_root: Path,
                                                 tmp_path: Path) -> None:
    """kill -9 of rank 1 while rank 0 is frozen: only srun --kill-on-bad-exit can end rank 0."""
    run_dir = tmp_path / launcher
    job = LAUNCHERS[launcher](cluster, run_dir, data_root)
    try:
        wait_for(lambda: steps_logged(_read(run_dir / "log.txt")), JOB_TIMEOUT_S, "the first steps")
        ranks = rank_pids(job)
        assert sorted(ranks) == [0, 1], ranks
        with frozen([ranks[0]]):
            os.kill(ranks[1], signal.SIGKILL)
            killed = time.time()
            state = cluster.wait_done(job, timeout=120)
            seconds = time.time() - killed
    finally:
        cluster.cancel_all(job)
    assert (state, cluster.history(job)) == ("FAILED", ["FAILED"]), job_log(run_dir, job)[-3000:]
    assert seconds < 30, seconds


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
    _run_two_task_array(cluster, "eval_sweep.py", [*common, "--output-dir", str(array_dir)], array_dir)
    rows = (array_dir / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 3, rows  # header + one row per task

    assert load_tool("eval_sweep").main([*common, "--output-dir", str(local_dir)]) == 0
    conf = lambda d: {p.name: torch.load(p, weights_only=True)["confusion"]  # noqa: E731
                      for p in (d / "cells").glob("*.conf.pt")}
    array, local = conf(array_dir), conf(local_dir)
    assert len(array) == 2 and array.keys() == local.keys()
    assert all(torch.equal(array[k], local[k]) for k in local)


def test_eval_zeroshot_submit_runs_one_array_task_per_fold(cluster: Cluster, reference_run, tmp_path: Path) -> None:
    """``eval_zeroshot.py --submit``: a submitit job array, one task per fold, each fold's counts equal to
    the same folds scored in one local process."""
    import json

    from lseg.zeroshot.synthetic import write_synthetic

    from helpers import load_tool

    run_dir, _ = reference_run
    root = tmp_path / "hsnet"
    write_synthetic(root, benchmarks=["pascal-5i"], folds=(0, 1), episodes=3, train_images=0, size=24)
    common = ["--benchmark", "pascal-5i", "--checkpoint", str(run_dir / "checkpoints/last.pt"), "--data-root",
              str(root), "--folds", "0", "1", "--protocol", "official", "--max-episodes", "3", "--image-size", "32",
              "--device", "cpu"]
    array_dir, local_dir = tmp_path / "array", tmp_path / "local"
    _run_two_task_array(cluster, "eval_zeroshot.py", [*common, "--output-dir", str(array_dir)], array_dir)

    assert load_tool("eval_zeroshot").main([*common, "--output-dir", str(local_dir)]) == 0
    counts = lambda d: {(r["fold"], r["protocol"]): (r["mIoU"], r["FB_IoU"], r["episodes"])  # noqa: E731
                        for r in (json.loads(p.read_text()) for p in (d / "folds").glob("*.json"))}
    array, local = counts(array_dir), counts(local_dir)
    assert sorted(array) == [(0, "official"), (1, "official")] and array == local


def _run_two_task_array(cluster: Cluster, tool: str, args: list[str], array_dir: Path) -> None:
    """Submit ``tools/<tool> ARGS --submit`` to the debug partition: one job array of two tasks, both COMPLETED."""
    submit = subprocess.run(
        [sys.executable, str(REPO / "tools" / tool), *args, "--submit", "--partition", "debug",
         "--gpus-per-node", "0", "--cpus-per-task", "1", "--timeout", "10"],
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


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def steps_after_start(log: str, start: int) -> list[int]:
    """Steps logged in ``log.txt`` since the ``start``-th time a trainer started (1 = the first)."""
    parts = re.split(r"training \S+ from step \d+ to \d+", log)
    return steps_logged(parts[start]) if len(parts) > start else []


def _seconds(elapsed: str) -> int:
    """squeue %M ("[days-][hours:]minutes:seconds") -> seconds."""
    days, _, clock = elapsed.rpartition("-")
    total = 0
    for part in clock.split(":"):
        total = total * 60 + int(part)
    return total + int(days or 0) * 86400


def rank_pids(job: str) -> dict[int, int]:
    """{rank: pid} of the job's trainer processes on this machine, under either launcher.

    Found through SLURM_JOB_ID in /proc; loader workers (children of a trainer, same command line
    and environment) are left out.
    """
    found: dict[int, tuple[int, int]] = {}  # pid -> (rank, parent pid)
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            environ = dict(e.split(b"=", 1) for e in (proc / "environ").read_bytes().split(b"\0") if b"=" in e)
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if (Path(argv[0].decode(errors="replace")).name.startswith("python")
                and (b"submitit.core._submit" in argv or b"lseg.train" in argv)
                and environ.get(b"SLURM_JOB_ID") == job.encode()):
            found[int(proc.name)] = (int(environ[b"SLURM_PROCID"]), parent)
    return {rank: pid for pid, (rank, parent) in found.items() if parent not in found}


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
