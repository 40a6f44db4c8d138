"""tools/eval_sweep.py as a command line, without a trained model (fast): flags, --list, --submit --dry-run."""
from __future__ import annotations

import re
import sys

from lseg.cli import parse_args
from lseg.launch.executor import slurm_parameters

from helpers import ADE, SMOKE, load_tool

sweep = load_tool("eval_sweep")


def test_overrides_anywhere():
    args = parse_args(sweep.build_parser(), ["--checkpoints", "a.pt", "--scales", "0.5", "1.0", "data.root=/d",
                                             "--output-dir", "o", "eval.batch_size=2"])
    assert args.scales == [0.5, 1.0] and args.overrides == ["data.root=/d", "eval.batch_size=2"]


def test_scheduler_flags_are_the_launchers_with_sweep_defaults():
    parser = sweep.build_parser()
    a = parser.parse_args(["--checkpoints", "a.pt", "--output-dir", "o", "--partition", "gpu",
                           "--gpus-per-node", "2", "--timeout", "2:00:00", "--mem", "32G", "--array-parallelism", "4"])
    params = slurm_parameters(a, "eval_sweep")
    assert params["partition"] == "gpu" and params["ntasks_per_node"] == 2 and params["gpus_per_node"] == 2
    assert params["time"] == 120 and params["mem"] == "32G" and params["array_parallelism"] == 4
    assert "account" not in params
    d = parser.parse_args(["--checkpoints", "a.pt", "--output-dir", "o"])
    assert (d.gpus_per_node, d.timeout) == (1, 240)  # one GPU and four hours per cell unless told otherwise


def _files(tmp_path):
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    for step in (10, 20):
        (ckpts / f"step_{step:08d}.pt").write_bytes(b"")  # --list and --dry-run never open them
    return tmp_path / "run"


def test_list_prints_every_cell_and_whether_it_is_done(tmp_path, capsys):
    run = _files(tmp_path)
    out = tmp_path / "sweep"
    argv = ["--run-dir", str(run), "--config", str(SMOKE), "--datasets", ADE, "--protocols", "single", "whole",
            "--output-dir", str(out), "--list"]
    assert sweep.main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and all(ln.startswith("pending  run/step_000000") for ln in lines)
    first_id = re.search(r"\[(.+)\]$", lines[0]).group(1)
    (out / "cells").mkdir(parents=True)
    (out / "cells" / f"{first_id}.json").write_text("{}")
    assert sweep.main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("done     run/step_00000010 | ade20k-150-relabeled | universal | single")
    assert sum(ln.startswith("pending") for ln in lines) == 3
    assert not (out / "results.csv").exists()  # listing writes nothing


def test_submit_dry_run_prints_one_task_per_pending_cell(tmp_path, capsys):
    run = _files(tmp_path)
    argv = ["--run-dir", str(run), "--last", "1", "--config", str(SMOKE), "--datasets", ADE,
            "--output-dir", str(tmp_path / "sweep"), "--submit", "--dry-run", "--partition", "gpu",
            "data.num_workers=0"]
    assert sweep.main(argv) == 0
    out = capsys.readouterr().out
    assert "1 pending cell(s) -> job array" in out and "#SBATCH --partition=gpu" in out
    (task,) = [ln for ln in out.splitlines() if ln.startswith("  would run: ")]
    assert task.startswith(f"  would run: {sys.executable} {sweep.__file__}")
    assert "--submit" not in task and "--dry-run" not in task and "data.num_workers=0" in task
    assert re.search(r" --cell run_step_00000020__ade20k-150-relabeled__universal__single-[0-9a-f]{12}$", task)
    assert not (tmp_path / "sweep").exists()
