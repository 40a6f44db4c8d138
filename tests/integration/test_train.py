"""The trainer as users run it: real subprocesses, real signals, real TensorBoard files."""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lseg.checkpoint_io import load_checkpoint, save_atomic

from helpers import SMOKE, assert_same_weights, base_overrides, final_model, metrics, run_train, train_cmd


def test_short_run_writes_the_run_dir(tmp_path, synthetic_root):
    out = tmp_path / "run"
    run_train(out, synthetic_root, "train.max_steps=4", "train.ckpt_every=2", "eval.every=2")
    assert (out / "config.yaml").is_file() and (out / "log.txt").is_file()
    assert len((out / "class_names.txt").read_text().splitlines()) == 194
    index = json.loads((out / "checkpoints/index.json").read_text())
    assert [e["step"] for e in index["checkpoints"]] == [2, 4]
    assert index["best"]["metric"] == "eval/mIoU"
    ckpt = load_checkpoint(out / "checkpoints/last.pt")
    assert ckpt["step"] == 4 and ckpt["format"] == "lseg-hpc"
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "sampler", "config", "provenance"} <= ckpt.keys()
    assert ckpt["provenance"]["world_size"] == 1 and len(ckpt["rng"]) == 1
    rows = metrics(out)
    train_rows = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    assert all(k in train_rows[0] for k in ("train/lr", "train/img_per_s", "train/data_wait", "train/mem",
                                            "train/grad_norm", "epoch", "eta_s"))
    evals = [r for r in rows if "eval/mIoU" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert 0.0 <= evals[-1]["eval/mIoU"] <= 1.0 and 0.0 <= evals[-1]["eval/pixel_acc"] <= 1.0
    assert not any(k.endswith(("IoU_seen", "IoU_unseen", "hIoU")) for k in evals[-1])  # only with held-out classes
    # the model loads back through the public API and predicts at the trained class count
    from lseg.models import load_model
    model = load_model(out / "checkpoints/last.pt")
    logits = model(torch.zeros(1, 3, 64, 48), ["dog", "grass"])
    assert logits.shape == (1, 2, 64, 48)


def test_tensorboard_events_hold_scalars_images_and_config(tmp_path, synthetic_root):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    run_train(out, synthetic_root, "train.max_steps=3", "train.ckpt_every=3", "eval.every=0",
              "eval.num_image_panels=2")
    acc = EventAccumulator(str(out / "tb"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in ("train/loss", "train/lr", "train/grad_norm", "train/img_per_s", "train/data_wait", "train/mem",
                "eval/mIoU", "eval/pixel_acc"):
        assert tag in tags["scalars"], tag
    assert any(t.startswith("eval_iou/") for t in tags["scalars"])
    assert {"eval/panel_0", "eval/panel_1"} <= set(tags["images"])
    assert "config/text_summary" in tags["tensors"]
    jsonl = {r["step"]: r for r in metrics(out) if "train/loss" in r}
    tb_loss = {e.step: e.value for e in acc.Scalars("train/loss")}
    assert sorted(tb_loss) == [1, 2, 3]
    for step, value in tb_loss.items():
        assert value == pytest.approx(jsonl[step]["train/loss"], rel=1e-6)
    final_eval = [r for r in metrics(out) if "eval/mIoU" in r][-1]
    assert acc.Scalars("eval/mIoU")[-1].value == pytest.approx(final_eval["eval/mIoU"], rel=1e-6)
    img = acc.Images("eval/panel_0")[0]
    assert img.width == 3 * 64 and img.height > 64  # input | truth | prediction, plus a legend


def test_non_finite_steps_are_skipped_then_abort(tmp_path, synthetic_root):
    out = tmp_path / "run"
    proc = run_train(out, synthetic_root, "train.max_steps=10", "model.logit_scale=1e39",
                     "train.max_nonfinite_steps=3", expect=2)
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "3 non-finite steps in a row at step 3 (train.max_nonfinite_steps=3)" in proc.stderr
    assert proc.stdout.count("step skipped") == 3


def test_resume_refuses_a_different_world_size(tmp_path, synthetic_root):
    out = tmp_path / "run"
    run_train(out, synthetic_root, "train.max_steps=2", "train.ckpt_every=2", "eval.every=0")
    ckpt_path = out / "checkpoints/step_00000002.pt"
    state = load_checkpoint(ckpt_path)
    state["provenance"]["world_size"] = 4
    save_atomic(state, ckpt_path)
    proc = run_train(out, synthetic_root, "train.max_steps=4", "eval.every=0", expect=2)
    assert "was written by 4 processes, this run has 1" in proc.stderr
    assert "train.allow_world_size_change=true" in proc.stderr


def _wait_for_log(out: Path, pattern: str, proc: subprocess.Popen, since: int = 0,
                  timeout: float = 300) -> re.Match:
    """First match of ``pattern`` in log.txt at or after character offset ``since`` (i.e. logged by
    this process); fails at once if the process exits first."""
    deadline = time.time() + timeout
    log = out / "log.txt"
    while time.time() < deadline:
        found = re.search(pattern, log.read_text()[since:]) if log.exists() else None
        if found:
            return found
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError(f"{pattern!r} not in {log} after {timeout} s")


def _wait_for_step(out: Path, step: int, proc: subprocess.Popen, since: int = 0) -> None:
    _wait_for_log(out, rf"step {step}/", proc, since)


@pytest.mark.slow
def test_exact_resume_after_kill9_and_signal(tmp_path, synthetic_root):
    """Interrupted runs (kill -9 at random points, SIGUSR2) end bit-identical to an uninterrupted one."""
    steps = ["train.max_steps=16", "train.ckpt_every=3", "eval.every=8", "train.ema_decay=0.9",
             "data.num_workers=1"]
    ref = tmp_path / "ref"
    run_train(ref, synthetic_root, *steps)
    reference = load_checkpoint(ref / "checkpoints/last.pt")

    # SIGUSR2: saves at the next step boundary and exits 75 (requeue), then resumes to the end.
    sig = tmp_path / "sig"
    proc = subprocess.Popen(train_cmd(sig, synthetic_root, *steps), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for_step(sig, 5, proc)
    proc.send_signal(signal.SIGUSR2)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 75, stderr
    stopped_at = load_checkpoint(sig / "checkpoints/last.pt")["step"]
    assert 5 <= stopped_at < 16 and f"saving at step {stopped_at}" in stdout
    run_train(sig, synthetic_root, *steps)
    assert_same_weights(final_model(sig), reference["model"])

    # kill -9 at random moments, resume each time, then let the run complete. Each kill is placed relative
    # to this process's own progress (a random step at or after the next checkpoint boundary, plus a random
    # fraction of a step, so some land mid-save), never by wall-clock alone: the schedule is the same on a
    # fast or a slow machine, every kill hits a live process, and offsets past the boundary force resumes.
    rng = random.Random(1234)
    step_s = statistics.median(2 / r["train/img_per_s"] for r in metrics(ref) if "train/img_per_s" in r)
    killed = tmp_path / "killed"
    log = killed / "log.txt"
    kills = 0
    for _ in range(4):
        since = len(log.read_text()) if log.exists() else 0
        proc = subprocess.Popen(train_cmd(killed, synthetic_root, *steps), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        start_step = int(_wait_for_log(killed, r"from step (\d+) to", proc, since).group(1))
        if start_step >= 12:  # too close to the end to kill it before it completes on a fast machine
            break
        target = min(13, (start_step // 3 + 1) * 3 + rng.randint(0, 1))
        _wait_for_step(killed, target, proc, since)
        time.sleep(rng.uniform(0.0, 1.0) * step_s)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
    else:
        proc = subprocess.Popen(train_cmd(killed, synthetic_root, *steps), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()[-2000:]
    assert kills >= 3, kills
    assert log.read_text().count("resumed from") == kills, log.read_text()[-3000:]  # every relaunch resumed
    state = load_checkpoint(killed / "checkpoints/last.pt")
    assert_same_weights(state["model"], reference["model"])
    assert_same_weights(state["ema"], reference["ema"])
    assert_same_weights(state["optimizer"]["state"][0], reference["optimizer"]["state"][0])


# Runs that must match another split of the same global batch: BatchNorm statistics depend on the
# per-process batch (so they are frozen), and SGD's update is linear in the gradient (so summation-order
# rounding stays rounding-sized).
SAME_GLOBAL_BATCH = ["train.max_steps=3", "train.ckpt_every=3", "eval.every=0", "train.freeze_bn=true",
                     "optim.name=sgd"]


def train_losses(out: Path) -> list[float]:
    return [r["train/loss"] for r in metrics(out) if "train/loss" in r]


def assert_close_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_gradient_accumulation_equals_larger_batch(tmp_path, synthetic_root):
    big, acc = tmp_path / "big", tmp_path / "acc"
    run_train(big, synthetic_root, *SAME_GLOBAL_BATCH, "train.batch_size=2")
    run_train(acc, synthetic_root, *SAME_GLOBAL_BATCH, "train.batch_size=1", "train.accum_steps=2")
    assert train_losses(acc) == pytest.approx(train_losses(big), rel=1e-5)
    assert_close_weights(final_model(big), final_model(acc))


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_on_the_same_global_batch(tmp_path, synthetic_root):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    run_train(single, synthetic_root, *SAME_GLOBAL_BATCH, "train.batch_size=2")
    cmd = train_cmd(ddp, synthetic_root, *SAME_GLOBAL_BATCH, "train.batch_size=1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"] + cmd[1:]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert train_losses(ddp) == pytest.approx(train_losses(single), rel=1e-5)
    ckpt = load_checkpoint(ddp / "checkpoints/last.pt")
    assert ckpt["provenance"]["world_size"] == 2 and len(ckpt["rng"]) == 2
    assert_close_weights(final_model(single), ckpt["model"])


@pytest.mark.slow
def test_init_from_a_training_checkpoint_then_resume_wins(tmp_path, synthetic_root):
    """A new run starts from another run's weights at step 0; once it has its own checkpoints, resume wins."""
    src_run, run = tmp_path / "src", tmp_path / "ft"
    short = ["train.ckpt_every=2", "eval.every=0"]
    run_train(src_run, synthetic_root, "train.max_steps=2", "train.ema_decay=0.5", *short)
    src = src_run / "checkpoints/step_00000002.pt"
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    proc = run_train(run, synthetic_root, "train.max_steps=2", f"train.init_from={src}", "train.init_ema=true", *short)
    assert f"initialised from {src.resolve()} (sha256 {sha}, ema weights" in proc.stdout
    rows = metrics(run)
    assert [r for r in rows if "init_from" in r] == [
        {"step": 0, "epoch": 0, "max_steps": 2, "init_from": str(src.resolve()), "init_from_sha256": sha}]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2]  # step 0, fresh schedule
    want = {"path": str(src.resolve()), "sha256": sha, "weights": "ema", "excluded": []}
    assert load_checkpoint(run / "checkpoints/last.pt")["provenance"]["init_from"] == want

    proc = run_train(run, synthetic_root, "train.max_steps=3", f"train.init_from={src}", "train.init_ema=true", *short)
    assert f"resuming from {run / 'checkpoints/step_00000002.pt'}; train.init_from ignored" in proc.stdout
    assert "initialised from" not in proc.stdout
    ckpt = load_checkpoint(run / "checkpoints/last.pt")
    assert ckpt["step"] == 3 and ckpt["provenance"]["init_from"] == want


@pytest.mark.slow
def test_init_from_under_two_process_ddp_gives_every_rank_the_source_weights(tmp_path, synthetic_root):
    """Real gloo DDP: ranks that start from different weights all end with exactly the source's tensors."""
    src_run = tmp_path / "src"
    run_train(src_run, synthetic_root, "train.max_steps=1", "eval.every=0")
    src = src_run / "checkpoints/last.pt"
    overrides = [*base_overrides(synthetic_root), f"train.output_dir={tmp_path / 'ft'}", f"train.init_from={src}"]
    script = tmp_path / "init_ranks.py"
    script.write_text(f"""
import hashlib, json, torch, torch.distributed as dist
from lseg.config import load_config
from lseg.distributed import detect, init_distributed
from lseg.engine.trainer import Trainer
info = init_distributed("gloo", 120, info=detect())
trainer = Trainer(load_config({str(SMOKE)!r}, {overrides!r}), info, torch.device("cpu"))
with torch.no_grad():  # each rank starts from other weights, so equality afterwards comes from the load
    for t in trainer.model.state_dict().values():
        if t.is_floating_point():
            t.add_(info.rank + 1)
trainer.init_from_weights()
digest = hashlib.sha256(b"".join(t.contiguous().numpy().tobytes() for t in trainer.model.state_dict().values()))
out = [None, None]
dist.all_gather_object(out, [digest.hexdigest(), trainer.init_source["sha256"], len(trainer.optimizer.state)])
if info.rank == 0:
    print("RESULT " + json.dumps(out))
dist.destroy_process_group()
""")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1].splitlines()[0])
    source = load_checkpoint(src)["model"]
    want = hashlib.sha256(b"".join(t.contiguous().numpy().tobytes() for t in source.values())).hexdigest()
    file_sha = hashlib.sha256(src.read_bytes()).hexdigest()
    assert result == [[want, file_sha, 0], [want, file_sha, 0]]


@pytest.mark.slow
@pytest.mark.parametrize("layout, num_classes", [("foodseg103", 104), ("folder", 12)])
def test_fine_tune_an_mseg_run_into_another_dataset_layout(tmp_path, synthetic_root, layout, num_classes):
    """MSeg smoke run -> train.init_from into FoodSeg103 / a user's folder with that dataset's own label space."""
    from lseg.config import load_config
    from lseg.data.synthetic import make_synthetic
    from lseg.distributed import DistInfo
    from lseg.engine.trainer import Trainer

    src_run = tmp_path / "mseg"
    run_train(src_run, synthetic_root, "train.max_steps=2", "eval.every=0")
    src = src_run / "checkpoints/last.pt"
    root = tmp_path / layout
    make_synthetic(root, layout, num_train=4, num_val=2, size=(64, 80))
    out = tmp_path / "ft"
    out.mkdir()
    cfg = load_config(SMOKE, [*base_overrides(root), f"train.output_dir={out}", "train.max_steps=2", "eval.every=0",
                              f"data.train_datasets=[{layout}]", f"data.val_datasets=[{layout}]",
                              f"data.label_space={layout}", f"train.init_from={src}"])
    trainer = Trainer(cfg, DistInfo())
    at_first_step: dict[str, torch.Tensor] = {}

    def snapshot(phase: str) -> None:
        if not at_first_step:  # the first "data" phase of step 1: the weights the run starts from
            at_first_step.update({k: v.clone() for k, v in trainer.model.state_dict().items()})

    trainer.phase_hook = snapshot
    result = trainer.train()
    source = load_checkpoint(src)["model"]
    assert_same_weights(at_first_step, source)
    assert result["status"] == "completed" and result["step"] == 2
    assert 0.0 <= result["metrics"][f"eval/{layout}/mIoU"] <= 1.0
    assert len((out / "class_names.txt").read_text().splitlines()) == num_classes
    final = load_checkpoint(out / "checkpoints/last.pt")
    assert final["provenance"]["init_from"]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert any(not torch.equal(final["model"][k], source[k]) for k in source if k.startswith("image."))


@pytest.mark.slow
def test_resnet101_encoder_trains_checkpointed_channels_last(tmp_path, synthetic_root):
    """The zero-shot ResNet-101 image encoder through the real trainer (activation checkpointing,
    channels_last, evaluation), and back through load_model with its recorded backbone."""
    out = tmp_path / "run"
    run_train(out, synthetic_root, "model.backbone=resnet101", "model.grad_checkpointing=true",
              "train.channels_last=true", "train.max_steps=2", "train.ckpt_every=2", "eval.every=2")
    assert [r["step"] for r in metrics(out) if "eval/mIoU" in r] == [2]
    from lseg.models import load_model
    model = load_model(out / "checkpoints/last.pt")
    assert model.config.backbone == "resnet101" and model.image.input_norm is not None
    assert model(torch.zeros(1, 3, 64, 48), ["dog", "grass"]).shape == (1, 2, 64, 48)
