"""tools/benchmark.py and lseg.bench: output correctness (columns, JSON records, FLOP and MFU arithmetic), not speed.

The train-step and memory checks run in a subprocess: the CPU memory probe switches glibc to
returning freed memory at once, which should not leak into the rest of the test session.
"""
from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lseg import bench
from lseg.config import ConfigError, load_config

from helpers import REPO  # noqa: E402
TOOL = REPO / "tools" / "benchmark.py"
SMOKE = str(REPO / "configs" / "smoke.yaml")
TINY = ["data.crop_size=64", "data.base_size=72"]  # smoke model at 64 px: fast on a busy CPU

sys.path.insert(0, str(REPO / "tools"))
import benchmark  # noqa: E402


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_flop_counter_counts_a_linear_layer_exactly():
    b, n_in, n_out = 4, 16, 8
    layer = torch.nn.Linear(n_in, n_out, bias=False)
    x = torch.randn(b, n_in, requires_grad=True)
    flops = bench.count_flops(lambda: layer(x).sum().backward())
    assert flops == 2 * b * n_in * n_out * 3  # forward, grad wrt input, grad wrt weight


def test_mfu_and_peak_table():
    assert bench.mfu(2e12, 0.5, 100.0) == pytest.approx(0.04)
    assert bench.mfu(1e12, 1.0, None) is None
    cpu = torch.device("cpu")
    assert bench.peak_tflops(cpu, "bf16") is None
    assert bench.peak_tflops(cpu, "bf16", override=3.5) == 3.5
    assert dict(bench.PEAK_TFLOPS)["H100"]["bf16"] == 989.0 and dict(bench.PEAK_TFLOPS)["A100"]["bf16"] == 312.0
    names = [k for k, _ in bench.PEAK_TFLOPS]
    assert names.index("H100 PCIe") < names.index("H100")  # the more specific name must match first


def test_parse_variants_grid_and_errors():
    base = bench.Variant("fp32", ckpt=False)
    assert bench.parse_variants(None, base) == [base]
    vs = bench.parse_variants(["precision=fp32|bf16,ckpt=off|on", "cl=on"], base)
    assert [v.name for v in vs] == ["fp32", "fp32+ckpt", "bf16", "bf16+ckpt", "fp32+cl"]
    assert bench.parse_variants(["ckpt=on; ckpt=on;compile=on"], base) == [
        bench.Variant("fp32", ckpt=True), bench.Variant("fp32", compile=True)]
    for bad in ("precision=fp8", "ckpt=maybe", "speed=fast", "ckpt"):
        with pytest.raises(ConfigError):
            bench.parse_variants([bad], base)


