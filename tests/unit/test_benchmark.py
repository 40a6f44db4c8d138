"""lseg.bench and tools/benchmark.py: output correctness (columns, JSON records, FLOP and MFU arithmetic,
that the timed step is Trainer.run_step), not speed.

The CLI memory checks run in a subprocess: the CPU memory probe switches glibc to returning freed
memory at once, which should not leak into the rest of the test session.
"""
from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lseg.bench import flops, step, variants
from lseg.bench.memory import MemoryProbe
from lseg.config import ConfigError, load_config
from lseg.distributed import DistInfo
from lseg.engine.trainer import Trainer

from helpers import REPO, load_tool

TOOL = REPO / "tools" / "benchmark.py"
SMOKE = str(REPO / "configs" / "smoke.yaml")
TINY = ["data.crop_size=64", "data.base_size=72"]  # smoke model at 64 px: fast on a busy CPU


@pytest.fixture(scope="module")
def benchmark():
    return load_tool("benchmark")


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _tiny_cfg(tmp_path: Path, *extra: str):
    return load_config(SMOKE, [f"train.output_dir={tmp_path}", "train.batch_size=2", *TINY, *extra])


def test_flop_counter_counts_a_linear_layer_exactly():
    b, n_in, n_out = 4, 16, 8
    layer = torch.nn.Linear(n_in, n_out, bias=False)
    x = torch.randn(b, n_in, requires_grad=True)
    count = flops.count_flops(lambda: layer(x).sum().backward())
    assert count == 2 * b * n_in * n_out * 3  # forward, grad wrt input, grad wrt weight


def test_mfu_and_peak_table():
    assert flops.mfu(2e12, 0.5, 100.0) == pytest.approx(0.04)
    assert flops.mfu(1e12, 1.0, None) is None
    cpu = torch.device("cpu")
    assert flops.peak_tflops(cpu, "bf16") is None
    assert flops.peak_tflops(cpu, "bf16", override=3.5) == 3.5
    table = dict(flops.PEAK_TFLOPS)
    assert table["H100"]["bf16"] == 989.0 and table["A100"]["bf16"] == 312.0
    names = [k for k, _ in flops.PEAK_TFLOPS]
    assert names.index("H100 PCIe") < names.index("H100")  # the more specific name must match first


def test_parse_variants_grid_and_errors():
    base = variants.Variant("fp32", ckpt=False)
    assert variants.parse_variants(None, base) == [base]
    vs = variants.parse_variants(["precision=fp32|bf16,ckpt=off|on", "cl=on"], base)
    assert [v.name for v in vs] == ["fp32", "fp32+ckpt", "bf16", "bf16+ckpt", "fp32+cl"]
    assert variants.parse_variants(["ckpt=on; ckpt=on;compile=on"], base) == [
        variants.Variant("fp32", ckpt=True), variants.Variant("fp32", compile=True)]
    for bad in ("precision=fp8", "ckpt=maybe", "speed=fast", "ckpt"):
        with pytest.raises(ConfigError):
            variants.parse_variants([bad], base)


def test_variant_is_a_config_change_and_nothing_else():
    cfg = load_config(SMOKE)
    v = variants.Variant("bf16", ckpt=True, compile=True, channels_last=True)
    new = v.apply(cfg)
    assert (new.train.precision, new.model.grad_checkpointing, new.train.compile, new.train.channels_last) == (
        "bf16", True, True, True)
    assert variants.base_variant(new) == v and variants.base_variant(cfg) == variants.Variant("fp32")
    assert cfg.train.precision == "fp32" and not cfg.model.grad_checkpointing  # the original is unchanged
    assert new.model.backbone == cfg.model.backbone and new.optim == cfg.optim and new.data == cfg.data


