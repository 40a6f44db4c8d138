"""Fixtures shared by the failure tests: the tools and a set of good and broken files."""
from __future__ import annotations

import shutil

import pytest
import torch
from PIL import Image

from lseg.checkpoint_io import FORMAT, save_atomic
from lseg.config import load_config, to_dict

from helpers import SMOKE, load_tool


@pytest.fixture(scope="module")
def tools():
    return {n: load_tool(n) for n in ("average_checkpoints", "eval_sweep", "predict", "convert_langseg",
                                      "make_synthetic_mseg", "submit")}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A real tiny model checkpoint plus the kinds of bad checkpoint files users hand to tools."""
    from lseg.models import build_model

    d = tmp_path_factory.mktemp("ckpts")
    cfg = load_config(SMOKE, ["model.text.layers=1"])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    good = d / "good.pt"
    save_atomic({"format": FORMAT, "model": model.state_dict(), "config": to_dict(cfg), "step": 1}, good)
    other_cfg = load_config(SMOKE, ["model.text.layers=1", "model.features=48"])
    other = d / "other_arch.pt"
    save_atomic({"format": FORMAT, "model": build_model(other_cfg.model).state_dict(), "config": to_dict(other_cfg),
                 "step": 1}, other)
    trunc = d / "truncated.pt"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    jpeg = d / "photo.jpg"
    Image.new("RGB", (40, 32), (200, 30, 30)).save(jpeg)
    not_ckpt = d / "not_a_checkpoint.pt"
    shutil.copy(jpeg, not_ckpt)
    plain = d / "plain_state_dict.pt"
    torch.save({"w": torch.zeros(2)}, plain)  # a torch file, but not an lseg-hpc checkpoint
    blocker = d / "regular_file"
    blocker.write_text("a file, so nothing can be created under it\n")
    return {"good": good, "other": other, "trunc": trunc, "not_ckpt": not_ckpt, "plain": plain, "jpeg": jpeg,
            "unwritable": blocker / "out", "dir": d}