def test_train_flops_are_model_flops_and_leave_grads_alone():
    from lseg.models.lseg import LSegImage

    cfg = load_config(SMOKE, TINY)
    image = LSegImage(cfg.model, 64).train()
    plain = bench.train_flops_per_step(image, 2, 64, 5)
    image.set_grad_checkpointing(True)
    assert bench.train_flops_per_step(image, 2, 64, 5) == plain  # recomputation is not counted
    assert image.backbone.grad_checkpointing  # restored
    assert all(p.grad is None for p in image.parameters())
    assert bench.train_flops_per_step(image, 4, 64, 5) == pytest.approx(2 * plain, rel=0.01)
    # the ViT linear layers alone: 12 blocks x (qkv + proj + 2 MLP) = 12 D^2 MACs/token, x3 for fwd+bwd
    tokens, d = 2 * (1 + (64 // 16) ** 2), 192
    assert plain > 2 * 3 * 12 * tokens * d * d * 12
    parts = bench.saved_activations_mb(image, 2, 64, 5)
    assert {"backbone", "decoder", "logits", "loss", "total"} <= parts.keys()
    assert parts["total"] == pytest.approx(sum(v for k, v in parts.items() if k != "total"))


@pytest.mark.slow
def test_train_step_cli_table_and_record(tmp_path, synthetic_root):
    out = tmp_path / "ts.jsonl"
    cmd = [sys.executable, str(TOOL), "train-step", "--config", SMOKE, "--device", "cpu", "--batch-size", "2",
           "--warmup", "1", "--steps", "2", "--variants", "ckpt=off;ckpt=on", "--peak-tflops", "1.5",
           "--json-out", str(out), f"data.root={synthetic_root}", *TINY]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert res.returncode == 0, res.stderr[-2000:]
    for col in ("variant", "img/s", "step_ms", "data_ms", "fwd_ms", "bwd_ms", "opt_ms", "act_peak_MB",
                "peak_MB", "TFLOP/s", "MFU_%"):
        assert col in res.stdout
    assert "fp32+ckpt" in res.stdout and "load average" in res.stdout
    (rec,) = _records(out)
    assert rec["command"] == "train-step" and rec["batch_size"] == 2 and rec["crop_size"] == 64
    assert rec["flops_per_step"] > 0 and rec["machine"]["cpu_count"] >= 1
    assert [v["name"] for v in rec["variants"]] == ["fp32", "fp32+ckpt"]
    for v in rec["variants"]:
        med = v["median"]
        assert len(v["steps"]) == 2
        for s in v["steps"]:
            phases = s["data_s"] + s["forward_s"] + s["backward_s"] + s["optimizer_s"]
            assert s["step_s"] == pytest.approx(phases, rel=1e-6)
        assert v["images_per_s"] == pytest.approx(2 / med["step_s"])
        assert v["mfu"] == pytest.approx(rec["flops_per_step"] / med["step_s"] / 1.5e12)
        assert v["peak_tflops"] == 1.5 and math.isfinite(med["loss"])
        assert med["act_peak_mb"] >= 0 and med["abs_peak_mb"] > med["act_peak_mb"]


@pytest.mark.slow
def test_train_step_in_process(tmp_path, synthetic_root, capsys):
    """Synthetic batch with a peak given, then the real loader without one (MFU n/a)."""
    out = tmp_path / "ts.jsonl"
    common = ["--config", SMOKE, "--device", "cpu", "--batch-size", "2", "--warmup", "1", "--json-out", str(out),
              "--no-exact-cpu-memory", f"data.root={synthetic_root}", *TINY]  # keep glibc as it is in pytest
    assert benchmark.main(["train-step", *common, "--steps", "2", "--variants", "ckpt=off;ckpt=on",
                           "--peak-tflops", "1.5"]) == 0
    text = capsys.readouterr().out
    for col in ("variant", "img/s", "step_ms", "data_ms", "fwd_ms", "bwd_ms", "opt_ms", "act_peak_MB", "peak_MB",
                "TFLOP/s", "MFU_%", "fp32+ckpt", "load average"):
        assert col in text
    assert benchmark.main(["train-step", *common, "--steps", "1", "--data", "loader", "--num-workers", "0"]) == 0
    assert "n/a" in capsys.readouterr().out  # MFU on CPU without --peak-tflops
    synthetic, loader = _records(out)
    assert not synthetic["cpu_memory_exact"] and [v["name"] for v in synthetic["variants"]] == ["fp32", "fp32+ckpt"]
    for v in synthetic["variants"]:
        assert v["mfu"] == pytest.approx(synthetic["flops_per_step"] / v["median"]["step_s"] / 1.5e12)
        assert v["images_per_s"] == pytest.approx(2 / v["median"]["step_s"])
    assert loader["data"] == "loader" and loader["variants"][0]["mfu"] is None
    assert loader["variants"][0]["median"]["data_s"] > 0


def test_cpu_memory_probe_sees_a_known_allocation():
    code = ("import torch; from lseg.bench import MemoryProbe; p = MemoryProbe(torch.device('cpu')); "
            "p.start(); x = torch.ones(64 * 2**18); del x; print(p.cpu_exact, p.peak_mb(), p.held_mb())")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    exact, peak, after = res.stdout.split()
    if exact != "True":
        pytest.skip("RSS high-water mark cannot be reset here (not Linux/glibc)")
    assert 60 <= float(peak) <= 80  # 64 MiB tensor, plus a little interpreter noise
    assert float(after) < 20  # the 64 MiB went back to the OS; a few MB of interpreter growth may remain


def test_overhead_cli_compares_trainer_and_bare_loop(tmp_path, synthetic_root, capsys):
    out = tmp_path / "ov.jsonl"
    assert benchmark.main(["overhead", "--config", SMOKE, "--device", "cpu", "--batch-size", "2", "--warmup", "1",
                           "--steps", "2", "--json-out", str(out), f"data.root={synthetic_root}", *TINY]) == 0
    text = capsys.readouterr().out
    assert "trainer" in text and "bare" in text and "overhead:" in text
    (rec,) = _records(out)
    assert len(rec["trainer_s"]) == len(rec["bare_s"]) == 2
    assert rec["ratio"] == pytest.approx(statistics.median(rec["trainer_s"]) / statistics.median(rec["bare_s"]))
    assert rec["overhead_pct"] == pytest.approx(100 * (rec["ratio"] - 1)) and rec["ratio"] > 0


def test_trainer_takes_batches_from_the_injected_source(tmp_path, synthetic_root):
    from lseg.distributed import DistInfo
    from lseg.engine.trainer import Trainer

    cfg = load_config(SMOKE, [f"data.root={synthetic_root}", f"train.output_dir={tmp_path}", "train.batch_size=2",
                              *TINY])
    trainer = Trainer(cfg, DistInfo())
    batch = bench.synthetic_batch(2, 64, len(trainer.class_names))
    trainer.batch_source = bench.repeat_batch(batch)
    out = trainer.run_step()
    assert trainer.step == 1 and trainer._loader_iter is None and math.isfinite(out["train/loss"])


def test_data_cli_with_given_and_generated_data(tmp_path, synthetic_root, capsys):
    out = tmp_path / "data.jsonl"
    assert benchmark.main(["data", "--config", SMOKE, "--data-root", str(synthetic_root), "--workers", "0",
                           "--batches", "2", "--warmup", "1", "--batch-size", "2", "--repeats", "2",
                           "--gpu-img-s", "100", "--headroom", "1.5", "--json-out", str(out)]) == 0
    assert benchmark.main(["data", "--config", SMOKE, "--size", "64", "80", "--workers", "0", "--batches", "2",
                           "--warmup", "1", "--batch-size", "2", "--repeats", "1", "--json-out", str(out)]) == 0
    text = capsys.readouterr().out
    for col in ("workers", "img/s", "img/s/worker", "img/cpu_s", "workers per GPU"):
        assert col in text
    given, generated = _records(out)
    assert given["rows"][0]["img/s"] > 0 and len(given["results"][0]) == 2
    assert given["workers_needed"] == math.ceil(100 * 1.5 / given["per_worker_img_s"])
    assert generated["size"] == [64, 80] and generated["rows"][0]["img/cpu_s"] > 0
