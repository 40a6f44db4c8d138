"""Fast checks of the launchers that need no cluster (the real runs are in tests/test_slurm.py)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from helpers import REPO  # noqa: E402
SCRIPT = REPO / "slurm" / "train_mseg.sh"


def submit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools" / "submit.py"), *args],
                          capture_output=True, text=True, timeout=120, cwd=REPO)


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
