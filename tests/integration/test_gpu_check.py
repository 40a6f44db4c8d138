"""The GPU acceptance check (tools/gpu_check.py) in its CPU dry mode, its budget, and its bad input."""
from __future__ import annotations

import json
import math

import pytest

from lseg.bench import acceptance

from helpers import load_tool, one_error_line

COMPILE_CASES = ["compile batch 2", "compile batch 2 ckpt", "compile batch 1", "compile batch 1 ckpt"]


@pytest.mark.slow
def test_dry_run_measures_every_case_but_compile(tmp_path):
    report = acceptance.run(tmp_path, dry=True)
    status = {c["name"]: c["status"] for c in report["cases"]}
    assert [n for n, st in status.items() if st == "done"] == ["eager batch 1", "eager batch 2", "real loader",
                                                               "official eval"]
    assert all(status[n].startswith("skipped: compile") for n in COMPILE_CASES)
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [c["name"] for c in saved["cases"]] == list(status)
    steps = {(r["case"], r["variant"]): r for c in saved["cases"] if c["kind"] == "step" for r in c.get("rows", [])}
    assert sorted(steps) == [("eager batch 1", "bf16"), ("eager batch 1", "bf16+ckpt"), ("eager batch 2", "bf16"),
                             ("eager batch 2", "bf16+ckpt"), ("eager batch 2", "fp16")]
    for row in steps.values():
        assert row["img/s"] > 0 and math.isclose(row["vs_official"], row["img/s"] / 1.9)
        assert row["MFU_%"] is None  # no peak is known for a CPU
    loader = next(c for c in saved["cases"] if c["kind"] == "loader")
    assert loader["rows"][0]["steps"] == len(loader["steps"]) == 2 and 0 <= loader["rows"][0]["data_wait_%"] < 100
    evaluation = next(c for c in saved["cases"] if c["kind"] == "eval")
    assert evaluation["rows"][0]["images"] == 1 and evaluation["rows"][0]["scales"] == 6
    text = (tmp_path / "gpu_check.md").read_text()
    assert "| eager batch 2 | fp16 | 2 |" in text and "| real loader | 2 | 2 |" in text
    assert "- compile batch 1 ckpt: skipped: compile is not exercised in the CPU dry run" in text


def test_cases_that_do_not_fit_the_budget_are_skipped_and_reported(tmp_path):
    """The real plan with a 1 s budget: nothing starts, and the report says why for each case."""
    report = acceptance.run(tmp_path, budget_s=1.0)
    assert len(report["cases"]) == 8
    assert all(c["status"].startswith("skipped: ") and "s of the budget left" in c["status"] for c in report["cases"])
    assert report["cases"][-1]["status"].endswith("the case needs 150 s")
    assert "(none finished)" in (tmp_path / "gpu_check.md").read_text()


def test_bad_input_is_one_line(tmp_path, capsys):
    tool = load_tool("gpu_check")
    assert tool.main(["--out", str(tmp_path), "--dry-run", "train.batch_sise=2"]) == 2
    assert "unknown config key 'train.batch_sise'" in one_error_line(capsys)
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert tool.main(["--out", str(blocker / "out"), "--dry-run"]) == 2
    assert one_error_line(capsys) == f"error: {blocker / 'out'}: Not a directory"
    with pytest.raises(SystemExit) as exc:
        tool.main(["--out", str(tmp_path), "--budget-s", "0"])
    assert exc.value.code == 2 and "must be > 0" in capsys.readouterr().err
