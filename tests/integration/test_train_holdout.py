"""Held-out classes with the real trainer, text tower and synthetic data: nothing leaks into training.

(a) the text encoder never encodes a held-out prompt while training (a wrapper records every call
    to the real encoder), (b) the labels the loss receives hold 255 where the held-out class was,
    (c) one step on a batch with held-out pixels gives exactly the gradients and weights of the same
    step on the batch with those pixels set to ignore beforehand. Then the run end to end: metrics,
    TensorBoard and the sweep's tables report seen / unseen / hIoU.
"""
from __future__ import annotations

import json

import pytest
import torch

import lseg.engine.trainer as trainer_module
from lseg import data as lseg_data
from lseg.config import load_config
from lseg.distributed import DistInfo
from lseg.engine.trainer import Trainer
from lseg.models.text import TextEncoder

from helpers import ADE, SMOKE, base_overrides, load_tool, metrics, run_train


def _cfg(tmp_path, root, *extra):
    return load_config(SMOKE, [*base_overrides(root), f"train.output_dir={tmp_path / 'run'}", "train.device=cpu",
                               *extra])


def _first_batches(cfg, n):
    """What the trainer's own loader delivers first (the order is a pure function of seed and position)."""
    it = iter(lseg_data.build_train_loader(cfg, 0, 1, epoch=0, start=0))
    return [next(it) for _ in range(n)]


def _held_class(label):
    """The most frequent labelled class of a batch: held out, it removes many pixels."""
    ids, counts = label[label != 255].unique(return_counts=True)
    return int(ids[counts.argmax()])


def test_held_out_prompt_never_reaches_training_and_its_pixels_are_ignored(tmp_path, synthetic_root, monkeypatch):
    plain = _cfg(tmp_path, synthetic_root)
    names = lseg_data.class_names(plain)
    raw = _first_batches(plain, 2)
    held = _held_class(raw[0]["label"])
    encoded: list[tuple[str, ...]] = []
    losses_saw: list[torch.Tensor] = []
    real_encode, real_loss = TextEncoder.encode, trainer_module.upsampled_segmentation_loss

    def recording_encode(self, labels):
        encoded.append(tuple(labels))
        return real_encode(self, labels)

    def recording_loss(logit_map, labels, chunks):
        losses_saw.append(labels.clone())
        return real_loss(logit_map, labels, chunks)

    monkeypatch.setattr(TextEncoder, "encode", recording_encode)
    monkeypatch.setattr(trainer_module, "upsampled_segmentation_loss", recording_loss)
    trainer = Trainer(_cfg(tmp_path, synthetic_root, f"data.holdout_classes=[{names[held]}]"), DistInfo())
    trainer.run_step()
    trainer.run_step()

    # (a) the only label list encoded up to now is the seen classes, in label-space order
    seen_names = tuple(n for i, n in enumerate(names) if i != held)
    assert encoded and set(encoded) == {seen_names}
    assert trainer.text_features.shape[0] == len(names) - 1
    # (b) held-out pixels reach the loss as 255; seen ids above it shift down by one (training index)
    assert len(losses_saw) == 2
    for batch, seen in zip(raw, losses_saw):
        label = batch["label"]
        expected = torch.where(label == held, 255, torch.where((label > held) & (label != 255), label - 1, label))
        assert torch.equal(seen, expected)
        assert int((seen == 255).sum()) == int((label == 255).sum() + (label == held).sum())
    assert int((raw[0]["label"] == held).sum()) > 0
    # evaluation scores the whole label space, so the held-out class is measured
    encoded.clear()
    scalars = trainer.run_eval()
    assert tuple(names) in encoded
    for prefix in ("eval", f"eval/{ADE}"):
        assert {f"{prefix}/mIoU_seen", f"{prefix}/mIoU_unseen", f"{prefix}/hIoU"} <= scalars.keys()


