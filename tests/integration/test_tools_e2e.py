"""End to end on a tiny run built here: average -> sweep (1 and 2 processes) -> predict (slow)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lseg.checkpoint_io import load_checkpoint, save_atomic
from lseg.config import load_config, to_dict

from helpers import REPO as ROOT  # noqa: E402
ADE = "ade20k-150-relabeled"
pytestmark = pytest.mark.slow


from helpers import load_tool as _load_tool  # noqa: E402


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, synthetic_root) -> Path:
    """A run dir with two smoke-model checkpoints (different seeds) and an index with metrics."""
    from lseg.models import build_model

    run = tmp_path_factory.mktemp("run")
    cfg = load_config(ROOT / "configs/smoke.yaml", [f"data.root={synthetic_root}", "data.num_workers=0"])
    entries = []
    for seed, (step, miou) in enumerate([(10, 0.1), (20, 0.3)]):
        torch.manual_seed(seed)
        model = build_model(cfg.model)
        save_atomic({"format": "lseg-hpc", "model": model.state_dict(), "config": to_dict(cfg), "step": step},
                    run / "checkpoints" / f"step_{step:08d}.pt")
        entries.append({"path": f"step_{step:08d}.pt", "step": step, "metrics": {"eval/mIoU": miou}})
    (run / "checkpoints" / "index.json").write_text(json.dumps({"checkpoints": entries, "best": None}))
    return run


def test_average_sweep_predict(tiny_run, synthetic_root, tmp_path):
    avg = _load_tool("average_checkpoints")
    sweep = _load_tool("eval_sweep")
    predict = _load_tool("predict")
    out = tmp_path / "avg.pt"
    assert avg.main(["--run-dir", str(tiny_run), "--last", "2", "--output", str(out)]) == 0
    a, b = (load_checkpoint(tiny_run / "checkpoints" / f"step_{s:08d}.pt")["model"] for s in (10, 20))
    merged = load_checkpoint(out)["model"]
    key = next(k for k, v in a.items() if v.is_floating_point() and k.startswith("image."))
    assert torch.equal(merged[key], ((a[key].double() + b[key].double()) / 2).to(a[key].dtype))

    from lseg.models import load_model

    load_model(out)  # the averaged file is a loadable model

    sweep_dir = tmp_path / "sweep"
    argv = ["--checkpoints", str(tiny_run / "checkpoints" / "step_00000020.pt"), str(out),
            "--datasets", ADE, "--label-sets", "universal", "dataset", "--protocols", "single", "official",
            "--scales", "0.75", "1.0", "--max-samples", "2", "--num-workers", "0", "--output-dir", str(sweep_dir),
            f"data.root={synthetic_root}"]
    assert sweep.main(argv) == 0
    rows = (sweep_dir / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 2 * 2 * 2  # header + checkpoints x label sets x protocols
    md = (sweep_dir / "results.md").read_text()
    assert md.count("| ade20k-150-relabeled |") == 8
    for cell in json.loads("[" + ",".join(p.read_text() for p in (sweep_dir / "cells").glob("*.json")) + "]"):
        assert cell["num_images"] == 2 and 0.0 <= cell["mIoU"] <= 1.0
    assert list((sweep_dir / "tb").glob("events.out.tfevents.*"))
    # a rerun finds every cell done and changes nothing
    before = {p: p.stat().st_mtime_ns for p in (sweep_dir / "cells").iterdir()}
    assert sweep.main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in (sweep_dir / "cells").iterdir()} == before

    image = next(Path(synthetic_root).rglob("*.jpg"))
    pred_dir = tmp_path / "pred"
    assert predict.main(["--checkpoint", str(out), "--image", str(image), "--labels", "dog,grass,other",
                         "--output", str(pred_dir), "--scales", "0.75", "1.0", "--flip"]) == 0
    from PIL import Image

    src = Image.open(image)
    mask = Image.open(pred_dir / f"{image.stem}_mask.png")
    overlay = Image.open(pred_dir / f"{image.stem}_overlay.png")
    assert mask.size == src.size and overlay.width == src.width and overlay.height > src.height
    assert max(Image.open(pred_dir / f"{image.stem}_ids.png").getdata()) <= 2


def test_torchrun_two_processes_match_one(tiny_run, synthetic_root, tmp_path):
    """Sharded images + all-reduced confusion matrices give exactly the single-process matrix."""
    ckpt = tiny_run / "checkpoints" / "step_00000010.pt"
    common = ["--checkpoints", str(ckpt), "--datasets", ADE, "--protocols", "single", "--max-samples", "3",
              "--num-workers", "0", "--device", "cpu", f"data.root={synthetic_root}", "dist.backend=gloo"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    one = subprocess.run([sys.executable, str(ROOT / "tools/eval_sweep.py"), *common,
                          "--output-dir", str(tmp_path / "one")], env=env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", "29631", str(ROOT / "tools/eval_sweep.py"), *common,
                          "--output-dir", str(tmp_path / "two")], env=env, capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-2000:]
    (c1,), (c2,) = ((tmp_path / d / "cells").glob("*.conf.pt") for d in ("one", "two"))
    assert c1.name == c2.name
    assert torch.equal(load_checkpoint(c1)["confusion"], load_checkpoint(c2)["confusion"])
    r2 = json.loads(next((tmp_path / "two" / "cells").glob("*.json")).read_text())
    assert r2["world_size"] == 2 and r2["num_images"] == 3
