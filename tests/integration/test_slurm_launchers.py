"""Fast checks of the launchers that need no cluster (the real runs are in integration/test_slurm.py):
flag validation, the dry-run job, a user error inside a submitit job, and SIGTERM reaching every
process of a trainer (loader workers included), as Slurm sends it."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from lseg.checkpoint_io import load_checkpoint

from helpers import REPO, SMOKE, base_overrides, steps_logged  # noqa: E402
SCRIPT = REPO / "slurm" / "train_mseg.sh"


def submit(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools" / "submit.py"), *args],
                          capture_output=True, text=True, timeout=120, cwd=REPO, env=env)


def test_submit_rejects_a_config_typo_in_one_line(tmp_path: Path) -> None:
    proc = submit("--config", "configs/smoke.yaml", "--output-dir", str(tmp_path / "run"), "--dry-run",
                  "train.max_stpes=3")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: unknown config key 'train.max_stpes' (did you mean 'train.max_steps'?)"]
    assert not (tmp_path / "run").exists()


def test_submit_dry_run_shows_the_job_without_submitting(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = submit("--config", "configs/lseg_vitl16_480_mseg.yaml", "--output-dir", str(run), "--nodes", "2",
                  "--partition", "gpu", "--account", "proj", "--timeout", "600", "--dry-run", "optim.lr=0.002")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --cpus-per-task=10", "#SBATCH --partition=gpu", "#SBATCH --account=proj",
                 "#SBATCH --time=600", "#SBATCH --requeue", "#SBATCH --signal=USR2@300",
                 f"#SBATCH --output={run}/submitit/%j/%j_0_log.out"):
        assert line in out, f"missing {line!r} in:\n{out}"
    assert "export OMP_NUM_THREADS=${OMP_NUM_THREADS:-10}" in out
    srun = [ln for ln in out.splitlines() if ln.startswith("srun ")]  # a dead rank ends the job at once
    assert len(srun) == 1 and "--kill-on-bad-exit=1 --cpus-per-task=10" in srun[0], out
    assert re.search(r"^  lr: 0\.002$", out, re.M)  # the resolved config, overrides applied
    assert not run.exists()  # nothing submitted, nothing written


def test_submit_cpu_job_has_one_task_per_node_and_no_gpus(tmp_path: Path) -> None:
    proc = submit("--config", "configs/smoke.yaml", "--output-dir", str(tmp_path), "--gpus-per-node", "0",
                  "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "#SBATCH --ntasks-per-node=1" in proc.stdout and "--gpus-per-node" not in proc.stdout


def test_sbatch_script_parses_and_requeues_by_default() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    directives = re.findall(r"^#SBATCH (\S+)", SCRIPT.read_text(), re.M)
    assert "--requeue" in directives and "--open-mode=append" in directives
    assert any(re.fullmatch(r"--signal=B:USR2@\d+", d) for d in directives)
    assert "--ntasks-per-node=8" in directives and "--gpus-per-node=8" in directives


def test_submit_refuses_bad_flags_in_one_line_before_anything_is_written(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = submit("--config", "configs/smoke.yaml", "--output-dir", str(run), "--nodes", "0", "--dry-run")
    assert proc.returncode == 2 and "#SBATCH" not in proc.stdout and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "python tools/submit.py: error: argument --nodes: must be > 0, got 0"
    proc = submit("--config", "configs/smoke.yaml", "--output-dir", str(run), "--ntasks-per-node", "16", "--dry-run")
    assert proc.returncode == 2 and "#SBATCH" not in proc.stdout
    assert proc.stderr.strip().splitlines() == [
        "error: --ntasks-per-node 16 > --gpus-per-node 8: each process needs a GPU of its own"]
    assert not run.exists()
    no_slurm = {**os.environ, "PATH": str(Path(sys.executable).parent)}  # no sbatch/srun on it
    proc = submit("--config", "configs/smoke.yaml", "--output-dir", str(run), env=no_slurm)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: no Slurm on this machine (sbatch/srun not found); --local runs the job here instead"]
    assert not run.exists()


def test_user_error_inside_a_submitit_job_is_one_line_and_not_retried(tmp_path: Path) -> None:
    """The config is valid, the data root is not: the job itself fails, as the trainer reports it."""
    run, missing = tmp_path / "run", tmp_path / "no_such_root"
    proc = submit("--config", str(SMOKE), "--output-dir", str(run), "--local", "--gpus-per-node", "0",
                  *base_overrides(tmp_path), f"data.root={missing}")
    line = f"error (rank 0): data.root not found: {missing}"
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(line) and "Traceback" not in proc.stderr, proc.stderr
    (job_dir,) = [d for d in (run / "submitit").iterdir() if d.name.isdigit()]
    job_err = (job_dir / f"{job_dir.name}_0_log.err").read_text()
    errors = [ln for ln in job_err.splitlines() if ln.startswith("error")]
    assert len(errors) == 1 and errors[0].startswith(line) and "Traceback" not in job_err, job_err
    job_out = (job_dir / f"{job_dir.name}_0_log.out").read_text()
    assert job_out.count("Starting with JobEnvironment") == 1, job_out  # ran once: not retried
    assert not list(job_dir.glob("*_result.pkl"))  # no result: submitit reports the job as failed


def test_sigterm_to_every_process_saves_and_stops_with_loader_workers_alive(tmp_path: Path, synthetic_root) -> None:
    """What Slurm does on scancel: SIGTERM to the whole process group. The loader workers survive it,
    the trainer saves at the next step and exits 143 (stopped: no launcher requeues that).
    Overrides come before --output-dir on purpose: key=value is allowed anywhere."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "lseg.train", "--config", str(SMOKE), *base_overrides(synthetic_root),
           "data.num_workers=2", "train.max_steps=500", "--output-dir", str(run)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not steps_logged(_read(run / "log.txt")) or len(_group(proc.pid)) < 3:
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.1)
        before = steps_logged(_read(run / "log.txt"))[-1]
        os.killpg(proc.pid, signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr and "DataLoader worker" not in stderr, stderr
    saved = load_checkpoint(run / "checkpoints" / "last.pt")["step"]
    assert before < saved < 500
    assert f"stop signal (SIGTERM) received: saving at step {saved} and ending the run (no requeue)" in stdout


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _group(pgid: int) -> list[int]:
    """Live processes of a process group (the trainer and its loader workers)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids
