"""lseg.runtime: the one device / precision / peak-memory choice every entry point makes."""
import subprocess
import sys

import pytest
import torch

from lseg.runtime import PRECISIONS, DeviceError, autocast, autocast_dtype, pick_device


def test_auto_and_cpu_pick_the_cpu_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert pick_device("auto", local_rank=3) == torch.device("cpu")
    assert pick_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match="no CUDA device is visible"):
        pick_device("cuda")


def test_unknown_device_or_precision_is_a_one_line_error():
    with pytest.raises(DeviceError, match=r"device 'tpu' is not one of \['auto', 'cpu', 'cuda'\]"):
        pick_device("tpu")
    with pytest.raises(DeviceError, match=r"precision 'fp8' is not one of \['bf16', 'fp16', 'fp32'\]"):
        autocast_dtype("fp8")


def test_autocast_follows_the_precision_and_fp32_is_plain():
    assert PRECISIONS == {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    cpu = torch.device("cpu")
    for precision, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32)):
        with autocast(cpu, precision):
            assert (a @ b).dtype == dtype, precision


def test_peak_memory_sees_a_large_allocation():
    """The CPU figure is a lifetime high-water mark: a touched tensor larger than that mark must raise it."""
    code = ("import torch; from lseg.runtime import peak_memory_mb as p; d = torch.device('cpu'); "
            "before = p(d); x = torch.ones(int((before + 256) * 2**20 / 4)); print(before, p(d))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    before, after = map(float, out.split())
    assert after >= before + 250, (before, after)
