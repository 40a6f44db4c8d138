"""tools/average_checkpoints.py end to end: selection flags, the written file, one-line errors."""
from __future__ import annotations

import pytest
import torch

from lseg.checkpoint_io import load_checkpoint

from helpers import averaging_state as _state, fake_run, load_tool, one_error_line, write_model_checkpoint

avg = load_tool("average_checkpoints")


def test_cli_top2_writes_loadable_model_only_checkpoint(tmp_path, capsys):
    run = fake_run(tmp_path)
    out = tmp_path / "avg.pt"
    assert avg.main(["--run-dir", str(run), "--top", "2", "--output", str(out)]) == 0
    payload = load_checkpoint(out)
    expected = ((_state(200)["conv.weight"].double() + _state(300)["conv.weight"].double()) / 2).float()
    assert torch.equal(payload["model"]["conv.weight"], expected)
    assert payload["model"]["bn.num_batches_tracked"].item() == 100 * 301  # from the last (step 300)
    assert payload["format"] == "lseg-hpc" and len(payload["sources"]) == 2
    assert capsys.readouterr().out.splitlines()[-1] == f"wrote {out} (model weights, step 300)"


def test_cli_last_and_all_and_dry_run(tmp_path, capsys):
    run = fake_run(tmp_path)
    out = tmp_path / "avg.pt"
    assert avg.main(["--run-dir", str(run), "--last", "3", "--output", str(out), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "averaging 3 checkpoint(s):" and [ln.strip()[-16:] for ln in lines[1:]] == [
        "step_00000200.pt", "step_00000300.pt", "step_00000400.pt"]
    assert not out.exists()
    assert avg.main(["--run-dir", str(run), "--output", str(out)]) == 0  # no --last/--top: every step file
    assert [s["step"] for s in load_checkpoint(out)["sources"]] == [100, 200, 300, 400]


@pytest.mark.parametrize("flags,message", [
    (["--top", "50"], "error: cannot select the top 50 checkpoint(s) by 'eval/mIoU': 4 of the 4 in RUN have it "
                      "recorded (steps 100, 200, 300, 400)"),
    (["--last", "0"], "error: cannot select the last 0 checkpoint(s): RUN has 4 (steps 100, 200, 300, 400)"),
    (["--last", "5"], "error: cannot select the last 5 checkpoint(s): RUN has 4 (steps 100, 200, 300, 400)"),
    (["--top", "-1"], "error: cannot select the top -1 checkpoint(s) by 'eval/mIoU'"),
    (["--top", "2", "--metric", "eval/nope"], "error: no checkpoint has a recorded 'eval/nope' (recorded: eval/mIoU)"),
    (["--last", "2", "--metric", "eval/mIoU"], "error: --metric/--minimize only apply to --top"),
    (["--minimize"], "error: --metric/--minimize only apply to --top"),
    (["train.max_steps=3"], "error: unexpected argument 'train.max_steps=3': averaging takes no config overrides"),
])
def test_cli_refuses_selections_it_cannot_honour(tmp_path, capsys, flags, message):
    run = fake_run(tmp_path)
    assert avg.main(["--run-dir", str(run), *flags, "--output", str(tmp_path / "o.pt")]) == 2
    assert one_error_line(capsys).startswith(message.replace("RUN", str(run)))
    assert not (tmp_path / "o.pt").exists()


def test_cli_refuses_bad_file_lists(tmp_path, capsys):
    a = write_model_checkpoint(tmp_path / "a.pt", _state(0), 1)
    b = write_model_checkpoint(tmp_path / "b.pt", _state(1), 2)
    cases = [
        (["--checkpoints", str(a), str(b), "--last", "1"], "error: --last/--top need --run-dir"),
        (["--checkpoints", str(a), str(a)], f"error: {a} is selected twice"),
        (["--checkpoints", str(a), str(b), "--output", str(b)], f"error: --output {b} is one of the checkpoints"),
        (["--run-dir", str(tmp_path / "none")], f"error: {tmp_path / 'none'}: no step checkpoints (step_*.pt) found"),
    ]
    for argv, message in cases:
        if "--output" not in argv:
            argv = [*argv, "--output", str(tmp_path / "o.pt")]
        assert avg.main(argv) == 2
        assert one_error_line(capsys).startswith(message)
    assert load_checkpoint(b)["step"] == 2 and not (tmp_path / "o.pt").exists()


def test_cli_reports_mismatch_as_one_line(tmp_path, capsys):
    a = write_model_checkpoint(tmp_path / "a.pt", _state(0), 1)
    bad = _state(1)
    bad["conv.weight"] = torch.zeros(1)
    b = write_model_checkpoint(tmp_path / "b.pt", bad, 2)
    assert avg.main(["--checkpoints", str(a), str(b), "--output", str(tmp_path / "o.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: shape mismatch for 'conv.weight'") and "\n" not in err
    assert not (tmp_path / "o.pt").exists()
