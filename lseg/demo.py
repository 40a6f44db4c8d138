"""The main job on its built-in default (``make demo``): data -> train -> eval -> TensorBoard -> prediction.

Runs the same commands a user would, as subprocesses: the synthetic MSeg generator, the trainer on
``configs/smoke.yaml`` (CPU, a few minutes on 2 cores) and ``tools/predict.py`` on validation images.
It ends by printing the final eval next to two baselines computed from the validation labels, so
"the model learned something" is a number, not a hope.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


class DemoError(RuntimeError):
    """A demo step failed; the step printed its own error above."""


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    rc = subprocess.run(cmd, cwd=REPO).returncode
    if rc != 0:
        raise DemoError(f"demo step failed with exit code {rc}: {' '.join(cmd[1:3])} (its error is printed above)")


def majority_baseline(data_root: Path) -> tuple[float, int]:
    """Pixel accuracy of always predicting the most frequent class of the eval set, and its class count."""
    from lseg.config import load_config
    from lseg.data import build_val_loader

    cfg = load_config(REPO / "configs/smoke.yaml", [f"data.root={data_root}", "data.num_workers=0"])
    counts = np.zeros(256, dtype=np.int64)
    for name in cfg.data.val_datasets:
        for batch in build_val_loader(cfg, name, 0, 1, max_samples=cfg.eval.max_samples):
            counts += np.bincount(batch["label"].numpy().ravel(), minlength=256)
    counts[255] = 0
    return counts.max() / counts.sum(), int((counts > 0).sum())


def run_demo(output_dir: str, data_root: str, overrides: list[str]) -> Path:
    """Run the whole demo into ``output_dir`` (relative paths are taken from the checkout); returns the run dir."""
    py = sys.executable
    data_root, out = (REPO / data_root).resolve(), (REPO / output_dir).resolve()

    if not (data_root / "synthetic_info.json").exists():
        run([py, "tools/make_synthetic_mseg.py", "--output", str(data_root)])
    run([py, "-m", "lseg.train", "--config", "configs/smoke.yaml", "--output-dir", str(out),
         f"data.root={data_root}", *overrides])

    ade_val = (data_root / "dataset_lists/ade20k-150-relabeled/list/val.txt").read_text().split()
    images = [str(data_root / "ADE20K/ADEChallengeData2016" / p) for p in ade_val[0:4:2]]
    classes = [line for line in (out / "class_names.txt").read_text().splitlines()]
    pool = json.loads((data_root / "synthetic_info.json").read_text())["universal_class_pool"]
    labels = ",".join(classes[i] for i in pool)
    run([py, "tools/predict.py", "--checkpoint", str(out / "checkpoints/last.pt"), "--image", *images,
         "--labels", labels, "--output", str(out / "predictions")])

    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    final = [e for e in evals if "eval/mIoU" in e][-1]
    first = [e for e in evals if "eval/mIoU" in e][0]
    acc_base, n_classes = majority_baseline(data_root)
    print("\n== demo summary ==")
    print(f"run dir        {out}")
    print(f"eval (step {first['step']:>4}) mIoU {first['eval/mIoU']:.3f}  pixel acc {first['eval/pixel_acc']:.3f}")
    print(f"eval (step {final['step']:>4}) mIoU {final['eval/mIoU']:.3f}  pixel acc {final['eval/pixel_acc']:.3f}")
    print(f"baselines      uniform guess over 194 classes: pixel acc {1 / 194:.3f}, mIoU <= {1 / 194:.3f}; "
          f"always the most frequent of the {n_classes} val classes: pixel acc {acc_base:.3f}, "
          f"mIoU <= {1 / n_classes:.3f}")
    print(f"predictions    {out / 'predictions'}")
    print(f"tensorboard    tensorboard --logdir {out / 'tb'}")
    return out


