"""Launcher environment parsing (Slurm, torchrun, single) without starting processes."""
import pytest

from lseg.distributed import DistributedEnvError, detect, first_host, port_from_job_id


@pytest.mark.parametrize("nodelist, host", [
    ("node1", "node1"),
    ("gpu[003-005,7]", "gpu003"),
    ("gpu[12,3-4],cpu1", "gpu12"),
    ("127.0.0.[1-2]", "127.0.0.1"),
    ("a-[01-02]-ib,b1", "a-01-ib"),
    ("n1,n2", "n1"),
])
def test_first_host_of_slurm_nodelist(nodelist, host):
    assert first_host(nodelist) == host


def test_slurm_env_gives_rank_world_and_job_derived_port():
    env = {"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
           "SLURM_JOB_NODELIST": "gpu[010-011]", "SLURM_JOB_ID": "123456"}
    info = detect(env)
    assert (info.rank, info.world_size, info.local_rank, info.source) == (3, 8, 1, "slurm")
    assert info.master_addr == "gpu010"
    assert info.master_port == 20000 + 123456 % 40000 == port_from_job_id("123456")
    assert 20000 <= port_from_job_id("99999999") < 60000


def test_torchrun_env_and_partial_env_error():
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1234"}
    info = detect(env)
    assert (info.rank, info.world_size, info.master_addr, info.master_port, info.source) == (1, 2, "h", 1234, "torchrun")
    with pytest.raises(DistributedEnvError, match="partial torchrun environment: MASTER_ADDR, MASTER_PORT not set"):
        detect({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    with pytest.raises(DistributedEnvError, match="rank 2 is outside world size 2"):
        detect({**env, "RANK": "2"})


def test_single_process_default():
    info = detect({})
    assert (info.rank, info.world_size, info.source) == (0, 1, "single")