def test_train_flops_are_model_flops_and_leave_grads_alone():
    from lseg.models.lseg import LSegImage

    cfg = load_config(SMOKE, TINY)
    image = LSegImage(cfg.model, 64).train()
    plain = flops.train_flops_per_step(image, 2, 64, 5)
    image.set_grad_checkpointing(True)
    assert flops.train_flops_per_step(image, 2, 64, 5) == plain  # recomputation is not counted
    assert image.backbone.grad_checkpointing  # restored
    assert all(p.grad is None for p in image.parameters())
    assert flops.train_flops_per_step(image, 4, 64, 5) == pytest.approx(2 * plain, rel=0.01)
    # the ViT linear layers alone: 12 blocks x (qkv + proj + 2 MLP) = 12 D^2 MACs/token, x3 for fwd+bwd
    tokens, d = 2 * (1 + (64 // 16) ** 2), 192
    assert plain > 2 * 3 * 12 * tokens * d * d * 12
    parts = flops.saved_activations_mb(image, 2, 64, 5)
    assert {"backbone", "decoder", "logits", "loss", "total"} <= parts.keys()
    assert parts["total"] == pytest.approx(sum(v for k, v in parts.items() if k != "total"))


def test_run_step_reports_its_phases_in_order(tmp_path):
    trainer = Trainer(_tiny_cfg(tmp_path, "train.accum_steps=2"), DistInfo())
    trainer.batch_source = step.repeat_batch(step.synthetic_batch(2, 64, len(trainer.class_names)))
    seen: list[str] = []
    trainer.phase_hook = seen.append
    trainer.run_step()
    assert seen == ["data", "forward", "backward", "data", "forward", "backward", "optimizer", "end"]


def test_timed_step_is_the_trainers_step(tmp_path):
    """Same seed, same batch: the timed step and a plain run_step give bit-identical losses and weights."""
    cfg = _tiny_cfg(tmp_path)
    batch = step.synthetic_batch(2, 64, 194)
    plain, timed = (step.build_trainer(cfg, step.repeat_batch(batch)) for _ in range(2))
    probe = MemoryProbe(timed.device, exact_cpu=False)  # leave glibc as it is in pytest
    split, whole = step.TimedStep(timed, probe), step.TimedStep(timed, probe, split=False)
    recs = [split(), whole()]
    losses = [plain.run_step()["train/loss"] for _ in range(2)]
    assert [r["loss"] for r in recs] == losses
    assert all(torch.equal(a, b) for a, b in zip(plain.params, timed.params))
    assert timed.step == 2 and timed.phase_hook is None
    s, w = recs
    assert s["step_s"] == sum(s[f"{p}_s"] for p in step.PHASES) and min(s[f"{p}_s"] for p in step.PHASES) > 0
    assert {"fwd_held_mb", "act_peak_mb", "step_peak_mb", "abs_peak_mb"} <= s.keys()
    assert set(w) == {"step_s", "step_peak_mb", "abs_peak_mb", "loss"} and w["step_s"] > 0
    assert step.gradient_mb(timed) == sum(p.numel() for p in timed.params) * 4 / 2**20  # fp32 gradients


def test_interleaved_alternates_and_respects_the_time_limit():
    order: list[str] = []

    def contender(name: str, sleep: float = 0.0):
        def fn() -> dict[str, float]:
            order.append(name)
            time.sleep(sleep)
            return {"n": float(len(order))}
        return fn

    res = step.interleaved({"a": contender("a"), "b": contender("b")}, warmup=1, repeats=3)
    assert order == ["a", "b"] * 4 and [len(v) for v in res.values()] == [3, 3]
    assert step.medians(res["a"]) == {"n": 5.0}  # the timed a's are calls 3, 5, 7
    order.clear()
    res = step.interleaved({"a": contender("a", 0.02), "b": contender("b", 0.02)}, warmup=0, repeats=1000,
                           time_limit_s=0.1)
    assert 1 <= len(res["a"]) == len(res["b"]) <= 3  # a round takes >= 40 ms: the third crosses 0.1 s
    res = step.interleaved({"a": contender("a", 0.02)}, warmup=0, repeats=5, time_limit_s=1e-9)
    assert len(res["a"]) == 1  # one round always runs


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
    assert "fp32+ckpt" in res.stdout and "load average" in res.stdout and "Trainer.run_step" in res.stdout
    (rec,) = _records(out)
    assert rec["command"] == "train-step" and rec["batch_size"] == 2 and rec["crop_size"] == 64
    assert rec["flops_per_step"] > 0 and rec["machine"]["cpu_count"] >= 1 and rec["cpu_memory_exact"]
    assert rec["timed_steps"] == 2 and rec["phase_split"] and rec["grad_mb"] > 0
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
        # act_peak holds the gradients backward creates (the trainer frees them at each step's start)
        assert med["act_peak_mb"] >= med["fwd_held_mb"] > 0 and med["abs_peak_mb"] > med["act_peak_mb"]
    plain, ckpt = rec["variants"]
    assert ckpt["median"]["fwd_held_mb"] < plain["median"]["fwd_held_mb"]  # checkpointing saves less
    assert ckpt["steps"][0]["loss"] == plain["steps"][0]["loss"]  # same weights, same batch, same math


@pytest.mark.slow
def test_train_step_in_process(tmp_path, synthetic_root, capsys, benchmark):
    """Synthetic batch with a peak given, then the real loader without one (MFU n/a), then whole steps only."""
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
    assert benchmark.main(["train-step", *common, "--steps", "50", "--time-limit", "0.001", "--no-phase-split",
                           "train.accum_steps=2"]) == 0
    assert "--time-limit 0.001 s reached" in capsys.readouterr().out
    synthetic, loader, whole = _records(out)
    assert not synthetic["cpu_memory_exact"] and [v["name"] for v in synthetic["variants"]] == ["fp32", "fp32+ckpt"]
    for v in synthetic["variants"]:
        assert v["mfu"] == pytest.approx(synthetic["flops_per_step"] / v["median"]["step_s"] / 1.5e12)
        assert v["images_per_s"] == pytest.approx(2 / v["median"]["step_s"])
    assert loader["data"] == "loader" and loader["variants"][0]["mfu"] is None
    assert loader["variants"][0]["median"]["data_s"] > 0
    assert whole["timed_steps"] == 1 and not whole["phase_split"] and "data_s" not in whole["variants"][0]["median"]
    assert whole["flops_per_step"] == 2 * synthetic["flops_per_step"]  # two micro-steps per optimizer step
    assert whole["variants"][0]["images_per_s"] == pytest.approx(4 / whole["variants"][0]["median"]["step_s"])


def test_cpu_memory_probe_sees_a_known_allocation():
    code = ("import torch; from lseg.bench.memory import MemoryProbe; p = MemoryProbe(torch.device('cpu')); "
            "p.start(); x = torch.ones(64 * 2**18); del x; print(p.cpu_exact, p.peak_mb(), p.held_mb())")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    exact, peak, after = res.stdout.split()
    if exact != "True":
        pytest.skip("RSS high-water mark cannot be reset here (not Linux/glibc)")
    assert 60 <= float(peak) <= 80  # 64 MiB tensor, plus a little interpreter noise
    assert float(after) < 20  # the 64 MiB went back to the OS; a few MB of interpreter growth may remain


def test_overhead_cli_compares_trainer_and_bare_loop(tmp_path, synthetic_root, capsys, benchmark):
    out = tmp_path / "ov.jsonl"
    # a config override before the flags: overrides are allowed anywhere
    assert benchmark.main(["overhead", f"data.root={synthetic_root}", "--config", SMOKE, "--device", "cpu",
                           "--batch-size", "2", "--warmup", "1", "--steps", "2", "--json-out", str(out), *TINY]) == 0
    text = capsys.readouterr().out
    assert "trainer" in text and "bare" in text and "overhead:" in text
    (rec,) = _records(out)
    assert len(rec["trainer_s"]) == len(rec["bare_s"]) == 2 and rec["crop_size"] == 64
    assert rec["ratio"] == pytest.approx(statistics.median(rec["trainer_s"]) / statistics.median(rec["bare_s"]))
    assert rec["overhead_pct"] == pytest.approx(100 * (rec["ratio"] - 1)) and rec["ratio"] > 0


def test_trainer_takes_batches_from_the_injected_source(tmp_path):
    trainer = Trainer(_tiny_cfg(tmp_path, "data.root=/nonexistent"), DistInfo())  # the loader is never built
    batch = step.synthetic_batch(2, 64, len(trainer.class_names))
    trainer.batch_source = step.repeat_batch(batch)
    out = trainer.run_step()
    assert trainer.step == 1 and trainer.samples_in_epoch == 2 and math.isfinite(out["train/loss"])


@pytest.mark.parametrize("argv", [
    ["train-step", "--steps", "0"], ["train-step", "--warmup", "-1"], ["train-step", "--batch-size", "two"],
    ["train-step", "--peak-tflops", "0"], ["train-step", "--time-limit", "-5"], ["train-step", "--num-workers", "-1"],
    ["overhead", "--steps", "-2"], ["data", "--workers", "0", "-1"], ["data", "--batches", "0"],
    ["data", "--repeats", "0"], ["data", "--size", "64", "0"], ["data", "--gpu-img-s", "0"], ["data", "--headroom", "x"],
])
def test_bad_flag_values_are_one_line_errors(argv, benchmark, capsys):
    with pytest.raises(SystemExit) as exc:
        benchmark.main(argv)
    assert exc.value.code == 2
    flag = next(a for a in reversed(argv) if a.startswith("--"))
    last = capsys.readouterr().err.strip().splitlines()[-1]  # argparse: usage line, then one error line
    assert f"error: argument {flag}: " in last and ("must be >" in last or "expected a" in last)


def test_bad_variants_and_missing_gpu_are_one_line_errors(benchmark, capsys, tmp_path):
    out = tmp_path / "never.jsonl"
    assert benchmark.main(["train-step", "--config", SMOKE, "--variants", "precision=fp8", "--json-out", str(out)]) == 2
    assert capsys.readouterr().err == "error: variant precision 'fp8': expected one of ['bf16', 'fp16', 'fp32']\n"
    if not torch.cuda.is_available():
        assert benchmark.main(["overhead", "--config", SMOKE, "--device", "cuda"]) == 2
        assert capsys.readouterr().err.startswith("error: device cuda requested but no CUDA device is visible")
    assert out.read_text() == ""  # --json-out was checked first, nothing recorded


def test_data_cli_with_given_and_generated_data(tmp_path, synthetic_root, capsys, benchmark):
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
