"""tools/convert_langseg.py end to end: flags, the written file, one-line errors."""
from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
import torch

from lseg.checkpoint_io import load_checkpoint
from lseg.models import load_model

from helpers import REPO, SMOKE, load_tool, one_error_line
from reference_lseg import FEATURES, make_reference, official_state, rel_l2, save_lightning, tokens
from reference_lseg_zs import make_rn_reference

TOOL = REPO / "tools" / "convert_langseg.py"
LABELS = ["dog", "grass", "other", "traffic light"]
conv = load_tool("convert_langseg")


def run_tool(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=REPO)


def main(src, dst, *flags) -> int:
    return conv.main([str(src), str(dst), "--config", str(SMOKE), *flags])


def test_parity_arch0_via_cli(tmp_path):
    ref = make_reference()
    src = save_lightning(ref, tmp_path / "official.ckpt")
    dst = tmp_path / "converted.pt"
    proc = run_tool(src, dst, "--config", SMOKE)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"wrote {dst}: ") and "arch_option 0, block_depth 0" in proc.stdout
    payload = load_checkpoint(dst)
    assert payload["format"] == "lseg-hpc" and payload["converted_from"]["source_format"] == "lightning"
    model = load_model(dst)
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert rel_l2(model(x, LABELS), ref(x, tokens(LABELS))) < 1e-4


@pytest.mark.parametrize("flags,model_cfg", [
    (["--arch-option", "2", "--block-depth", "2", "--activation", "relu"], (2, 2, "relu")),
    (["model.arch_option=1", "--block-depth", "3", "model.activation=tanh"], (1, 3, "tanh")),
])
def test_flags_and_overrides_describe_the_network(tmp_path, flags, model_cfg):
    ref = make_reference(*model_cfg, seed=5)
    src = save_lightning(ref, tmp_path / "official.ckpt")
    assert main(src, tmp_path / "out.pt", *flags) == 0
    m = load_checkpoint(tmp_path / "out.pt")["config"]["model"]
    assert (m["arch_option"], m["block_depth"], m["activation"]) == model_cfg
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert rel_l2(load_model(tmp_path / "out.pt")(x, LABELS), ref(x, tokens(LABELS))) < 1e-4


def test_wrong_shape_is_one_line(tmp_path):
    state = official_state(make_reference())
    state["scratch.layer2_rn.weight"] = torch.zeros(FEATURES, 48, 3, 3)
    torch.save({"state_dict": {"net." + k: v for k, v in state.items()}}, tmp_path / "bad.ckpt")
    proc = run_tool(tmp_path / "bad.ckpt", tmp_path / "out.pt", "--config", SMOKE)
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {tmp_path / 'bad.ckpt'}: key 'scratch.layer2_rn.weight' has shape [32, 48, 3, 3]")
    assert "[32, 64, 3, 3]" in err
    assert not (tmp_path / "out.pt").exists()


def test_conversion_errors_are_one_line(tmp_path, capsys):
    save_lightning(make_reference(arch_option=2, block_depth=2), tmp_path / "a2.ckpt")
    assert main(tmp_path / "a2.ckpt", tmp_path / "out.pt") == 2
    assert "pass --arch-option 1|2" in one_error_line(capsys)
    state = official_state(make_reference())
    state["scratch.auxlayer.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "bad.pth")
    assert main(tmp_path / "bad.pth", tmp_path / "out.pt") == 2
    assert "unexpected key 'scratch.auxlayer.weight'" in one_error_line(capsys)
    torch.save({"weight": torch.zeros(2)}, tmp_path / "x.pt")
    assert main(tmp_path / "x.pt", tmp_path / "out.pt") == 2
    assert one_error_line(capsys).startswith(f"error: {tmp_path / 'x.pt'}: no 'pretrained.model.*' keys: not an official")
    src = save_lightning(make_reference(), tmp_path / "pl.ckpt",
                         extra={"hyper_parameters": argparse.Namespace(backbone="clip_vitl16_384")})
    assert main(src, tmp_path / "out.pt") == 2
    assert one_error_line(capsys).endswith("; re-run with --trust-pickle if you trust this file")
    assert main(src, tmp_path / "out.pt", "--trust-pickle") == 0
    assert load_checkpoint(tmp_path / "out.pt")["format"] == "lseg-hpc"


def test_bad_flags_are_one_line_before_any_work(tmp_path, capsys):
    src = save_lightning(make_reference(), tmp_path / "official.ckpt")
    cases = [
        (["--block-depth", "2"], "error: --block-depth/--activation describe the arch_option 1/2 block"),
        (["--activation", "relu"], "error: --block-depth/--activation describe the arch_option 1/2 block"),
        (["model.block_depth=-1", "--arch-option", "1"], "error: model.block_depth: must be >= 0"),
        (["model.features=lots"], "error: model.features: expected an integer"),
        (["model.featurs=8"], "error: unknown config key 'model.featurs' (did you mean 'model.features'?)"),
    ]
    for flags, message in cases:
        assert main(src, tmp_path / "out.pt", *flags) == 2
        assert one_error_line(capsys).startswith(message)
    assert main(src, src) == 2
    assert one_error_line(capsys) == f"error: {src}: the output would overwrite the input; choose another path"
    with pytest.raises(SystemExit) as exit_info:  # argparse's own usage error (exit 2) for a malformed number
        main(src, tmp_path / "out.pt", "--block-depth", "-1")
    assert exit_info.value.code == 2 and "--block-depth: must be >= 0, got -1" in capsys.readouterr().err
    assert not (tmp_path / "out.pt").exists() and torch.load(src, weights_only=True)["epoch"] == 3


def test_backbone_flag_checks_the_file(tmp_path, capsys):
    """--backbone (ours or lang-seg's name) must match the encoder the file holds: one line naming it."""
    src = save_lightning(make_rn_reference(), tmp_path / "fss_rn101.ckpt")
    assert main(src, tmp_path / "out.pt", "--backbone", "clip_vitl16_384") == 2
    assert one_error_line(capsys) == (f"error: {src}: the file holds the image encoder resnet101 (official "
                                      "clip_resnet101), not clip_vitl16_384; convert it with --backbone clip_resnet101")
    assert not (tmp_path / "out.pt").exists()
    # --config smoke.yaml describes a ViT; the flag (and the file) say ResNet: the file's encoder is built
    assert main(src, tmp_path / "out.pt", "--backbone", "clip_resnet101") == 0
    assert "backbone resnet101, arch_option 0" in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "out.pt")["config"]["model"]["backbone"] == "resnet101"
    vit = save_lightning(make_reference(), tmp_path / "fss_l16.ckpt")
    assert main(vit, tmp_path / "out2.pt", "--backbone", "resnet101") == 2
    assert one_error_line(capsys).endswith("holds the image encoder vit_tiny_patch16_224, not resnet101; "
                                           "convert it with --backbone vit_tiny_patch16_224")
    with pytest.raises(SystemExit) as exit_info:
        main(vit, tmp_path / "out2.pt", "--backbone", "resnet50")
    assert exit_info.value.code == 2 and "--backbone: invalid choice: 'resnet50'" in capsys.readouterr().err
