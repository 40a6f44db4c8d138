"""Checkpoint files: atomic writes, safe loading, retention, resume choice, run listing, payload and EMA keys."""
import json
import os

import pytest
import torch

from lseg.checkpoint_io import CheckpointError, load_checkpoint, save_atomic
from lseg.checkpoints import list_run_checkpoints, read_index, select_last, select_top, step_filename, step_of
from lseg.checkpoints.manager import CheckpointManager
from lseg.checkpoints.payload import checkpoint_payload, ema_image_state, model_weights, rng_state, set_rng_state

from helpers import fake_run


def _state(step):
    return {"model": {"w": torch.full((3,), float(step))}, "step": step}


def test_save_atomic_round_trip_and_no_temp_left(tmp_path):
    path = tmp_path / "a.pt"
    save_atomic({"x": torch.arange(5)}, path)
    assert torch.equal(load_checkpoint(path)["x"], torch.arange(5))
    assert sorted(os.listdir(tmp_path)) == ["a.pt"]


def test_failed_write_keeps_previous_file(tmp_path):
    path = tmp_path / "a.pt"
    save_atomic({"x": torch.zeros(2)}, path)

    class Boom:
        def __reduce__(self):
            raise OSError(28, "No space left on device")

    with pytest.raises(Exception):
        save_atomic({"x": Boom()}, path)
    assert torch.equal(load_checkpoint(path)["x"], torch.zeros(2))
    assert sorted(os.listdir(tmp_path)) == ["a.pt"]


