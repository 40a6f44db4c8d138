"""lseg.models.convert against an independent tiny re-implementation of the official LSegNet.

The reference (tests/reference_lseg.py) has the official module names, so its state dict has the
official keys; converted weights must give its outputs through our model.
"""
from __future__ import annotations

import argparse
import dataclasses

import pytest
import torch

from lseg.checkpoint_io import CheckpointError, save_atomic
from lseg.config import Config, load_config
from lseg.models import load_model
from lseg.models.convert import ConversionError, convert_checkpoint

from helpers import SMOKE
from reference_lseg import FEATURES, make_reference, official_state, rel_l2, save_lightning, tokens

LABELS = ["dog", "grass", "other", "traffic light"]


def smoke(**model) -> Config:
    cfg = load_config(SMOKE)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **model))


def convert_to(src, dst, **model):
    payload = convert_checkpoint(src, smoke(**model))
    save_atomic(payload, dst)
    return payload


def test_parity_arch0(tmp_path):
    ref = make_reference()
    src = save_lightning(ref, tmp_path / "official.ckpt")
    payload = convert_to(src, tmp_path / "converted.pt")
    assert payload["format"] == "lseg-hpc" and payload["converted_from"]["source_format"] == "lightning"
    assert payload["config"]["model"]["pretrained"] is False
    # dead: visual (2) + clip logit_scale + ViT norm (2) + head (2) + refinenet4.resConfUnit1 (4 conv/bn x ...)
    n_dead_rcu = len([k for k in ref.state_dict() if k.startswith("scratch.refinenet4.resConfUnit1.")])
    assert payload["converted_from"]["dropped_tensors"] == 2 + 1 + 2 + 2 + n_dead_rcu
    assert all(v.dtype in (torch.float32, torch.int64) for v in payload["model"].values())

    model = load_model(tmp_path / "converted.pt")
    torch.manual_seed(1)
    for shape in [(2, 3, 64, 96), (1, 3, 96, 64)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            want = ref(x, tokens(LABELS))
            got = model(x, LABELS)
        assert got.shape == want.shape == (shape[0], len(LABELS), shape[2], shape[3])
        assert rel_l2(got, want) < 1e-4, rel_l2(got, want)


@pytest.mark.parametrize("arch_option,block_depth,activation", [
    (1, 0, "relu"), (1, 2, "lrelu"), (1, 3, "tanh"), (2, 0, "lrelu"), (2, 2, "relu"), (2, 3, "tanh"),
])
def test_parity_spatial_blocks(tmp_path, arch_option, block_depth, activation):
    ref = make_reference(arch_option, block_depth, activation, seed=arch_option * 10 + block_depth)
    src = save_lightning(ref, tmp_path / "official.ckpt")
    convert_to(src, tmp_path / "converted.pt", arch_option=arch_option, block_depth=block_depth,
               activation=activation)
    model = load_model(tmp_path / "converted.pt")
    assert model.image.spatial is not None and model.image.spatial.repeats == max(block_depth, 1)
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = ref(x, tokens(LABELS))
        got = model(x, LABELS)
    assert rel_l2(got, want) < 1e-4, rel_l2(got, want)


def test_plain_state_dict_input(tmp_path):
    ref = make_reference(seed=3)
    torch.save(official_state(ref), tmp_path / "plain.pth")
    assert convert_to(tmp_path / "plain.pth", tmp_path / "out.pt")["converted_from"]["source_format"] == "state-dict"
    model = load_model(tmp_path / "out.pt")
    x = torch.randn(1, 3, 32, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert rel_l2(model(x, LABELS[:2]), ref(x, tokens(LABELS[:2]))) < 1e-4


def _bad_lightning(tmp_path, edit) -> str:
    state = official_state(make_reference())
    edit(state)
    path = tmp_path / "bad.ckpt"
    torch.save({"state_dict": {"net." + k: v for k, v in state.items()}}, path)
    return str(path)


def test_wrong_shape_is_named(tmp_path):
    src = _bad_lightning(tmp_path, lambda s: s.update({"scratch.layer2_rn.weight": torch.zeros(FEATURES, 48, 3, 3)}))
    with pytest.raises(ConversionError) as err:
        convert_checkpoint(src, smoke())
    msg = str(err.value)
    assert msg.startswith(f"{src}: key 'scratch.layer2_rn.weight' has shape [32, 48, 3, 3]") and "\n" not in msg
    assert "[32, 64, 3, 3]" in msg


def test_missing_key_is_named(tmp_path):
    src = _bad_lightning(tmp_path, lambda s: s.pop("scratch.refinenet2.out_conv.bias"))
    with pytest.raises(ConversionError, match="missing key 'scratch.refinenet2.out_conv.bias'"):
        convert_checkpoint(src, smoke())


def test_unknown_key_is_named(tmp_path):
    state = official_state(make_reference())
    state["scratch.auxlayer.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ConversionError, match="unexpected key 'scratch.auxlayer.weight'"):
        convert_checkpoint(tmp_path / "bad.pth", smoke())


def test_head_block_needs_arch_option(tmp_path):
    save_lightning(make_reference(arch_option=2, block_depth=2), tmp_path / "a2.ckpt")
    with pytest.raises(ConversionError, match="pass --arch-option"):
        convert_checkpoint(tmp_path / "a2.ckpt", smoke())
    # and the opposite: arch_option 1 requested, file has no head_block weights
    save_lightning(make_reference(), tmp_path / "a0.ckpt")
    with pytest.raises(ConversionError, match="missing key 'scratch.head_block.depthwise.depthwise.weight'"):
        convert_checkpoint(tmp_path / "a0.ckpt", smoke(arch_option=1))


def test_pickled_objects_need_trust_pickle(tmp_path):
    src = save_lightning(make_reference(), tmp_path / "pl.ckpt",
                         extra={"hyper_parameters": argparse.Namespace(backbone="clip_vitl16_384")})
    with pytest.raises(CheckpointError, match="re-run with --trust-pickle if you trust this file"):
        convert_checkpoint(src, smoke())
    assert convert_checkpoint(src, smoke(), trust_pickle=True)["format"] == "lseg-hpc"


def test_not_official_checkpoint(tmp_path):
    torch.save({"weight": torch.zeros(2)}, tmp_path / "x.pt")
    with pytest.raises(ConversionError, match=f"{tmp_path / 'x.pt'}: no 'pretrained.model.\\*' keys: not an official"):
        convert_checkpoint(tmp_path / "x.pt", smoke())
    with pytest.raises(CheckpointError, match="not an lseg-hpc checkpoint"):
        load_model(tmp_path / "x.pt")
