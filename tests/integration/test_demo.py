"""`make demo` (tools/demo.py -> lseg.demo) end to end, shortened: data -> train -> eval -> predictions."""
import subprocess
import sys

import pytest
from PIL import Image

from helpers import REPO


@pytest.mark.slow
def test_demo_trains_evaluates_and_writes_predictions(tmp_path, synthetic_root):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "tools/demo.py", "--output-dir", str(out), "--data-root", str(synthetic_root),
         "train.max_steps=4", "eval.every=2", "eval.max_samples=2", "data.num_workers=0", "data.crop_size=64",
         "data.base_size=72", "data.eval_size=64", "model.text.layers=1"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "== demo summary ==" in proc.stdout and "eval (step    4) mIoU" in proc.stdout
    overlays = sorted((out / "predictions").glob("*_overlay.png"))
    assert len(overlays) == 2 and all(Image.open(p).size[0] > 0 for p in overlays)
    assert (out / "tb").is_dir() and (out / "checkpoints" / "last.pt").is_file()


def test_demo_step_failure_is_one_line(tmp_path, synthetic_root):
    proc = subprocess.run([sys.executable, "tools/demo.py", "--output-dir", str(tmp_path / "d"),
                           "--data-root", str(synthetic_root), "optim.lrr=1"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: demo step failed with exit code 2")