def test_load_errors_are_one_line(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    good = tmp_path / "good.pt"
    save_atomic(_state(1), good)
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(good.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(trunc)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(text)
    assert "\n" not in str(info.value)
    lst = tmp_path / "list.pt"
    torch.save([1, 2], lst)
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(lst)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned_by_pickle",))


def test_pickle_that_runs_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        torch.save({"model": _Evil()}, f)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(CheckpointError, match="refused to unpickle"):
            load_checkpoint(path)
        assert not (tmp_path / "pwned_by_pickle").exists()
    finally:
        os.chdir(cwd)


def test_retention_last_k_every_m_and_best(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=2, keep_every=30)
    for step in range(10, 101, 10):
        mgr.save(_state(step), step)
        if step == 40:
            mgr.record_metrics(40, {"eval/mIoU": 0.9})
        if step == 80:
            mgr.record_metrics(80, {"eval/mIoU": 0.5})
    kept = sorted(s for s, _ in mgr.step_files())
    assert kept == [30, 40, 60, 90, 100]  # every 30th, best (40), last two
    index = json.loads((tmp_path / "checkpoints/index.json").read_text())
    assert [e["step"] for e in index["checkpoints"]] == kept
    assert index["best"]["step"] == 40 and index["best"]["value"] == 0.9
    assert torch.equal(load_checkpoint(tmp_path / "checkpoints/best.pt")["model"]["w"], torch.full((3,), 40.0))
    assert load_checkpoint(tmp_path / "checkpoints/last.pt")["step"] == 100
    # bookkeeping survives a restart: a new manager sees the same best
    mgr2 = CheckpointManager(tmp_path, keep_last=2, keep_every=30)
    mgr2.save(_state(110), 110)
    assert sorted(s for s, _ in mgr2.step_files()) == [30, 40, 60, 90, 100, 110]


def test_resume_skips_corrupt_newest(tmp_path, caplog):
    mgr = CheckpointManager(tmp_path, keep_last=5)
    mgr.save(_state(10), 10)
    mgr.save(_state(20), 20)
    newest = tmp_path / "checkpoints/step_00000020.pt"
    newest.write_bytes(newest.read_bytes()[:-50])  # truncated
    path, state = mgr.latest_valid()
    assert path.name == "step_00000010.pt" and state["step"] == 10
    assert "skipping unusable checkpoint" in caplog.text
    (tmp_path / "checkpoints/index.json").write_text("{not json")
    assert mgr.latest_valid()[1]["step"] == 10


def test_rng_state_round_trip_through_weights_only(tmp_path):
    import random
    import numpy as np
    torch.manual_seed(3); np.random.seed(4); random.seed(5)
    save_atomic({"rng": rng_state()}, tmp_path / "r.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and (expected[1] == got[1]).all() and expected[2] == got[2]


def test_step_file_names():
    assert step_filename(1200) == "step_00001200.pt" and step_of("x/step_00001200.pt") == 1200
    assert step_filename(123456789) == "step_123456789.pt" and step_of("step_123456789.pt") == 123456789
    assert [step_of(n) for n in ("last.pt", "best.pt", "step_12.pt", "step_00000012.pt.tmp", "avg.pt")] == [None] * 5


def test_index_reader_reads_what_the_manager_writes(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=5)
    mgr.save(_state(10), 10)
    mgr.save(_state(20), 20, metrics={"train/loss": 2.5})
    mgr.record_metrics(10, {"eval/mIoU": 0.25})
    assert read_index(tmp_path / "checkpoints") == {
        "checkpoints": [{"path": "step_00000010.pt", "step": 10, "metrics": {"eval/mIoU": 0.25}},
                        {"path": "step_00000020.pt", "step": 20, "metrics": {"train/loss": 2.5}}],
        "best": {"step": 10, "path": "step_00000010.pt", "metric": "eval/mIoU", "value": 0.25}}
    (tmp_path / "checkpoints/index.json").write_text(json.dumps({"checkpoints": [{"step": "x"}, 7], "best": 3}))
    assert read_index(tmp_path / "checkpoints") == {"checkpoints": [], "best": None}
    assert read_index(tmp_path / "elsewhere") == {"checkpoints": [], "best": None}


def test_list_run_checkpoints_files_index_and_metrics_log(tmp_path):
    run = fake_run(tmp_path)
    ckpts = list_run_checkpoints(run)
    assert [(c.path.name, c.step) for c in ckpts] == [(f"step_{s:08d}.pt", s) for s in (100, 200, 300, 400)]
    assert [c.metrics for c in ckpts] == [{"eval/mIoU": 0.2}, {"eval/mIoU": 0.5}, {"eval/mIoU": 0.4},
                                          {"eval/mIoU": 0.1}]  # 300 from metrics.jsonl; last.pt skipped
    (run / "metrics.jsonl").write_text(json.dumps({"step": 200, "eval/mIoU": 0.9}) + "\n")
    assert list_run_checkpoints(run)[1].metrics == {"eval/mIoU": 0.5}  # the index wins over the log
    (run / "checkpoints/index.json").write_text("{not json")
    assert [c.step for c in list_run_checkpoints(run)] == [100, 200, 300, 400]  # the files are the truth
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'nope'}: no step checkpoints"):
        list_run_checkpoints(tmp_path / "nope")
    (tmp_path / "empty/checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="empty/checkpoints: no step checkpoints"):
        list_run_checkpoints(tmp_path / "empty")


def test_selection_never_returns_fewer_than_asked(tmp_path):
    run = fake_run(tmp_path)
    ckpts = list_run_checkpoints(run)
    assert [c.step for c in select_last(ckpts, 2)] == [300, 400]
    assert [c.step for c in select_last(ckpts, 4)] == [100, 200, 300, 400]
    assert [c.step for c in select_top(ckpts, 2, "eval/mIoU")] == [200, 300]
    assert [c.step for c in select_top(ckpts, 2, "eval/mIoU", maximize=False)] == [100, 400]
    for n in (0, -1, 5):
        with pytest.raises(CheckpointError, match=rf"cannot select the last {n} checkpoint\(s\): {run} has 4 "):
            select_last(ckpts, n)
    ckpts[0].metrics.clear()
    ckpts[2].metrics["eval/mIoU"] = float("nan")
    with pytest.raises(CheckpointError, match=rf"top 3 checkpoint\(s\) by 'eval/mIoU': 2 of the 4 in {run} have it recorded \(steps 200, 400\)"):
        select_top(ckpts, 3, "eval/mIoU")
    with pytest.raises(CheckpointError, match="top 0 "):
        select_top(ckpts, 0, "eval/mIoU")
    with pytest.raises(CheckpointError, match="no checkpoint has a recorded 'eval/nope' .recorded: eval/mIoU."):
        select_top(ckpts, 2, "eval/nope")


def test_payload_and_the_ema_key_rule():
    model = {"image.w": torch.zeros(2), "image.n": torch.tensor(3), "text.t": torch.ones(1)}
    payload = checkpoint_payload(model, {"model": {}}, ema={"w": torch.full((2,), 5.0)}, step=7)
    assert set(payload) == {"format", "model", "config", "ema", "step"} and payload["format"] == "lseg-hpc"
    assert list(payload["ema"]) == ["image.w"]  # saved with the model's prefix
    assert list(ema_image_state(payload)) == ["w"]  # back to the image module's own names
    assert model_weights(payload, "p.pt", use_ema=False) is model
    merged = model_weights(payload, "p.pt", use_ema=True)
    assert torch.equal(merged["image.w"], torch.full((2,), 5.0)) and merged["text.t"] is model["text.t"]
    unprefixed = {**payload, "ema": {"w": torch.ones(2)}}  # an image module's own state dict
    assert torch.equal(model_weights(unprefixed, "p.pt", use_ema=True)["image.w"], torch.ones(2))
    with pytest.raises(CheckpointError, match="p.pt: EMA key 'image.gone' has no counterpart"):
        model_weights({**payload, "ema": {"image.gone": torch.ones(1)}}, "p.pt", use_ema=True)
    with pytest.raises(CheckpointError, match="p.pt: EMA weights requested but the checkpoint has no 'ema'"):
        model_weights({"model": model}, "p.pt", use_ema=True)
    with pytest.raises(CheckpointError, match="p.pt: no 'model' state dict"):
        model_weights({"w": torch.zeros(1)}, "p.pt", use_ema=False)


def test_best_by_seen_classes_when_classes_are_held_out(tmp_path):
    """With held-out classes the best checkpoint is chosen on the seen classes only, never on the unseen."""
    mgr = CheckpointManager(tmp_path, keep_last=1, best_metric="eval/mIoU_seen")
    mgr.save(_state(10), 10)
    mgr.record_metrics(10, {"eval/mIoU": 0.2, "eval/mIoU_seen": 0.5, "eval/mIoU_unseen": 0.0})
    mgr.save(_state(20), 20)
    mgr.record_metrics(20, {"eval/mIoU": 0.4, "eval/mIoU_seen": 0.3, "eval/mIoU_unseen": 0.6})
    index = json.loads((tmp_path / "checkpoints/index.json").read_text())
    assert index["best"] == {"step": 10, "path": "step_00000010.pt", "metric": "eval/mIoU_seen", "value": 0.5}
    assert sorted(s for s, _ in mgr.step_files()) == [10, 20]  # best kept beside the last one
