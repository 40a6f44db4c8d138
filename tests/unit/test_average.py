"""lseg.checkpoints.average: exact fp64 mean, strict keys, EMA choice, model-only payload."""
from __future__ import annotations

import pytest
import torch

from lseg.checkpoint_io import CheckpointError
from lseg.checkpoints.average import AverageError, average_checkpoints, average_state_dicts, select_checkpoints

from helpers import averaging_state as _state, fake_run, write_model_checkpoint


def _model_state(seed: int) -> dict[str, torch.Tensor]:
    """Keys as in an LSeg state dict: trainable image side, frozen text side."""
    s = {f"image.{k}": v for k, v in _state(seed).items()}
    s["text.proj"] = torch.arange(6.0)  # frozen: identical in every checkpoint
    return s


def test_average_equals_fp64_mean_exactly():
    states = [_state(s) for s in range(3)]
    out = average_state_dicts(states)
    for key in ("conv.weight", "half.weight", "bf.weight", "bn.running_mean"):
        expected = (sum(s[key].double() for s in states) / 3).to(states[0][key].dtype)
        assert out[key].dtype == states[0][key].dtype
        assert torch.equal(out[key], expected), key
    # integer / bool buffers come from the last input, not averaged
    assert out["bn.num_batches_tracked"].item() == 300
    assert torch.equal(out["mask"], states[-1]["mask"])


def test_fp64_accumulation_beats_fp16_sum():
    # 1000 + 0.5 + 0.5 in fp16 loses the halves one at a time; fp64 keeps them.
    states = [{"w": torch.tensor([1000.0], dtype=torch.float16)},
              {"w": torch.tensor([0.5], dtype=torch.float16)},
              {"w": torch.tensor([0.5], dtype=torch.float16)}]
    out = average_state_dicts(states)["w"]
    assert out.item() == torch.tensor(1001.0 / 3, dtype=torch.float16).item()


def test_identical_inputs_average_to_themselves():
    s = _state(0)
    out = average_state_dicts([s, {k: v.clone() for k, v in s.items()}])
    assert all(torch.equal(out[k], s[k]) for k in s)


def test_missing_key_is_refused_with_its_name():
    a, b = _state(0), _state(1)
    del b["bn.running_mean"]
    with pytest.raises(AverageError, match="'bn.running_mean'"):
        average_state_dicts([a, b], ["a.pt", "b.pt"])
    b2 = _state(1)
    b2["extra.bias"] = torch.zeros(1)
    with pytest.raises(AverageError, match="'extra.bias' is in b.pt but not in a.pt"):
        average_state_dicts([a, b2], ["a.pt", "b.pt"])


def test_shape_mismatch_is_refused_with_its_name():
    a, b = _state(0), _state(1)
    b["conv.weight"] = torch.zeros(4, 3, 1, 1)
    with pytest.raises(AverageError, match=r"shape mismatch for 'conv.weight': \(4, 3, 3, 3\)"):
        average_state_dicts([a, b], ["a.pt", "b.pt"])
    c = _state(1)
    c["conv.weight"] = c["conv.weight"].double()
    with pytest.raises(AverageError, match="dtype mismatch for 'conv.weight': torch.float32 in a.pt"):
        average_state_dicts([a, c], ["a.pt", "c.pt"])


def test_files_ema_choice_and_payload(tmp_path):
    states = [_model_state(s) for s in range(2)]
    emas = [{f"image.{k}": v for k, v in _state(10 + s).items()} for s in range(2)]  # image side only
    paths = [write_model_checkpoint(tmp_path / f"step_{i:08d}.pt", states[i], (i + 1) * 10, ema=emas[i])
             for i in range(2)]
    with_ema = average_checkpoints(paths)  # default: EMA because both have it
    assert with_ema["averaged"]["weights"] == "ema"
    w = with_ema["model"]
    assert torch.equal(w["image.conv.weight"],
                       ((emas[0]["image.conv.weight"].double() + emas[1]["image.conv.weight"].double()) / 2).float())
    assert torch.equal(w["text.proj"], torch.arange(6.0))  # text tower from 'model', unchanged
    assert set(w) == set(states[0])  # a complete model
    raw = average_checkpoints(paths, use_ema=False)
    assert torch.equal(raw["model"]["image.conv.weight"],
                       ((states[0]["image.conv.weight"].double() + states[1]["image.conv.weight"].double()) / 2).float())
    assert set(raw) == {"format", "model", "config", "step", "sources", "averaged"}  # no optimizer
    assert raw["format"] == "lseg-hpc" and raw["config"] == {"model": {"features": 8}}
    assert raw["step"] == 20 and [s["step"] for s in raw["sources"]] == [10, 20]
    no_ema = write_model_checkpoint(tmp_path / "plain.pt", states[0], 5)
    with pytest.raises(CheckpointError, match="no 'ema' weights"):
        average_checkpoints([no_ema], use_ema=True)
    # mixed inputs in auto mode fall back to raw weights for all
    assert average_checkpoints([paths[0], no_ema])["averaged"]["weights"] == "model"


def test_the_same_file_twice_is_refused(tmp_path):
    a = write_model_checkpoint(tmp_path / "a.pt", _state(0), 1)
    with pytest.raises(AverageError, match="is selected twice"):
        average_checkpoints([a, tmp_path / "." / "a.pt"])
    with pytest.raises(AverageError, match="no checkpoints selected"):
        average_checkpoints([])


def test_select_checkpoints_of_a_run(tmp_path):
    run = fake_run(tmp_path)
    names = lambda paths: [p.name for p in paths]  # noqa: E731
    assert names(select_checkpoints(run)) == [f"step_{s:08d}.pt" for s in (100, 200, 300, 400)]
    assert names(select_checkpoints(run, last=2)) == ["step_00000300.pt", "step_00000400.pt"]
    assert names(select_checkpoints(run, top=2)) == ["step_00000200.pt", "step_00000300.pt"]
    assert names(select_checkpoints(run, top=1, maximize=False)) == ["step_00000400.pt"]
