"""Process-group initialisation for Slurm, torchrun and single-process runs.

One function, :func:`init_distributed`, picks the environment in this order: Slurm task (``srun``
sets ``SLURM_PROCID``/``SLURM_NTASKS``), torchrun (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``), else a
single process. Under Slurm the rendezvous address is the first host of ``SLURM_JOB_NODELIST``,
expanded here so that compute nodes do not need ``scontrol``; the port is derived from the job id
so that two jobs sharing a node do not collide. A partial environment is an error, not a guess.
"""
from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist


class DistributedEnvError(RuntimeError):
    """The launcher environment is partial or inconsistent."""


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    source: str = "single"  # slurm | torchrun | single
    master_addr: str = ""
    master_port: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def first_host(nodelist: str) -> str:
    """First hostname of a Slurm hostlist: ``gpu[003-005,7],cpu1`` -> ``gpu003``."""
    nodelist = nodelist.strip()
    if not nodelist:
        raise DistributedEnvError("SLURM_JOB_NODELIST is empty")
    m = re.match(r"([^,\[]*)(\[([^\]]*)\])?", nodelist)
    if m is None or not (m.group(1) or m.group(3)):
        raise DistributedEnvError(f"cannot parse SLURM_JOB_NODELIST={nodelist!r}")
    prefix, ranges = m.group(1), m.group(3)
    if ranges is None:
        return prefix
    first = ranges.split(",")[0].split("-")[0].strip()
    if not first:
        raise DistributedEnvError(f"cannot parse SLURM_JOB_NODELIST={nodelist!r}")
    # Brackets may follow a suffix-less prefix and be followed by more text ("n[1-2]-ib").
    rest = nodelist[m.end():].split(",")[0]
    return prefix + first + rest


def port_from_job_id(job_id: str) -> int:
    """A port in [20000, 60000) that is the same on every task of a job."""
    digits = re.sub(r"\D", "", job_id) or "0"
    return 20000 + int(digits) % 40000


def _int_env(env: dict, name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise DistributedEnvError(f"{name}={env[name]!r} is not an integer") from None


def detect(env: dict | None = None, port: int | None = None) -> DistInfo:
    """Read the launcher environment without touching torch.distributed."""
    env = dict(os.environ if env is None else env)
    torchrun_keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env and "RANK" not in env:
        if "SLURM_JOB_NODELIST" not in env and "SLURM_NODELIST" not in env:
            raise DistributedEnvError("Slurm task without SLURM_JOB_NODELIST: cannot find the master host")
        rank, world = _int_env(env, "SLURM_PROCID"), _int_env(env, "SLURM_NTASKS")
        local = _int_env(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0
        addr = env.get("MASTER_ADDR") or first_host(env.get("SLURM_JOB_NODELIST") or env["SLURM_NODELIST"])
        if port is None:
            port = int(env["MASTER_PORT"]) if "MASTER_PORT" in env else port_from_job_id(
                env.get("SLURM_JOB_ID", "0"))
        info = DistInfo(rank, world, local, "slurm", addr, port)
    elif any(k in env for k in torchrun_keys):
        missing = [k for k in torchrun_keys if k not in env]
        if missing:
            raise DistributedEnvError(
                f"partial torchrun environment: {', '.join(missing)} not set "
                f"(have {', '.join(k for k in torchrun_keys if k in env)})")
        info = DistInfo(_int_env(env, "RANK"), _int_env(env, "WORLD_SIZE"), _int_env(env, "LOCAL_RANK"),
                        "torchrun", env["MASTER_ADDR"], port or _int_env(env, "MASTER_PORT"))
    else:
        return DistInfo()
    if not 0 <= info.rank < info.world_size:
        raise DistributedEnvError(f"rank {info.rank} is outside world size {info.world_size} ({info.source})")
    return info


def init_distributed(backend: str = "auto", timeout_s: int = 1800, port: int | None = None,
                     device_type: str = "cpu", info: DistInfo | None = None) -> DistInfo:
    """Initialise the default process group if the environment asks for more than one process.

    ``info``: what the caller's :func:`detect` found (the environment is then not read again).
    """
    info = info or detect(port=port)
    if info.world_size == 1 or dist.is_initialized():
        return info
    if backend == "auto":
        backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank % max(torch.cuda.device_count(), 1))
    dist.init_process_group(
        backend=backend,
        init_method=f"tcp://{info.master_addr}:{info.master_port}",
        rank=info.rank,
        world_size=info.world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    return info


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t
