"""Training in bf16 and fp16 as users run it (CPU autocast supports both): GradScaler overflow and resume."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lseg.checkpoint_io import load_checkpoint

from helpers import assert_same_weights, metrics, run_train, train_cmd

# One image per dataset and batch 2: every step sees the same two images (no rescaling, no flip), so
# the loss follows the optimisation rather than the data.
ONE_BATCH = ["data.scale_range=[1.0,1.0]", "data.hflip=false", "eval.every=0", "train.max_steps=12"]
INIT_SCALE = 2.0**20  # the smoke model's fp16 gradients overflow above 2**14 at the start


@pytest.fixture(scope="module")
def one_batch_root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one-batch")
    subprocess.run([sys.executable, "tools/make_synthetic_mseg.py", "--output", str(out), "--num-train", "1",
                    "--num-val", "1", "--size", "64", "80", "--num-classes", "4"],
                   check=True, capture_output=True, cwd=Path(__file__).resolve().parents[2])
    return out


def train_rows(out: Path) -> list[dict]:
    return [r for r in metrics(out) if "train/loss" in r]


@pytest.mark.slow
def test_bf16_training_loss_falls(tmp_path, one_batch_root):
    out = tmp_path / "bf16"
    run_train(out, one_batch_root, *ONE_BATCH, "train.precision=bf16")
    rows = train_rows(out)
    losses = [r["train/loss"] for r in rows]
    assert len(losses) == 12 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0], losses
    assert rows[-1]["train/nonfinite_steps"] == 0 and "train/loss_scale" not in rows[-1]  # no scaler in bf16


@pytest.mark.slow
def test_fp16_overflow_skips_the_step_lowers_the_scale_and_resume_restores_the_scaler(tmp_path, one_batch_root):
    """A huge initial loss scale overflows: those steps are skipped (no optimizer step), each halves the
    scale, ``train/loss_scale`` records it, then training proceeds. A run that crashes after the step-8
    checkpoint and resumes ends with the same weights, optimizer and scaler state."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    fp16 = [*ONE_BATCH, "train.precision=fp16", f"train.fp16_init_scale={INIT_SCALE}", "train.ckpt_every=8"]
    ref = tmp_path / "ref"
    run_train(ref, one_batch_root, *fp16)
    rows = train_rows(ref)
    skipped = rows[-1]["train/nonfinite_steps"]
    assert 1 <= skipped < 8, [r["train/loss_scale"] for r in rows]
    assert [r["train/nonfinite_steps"] for r in rows] == [min(i, skipped) for i in range(1, 13)]
    assert [r["train/loss_scale"] for r in rows] == [INIT_SCALE * 0.5 ** min(i, skipped) for i in range(1, 13)]
    losses = [r["train/loss"] for r in rows]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.6 * losses[skipped], losses  # the steps after the overflows train
    acc = EventAccumulator(str(ref / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.value for e in acc.Scalars("train/loss_scale")] == [r["train/loss_scale"] for r in rows]

    final = load_checkpoint(ref / "checkpoints/last.pt")
    # AdamW counts its own steps: only the steps that were not skipped reached the optimizer
    assert {float(s["step"]) for s in final["optimizer"]["state"].values()} == {12.0 - skipped}
    assert final["scaler"]["scale"] == INIT_SCALE * 0.5**skipped
    assert final["scaler"]["_growth_tracker"] == 12 - skipped  # steps since the last overflow

    crashed = tmp_path / "crashed"
    env = {**os.environ, "LSEG_FAULT_INJECT": "raise:rank=0:step=9"}
    proc = subprocess.run(train_cmd(crashed, one_batch_root, *fp16), env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 1 and "injected failure on rank 0 at step 9" in proc.stderr, proc.stderr[-2000:]
    assert load_checkpoint(crashed / "checkpoints/last.pt")["scaler"] == load_checkpoint(
        ref / "checkpoints/step_00000008.pt")["scaler"]
    run_train(crashed, one_batch_root, *fp16)
    assert "resumed from" in (crashed / "log.txt").read_text()
    resumed = load_checkpoint(crashed / "checkpoints/last.pt")
    assert resumed["step"] == 12 and resumed["scaler"] == final["scaler"]
    assert_same_weights(resumed["model"], final["model"])
    for key, state in final["optimizer"]["state"].items():
        assert_same_weights(resumed["optimizer"]["state"][key], state)
