"""tools/average_checkpoints.py: exact fp64 mean, strict keys, run-dir selection."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from lseg.checkpoint_io import load_checkpoint, save_atomic

from helpers import REPO as ROOT  # noqa: E402


def _load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the file executes
    spec.loader.exec_module(mod)
    return mod


avg = _load_tool("average_checkpoints")


def _state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "conv.weight": torch.randn(4, 3, 3, 3, generator=g),
        "half.weight": torch.randn(5, generator=g).to(torch.float16),
        "bf.weight": torch.randn(6, generator=g).to(torch.bfloat16),
        "bn.running_mean": torch.randn(4, generator=g),
        "bn.num_batches_tracked": torch.tensor(100 * (seed + 1)),
        "mask": torch.tensor([True, seed % 2 == 0]),
    }


def _model_state(seed: int) -> dict[str, torch.Tensor]:
    """Keys as in an LSeg state dict: trainable image side, frozen text side."""
    s = {f"image.{k}": v for k, v in _state(seed).items()}
    s["text.proj"] = torch.arange(6.0)  # frozen: identical in every checkpoint
    return s


def _write(tmp: Path, name: str, state, step: int, ema=None) -> Path:
    payload = {"format": "lseg-hpc", "model": state, "config": {"model": {"features": 8}}, "step": step,
               "optimizer": {"state": {}}}
    if ema is not None:
        payload["ema"] = ema
    path = tmp / name
    save_atomic(payload, path)
    return path


def test_average_equals_fp64_mean_exactly():
    states = [_state(s) for s in range(3)]
    out = avg.average_state_dicts(states)
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
    out = avg.average_state_dicts(states)["w"]
    assert out.item() == torch.tensor(1001.0 / 3, dtype=torch.float16).item()


def test_identical_inputs_average_to_themselves():
    s = _state(0)
    out = avg.average_state_dicts([s, {k: v.clone() for k, v in s.items()}])
    assert all(torch.equal(out[k], s[k]) for k in s)


def test_missing_key_is_refused_with_its_name():
    a, b = _state(0), _state(1)
    del b["bn.running_mean"]
    with pytest.raises(avg.AverageError, match="'bn.running_mean'"):
        avg.average_state_dicts([a, b], ["a.pt", "b.pt"])
    b2 = _state(1)
    b2["extra.bias"] = torch.zeros(1)
    with pytest.raises(avg.AverageError, match="'extra.bias' is in b.pt but not in a.pt"):
        avg.average_state_dicts([a, b2], ["a.pt", "b.pt"])


def test_shape_mismatch_is_refused_with_its_name():
    a, b = _state(0), _state(1)
    b["conv.weight"] = torch.zeros(4, 3, 1, 1)
    with pytest.raises(avg.AverageError, match=r"shape mismatch for 'conv.weight': \(4, 3, 3, 3\)"):
        avg.average_state_dicts([a, b], ["a.pt", "b.pt"])


def test_files_ema_choice_and_payload(tmp_path):
    states = [_model_state(s) for s in range(2)]
    emas = [{f"image.{k}": v for k, v in _state(10 + s).items()} for s in range(2)]  # image side only
    paths = [_write(tmp_path, f"step_{i:08d}.pt", states[i], (i + 1) * 10, ema=emas[i]) for i in range(2)]
    with_ema = avg.average_files(paths)  # default: EMA because both have it
    assert with_ema["averaged"]["weights"] == "ema"
    w = with_ema["model"]
    assert torch.equal(w["image.conv.weight"],
                       ((emas[0]["image.conv.weight"].double() + emas[1]["image.conv.weight"].double()) / 2).float())
    assert torch.equal(w["text.proj"], torch.arange(6.0))  # text tower from 'model', unchanged
    assert set(w) == set(states[0])  # a complete model
    raw = avg.average_files(paths, use_ema=False)
    assert torch.equal(raw["model"]["image.conv.weight"],
                       ((states[0]["image.conv.weight"].double() + states[1]["image.conv.weight"].double()) / 2).float())
    assert set(raw) == {"format", "model", "config", "step", "sources", "averaged"}  # no optimizer
    assert raw["step"] == 20 and [s["step"] for s in raw["sources"]] == [10, 20]
    no_ema = _write(tmp_path, "plain.pt", states[0], 5)
    with pytest.raises(avg.AverageError, match="no EMA"):
        avg.average_files([no_ema], use_ema=True)
    # mixed inputs in auto mode fall back to raw weights for all
    assert avg.average_files([paths[0], no_ema])["averaged"]["weights"] == "model"


def _fake_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    ck = run / "checkpoints"
    miou = {100: 0.2, 200: 0.5, 300: 0.4, 400: 0.1}
    entries = []
    for step, m in miou.items():
        _write(ck, f"step_{step:08d}.pt", _state(step), step)
        entries.append({"path": f"step_{step:08d}.pt", "step": step, "metrics": {"eval/mIoU": m}})
    entries = [e for e in entries if e["step"] != 300]  # 300 only in metrics.jsonl
    (ck / "index.json").write_text(json.dumps({"checkpoints": entries}))
    (run / "metrics.jsonl").write_text(
        json.dumps({"step": 300, "eval/mIoU": 0.4}) + "\nnot json\n" + json.dumps({"step": 10, "loss": 1.0}) + "\n")
    save_atomic({"format": "lseg-hpc", "model": _state(0)}, ck / "last.pt")
    return run


def test_run_dir_selection_last_and_top(tmp_path):
    run = _fake_run(tmp_path)
    ckpts = avg.list_run_checkpoints(run)
    assert [c.step for c in ckpts] == [100, 200, 300, 400]  # last.pt skipped
    assert [c.step for c in avg.select_last(ckpts, 2)] == [300, 400]
    assert [c.step for c in avg.select_top(ckpts, 2, "eval/mIoU")] == [200, 300]
    with pytest.raises(avg.AverageError, match="recorded: eval/mIoU"):
        avg.select_top(ckpts, 2, "eval/nope")


def test_cli_top2_writes_loadable_model_only_checkpoint(tmp_path, capsys):
    run = _fake_run(tmp_path)
    out = tmp_path / "avg.pt"
    assert avg.main(["--run-dir", str(run), "--top", "2", "--output", str(out)]) == 0
    payload = load_checkpoint(out)
    expected = ((_state(200)["conv.weight"].double() + _state(300)["conv.weight"].double()) / 2).float()
    assert torch.equal(payload["model"]["conv.weight"], expected)
    assert payload["model"]["bn.num_batches_tracked"].item() == 100 * 301  # from the last (step 300)
    assert payload["format"] == "lseg-hpc" and len(payload["sources"]) == 2


def test_cli_reports_mismatch_as_one_line(tmp_path, capsys):
    a = _write(tmp_path, "a.pt", _state(0), 1)
    bad = _state(1)
    bad["conv.weight"] = torch.zeros(1)
    b = _write(tmp_path, "b.pt", bad, 2)
    assert avg.main(["--checkpoints", str(a), str(b), "--output", str(tmp_path / "o.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: shape mismatch for 'conv.weight'") and "\n" not in err
    assert not (tmp_path / "o.pt").exists()