def _one_step(cfg, batch):
    trainer = Trainer(cfg, DistInfo())
    trainer.batch_source = iter([batch])
    loss = trainer.run_step()["train/loss"]
    grads = {n: p.grad.clone() for n, p in trainer.model.image.named_parameters() if p.grad is not None}
    return loss, grads, {k: v.clone() for k, v in trainer.model.image.state_dict().items()}


def test_held_out_pixels_give_exactly_the_step_of_pixels_ignored_from_the_start(tmp_path, synthetic_root):
    plain = _cfg(tmp_path, synthetic_root)
    (batch,) = _first_batches(plain, 1)
    held = _held_class(batch["label"])
    other = next(int(c) for c in batch["label"].unique() if c not in (held, 255))
    cfg = _cfg(tmp_path, synthetic_root, f"data.holdout_classes=[{lseg_data.class_names(plain)[held]}]")

    loss, grads, weights = _one_step(cfg, batch)
    ignored = {**batch, "label": batch["label"].masked_fill(batch["label"] == held, 255)}
    loss_i, grads_i, weights_i = _one_step(cfg, ignored)
    assert loss == loss_i and grads.keys() == grads_i.keys() and len(grads) > 10
    assert [k for k in grads if not torch.equal(grads[k], grads_i[k])] == []
    assert all(torch.equal(weights[k], weights_i[k]) for k in weights)
    # the comparison can fail: the same pixels labelled as a seen class change the step
    relabelled = {**batch, "label": batch["label"].masked_fill(batch["label"] == held, other)}
    loss_r, grads_r, _ = _one_step(cfg, relabelled)
    assert loss_r != loss and any(not torch.equal(grads[k], grads_r[k]) for k in grads)


@pytest.mark.slow
def test_held_out_run_reports_seen_unseen_in_metrics_tensorboard_and_sweep(tmp_path, synthetic_root):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    run_train(out, synthetic_root, "train.max_steps=2", "train.ckpt_every=2", "eval.every=0",
              "data.holdout_classes=[sky, road_barrier]", "train.device=cpu")
    assert "data.holdout_classes" not in (out / "log.txt").read_text()  # accepted, nothing to complain about
    assert "held out 2 class(es)" in (out / "log.txt").read_text()
    assert "holdout_classes:\n  - sky\n  - road_barrier" in (out / "config.yaml").read_text()
    final = [r for r in metrics(out) if "eval/mIoU" in r][-1]
    for prefix in ("eval", f"eval/{ADE}", "eval/coco-panoptic-133-relabeled"):
        assert {f"{prefix}/mIoU_seen", f"{prefix}/mIoU_unseen", f"{prefix}/hIoU"} <= final.keys()
    s, u = final["eval/mIoU_seen"], final["eval/mIoU_unseen"]
    assert 0 <= s <= 1 and (u != u or 0 <= u <= 1)  # u is nan when neither class occurs nor is predicted
    acc = EventAccumulator(str(out / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    assert {"eval/mIoU_seen", "eval/mIoU_unseen", "eval/hIoU"} <= set(acc.Tags()["scalars"])

    sweep_dir = tmp_path / "sweep"
    sweep = load_tool("eval_sweep")
    assert sweep.main(["--run-dir", str(out), "--datasets", ADE, "--label-sets", "universal", "dataset",
                       "--max-samples", "2", "--num-workers", "0", "--output-dir", str(sweep_dir)]) == 0
    cells = [json.loads(p.read_text()) for p in (sweep_dir / "cells").glob("*.json")]
    by_set = {c["label_set"]: c for c in cells}
    assert by_set["universal"]["unseen_classes"] == ["road_barrier", "sky"]
    assert "sky" in by_set["dataset"]["unseen_classes"]
    header = (sweep_dir / "results.csv").read_text().splitlines()[0].split(",")
    assert {"mIoU_seen", "mIoU_unseen", "hIoU", "unseen_classes"} <= set(header)
    assert "| mIoU seen | mIoU unseen | hIoU |" in (sweep_dir / "results.md").read_text()
