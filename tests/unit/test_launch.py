"""lseg.launch: the one scheduler flag group, its validation, and the one executor factory."""
from __future__ import annotations

import argparse

import pytest

from lseg.launch import LaunchError, add_scheduler_args, check_scheduler_args, make_executor, sbatch_script
from lseg.launch.executor import REPO, slurm_parameters
from lseg.launch.flags import timeout_minutes


def parse(*argv: str, **kwargs) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tool")
    add_scheduler_args(parser, **kwargs)
    return parser.parse_args(list(argv))


def test_defaults_fit_the_real_recipe_and_a_tool_may_change_only_the_gpus():
    a = parse()
    assert (a.nodes, a.gpus_per_node, a.ntasks_per_node, a.cpus_per_task, a.mem, a.timeout) == (1, 8, None, 10, None, 1440)
    assert (a.signal_delay_s, a.max_requeues, a.cluster, a.job_name) == (300, 30, "slurm", None)
    assert not hasattr(a, "array_parallelism")
    b = parse(gpus_per_node=1, job_arrays=True)
    assert b.gpus_per_node == 1 and b.array_parallelism == 64 and b.timeout == 1440
    assert parse("--local").cluster == "local"


def test_timeout_forms():
    assert [timeout_minutes(t) for t in ("90", "1:30:00", "0:00:30", "1-00:00", "1-2", "2-03:04:05")] == \
        [90, 90, 1, 1440, 1560, 2 * 1440 + 3 * 60 + 4 + 1]


@pytest.mark.parametrize("argv, message", [
    (["--nodes", "0"], "argument --nodes: must be > 0, got 0"),
    (["--gpus-per-node", "-1"], "argument --gpus-per-node: must be >= 0, got -1"),
    (["--cpus-per-task", "0"], "argument --cpus-per-task: must be > 0, got 0"),
    (["--ntasks-per-node", "0"], "argument --ntasks-per-node: must be > 0, got 0"),
    (["--nodes", "two"], "argument --nodes: expected an integer, got 'two'"),
    (["--timeout", "2:00"], "argument --timeout: cannot read '2:00': give minutes, HH:MM:SS or D-HH:MM:SS "
                            "(Slurm reads A:B as minutes:seconds)"),
    (["--timeout", "0"], "argument --timeout: must be at least one minute, got '0'"),
    (["--timeout", "1h"], "argument --timeout: cannot read '1h'"),
    (["--signal-delay-s", "-1"], "argument --signal-delay-s: must be >= 0, got -1"),
    (["--max-requeues", "-1"], "argument --max-requeues: must be >= 0, got -1"),
    (["--mem", "64"], "argument --mem: cannot read '64': give a size with a unit, e.g. 64G (0 = all of it)"),
    (["--mem", "lots"], "argument --mem: cannot read 'lots'"),
    (["--partition", "gpu debug"], "argument --partition: expected one word without spaces, got 'gpu debug'"),
    (["--job-name", ""], "argument --job-name: expected one word without spaces, got ''"),
    (["--comment", "a\n#SBATCH --qos=top"], "argument --comment: expected one non-empty line"),
    (["--cluster", "pbs"], "argument --cluster: invalid choice: 'pbs'"),
])
def test_every_flag_is_validated(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        parse(*argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err.splitlines()[-1]


@pytest.mark.parametrize("argv, message", [
    (["--ntasks-per-node", "16"], "--ntasks-per-node 16 > --gpus-per-node 8: each process needs a GPU of its own"),
    (["--timeout", "5", "--signal-delay-s", "300"],
     "--signal-delay-s 300 is not shorter than --timeout (5 min): the job would be told to stop as soon as it starts"),
    (["--local", "--nodes", "2"], "--local runs on this machine only: --nodes must be 1, got 2"),
])
def test_rules_between_flags_are_one_line_errors(argv, message, tmp_path):
    args = parse(*argv)
    for build in (check_scheduler_args, lambda a: make_executor(a, tmp_path, "t"), lambda a: sbatch_script(a, tmp_path, "t")):
        with pytest.raises(LaunchError) as exc:
            build(args)
        assert str(exc.value) == message
    assert not list(tmp_path.iterdir())  # refused before anything was written
    check_scheduler_args(parse("--ntasks-per-node", "4", "--gpus-per-node", "0"))  # CPU jobs: any count


def test_slurm_parameters_are_the_sbatch_script_environment():
    a = parse("--nodes", "2", "--partition", "gpu", "--account", "proj", "--timeout", "12:00:00", "--mem", "200g",
              "--comment", "lseg run")
    assert slurm_parameters(a, "lseg") == {
        "job_name": "lseg", "nodes": 2, "ntasks_per_node": 8, "gpus_per_node": 8, "cpus_per_task": 10,
        "time": 720, "signal_delay_s": 300, "mem": "200G", "partition": "gpu", "account": "proj",
        "comment": "lseg run", "additional_parameters": {"requeue": True},
        "srun_args": ["--kill-on-bad-exit=1", "--cpus-per-task=10"],
        "setup": [f"export PYTHONPATH={REPO}${{PYTHONPATH:+:$PYTHONPATH}}",
                  "export OMP_NUM_THREADS=${OMP_NUM_THREADS:-10}"],
    }
    cpu = slurm_parameters(parse("--gpus-per-node", "0", "--job-name", "mine", job_arrays=True), "lseg")
    assert "gpus_per_node" not in cpu and cpu["ntasks_per_node"] == 1 and cpu["job_name"] == "mine"
    assert cpu["array_parallelism"] == 64


def test_sbatch_script_kills_the_step_when_a_rank_dies(tmp_path):
    script = sbatch_script(parse("--nodes", "2"), tmp_path / "%j", "lseg")
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=8", "#SBATCH --signal=USR2@300",
                 "#SBATCH --requeue", "#SBATCH --time=1440"):
        assert line in script.splitlines(), script
    srun = [ln for ln in script.splitlines() if ln.startswith("srun ")]
    assert len(srun) == 1 and "--kill-on-bad-exit=1 --cpus-per-task=10" in srun[0], script


def test_local_executor_runs_one_task_per_gpu_that_is_here(tmp_path):
    import submitit
    import torch

    executor = make_executor(parse("--local", "--timeout", "7", "--signal-delay-s", "30"), tmp_path / "%j", "t")
    assert isinstance(executor, submitit.LocalExecutor)
    gpus = min(8, torch.cuda.device_count())
    assert executor.parameters["tasks_per_node"] == max(gpus, 1) and executor.parameters["gpus_per_node"] == gpus
    assert executor.parameters["timeout_min"] == 7 and executor.parameters["signal_delay_s"] == 30
