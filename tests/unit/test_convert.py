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
from lseg.config import Config, ConfigError, ModelConfig, load_config
from lseg.models import build_model, load_model
from lseg.models.convert import ConversionError, convert_checkpoint, convert_state_dict, detect_backbone

from helpers import SMOKE
from reference_lseg import (FEATURES, VITB32, VITL16, RefLSegNet, make_reference, official_state, rel_l2,
                            save_lightning, tokens)
from reference_lseg_zs import RefLSegRNNetZS, imagenet_normalize, make_rn_reference

LABELS = ["dog", "grass", "other", "traffic light"]


def smoke(**model) -> Config:
    cfg = load_config(SMOKE)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **model))


def convert_to(src, dst, backbone=None, **model):
    payload = convert_checkpoint(src, smoke(**model), backbone=backbone)
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


# ------------------------------------------------------------------ zero-shot networks and other backbones
PAIRS = [["others", "dog"], ["others", "traffic light"]]


def _zs_parity(ref, model, x_official, x_ours) -> float:
    """Official zero-shot forward (each sample against its own ("others", class) pair) vs ours per sample."""
    with torch.no_grad():
        want = ref.forward_zs(x_official, [tokens(p) for p in PAIRS])
        got = torch.cat([model(x_ours[i:i + 1], PAIRS[i]) for i in range(len(PAIRS))])
    assert got.shape == want.shape == (len(PAIRS), 2, *x_ours.shape[-2:])
    return rel_l2(got, want)


def test_zs_resnet101_parity(tmp_path):
    """The zoo's RN101 network (pascal/coco folds, fss_rn101): real ResNet-101, smoke-size decoder and text.
    The official net sees ImageNet-normalised pixels, ours the pipeline's mean = std = 0.5 ones."""
    ref = make_rn_reference()
    src = save_lightning(ref, tmp_path / "pascal_fold0.ckpt")
    payload = convert_checkpoint(src, smoke(), backbone="clip_resnet101")  # smoke: tiny decoder and text tower
    m = payload["config"]["model"]
    assert (m["backbone"], m["hooks"], m["reassemble_channels"]) == ("resnet101", None, None)
    n_dead = len([k for k in ref.state_dict() if k.startswith("scratch.refinenet4.resConfUnit1.")]) + 2 + 1
    assert payload["converted_from"]["dropped_tensors"] == n_dead  # + CLIP visual (2) and logit_scale
    model = load_model(tmp_path / "converted.pt", checkpoint=payload)  # the file round trip is tested above
    assert model.image.input_norm is not None and len(model.image.reassemble) == 0
    x01 = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    assert _zs_parity(ref, model, imagenet_normalize(x01), (x01 - 0.5) / 0.5) < 1e-5


def test_zs_vit_parity(tmp_path):
    """The ViT zero-shot network (fss_l16) is LSegNet without spatial block: same keys, same forward."""
    ref = make_reference(seed=4)
    src = save_lightning(ref, tmp_path / "fss_l16.ckpt")
    convert_to(src, tmp_path / "converted.pt")
    model = load_model(tmp_path / "converted.pt")
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(3))
    assert _zs_parity(ref, model, x, x) < 1e-5


@pytest.mark.slow
def test_vitb32_parity(tmp_path):
    """clip_vitb32_384: real ViT-B/32 (hooks 2/5/8/11, reassemble 96/192/384/768 at x8/x4/x2/x1 of the 1/32
    grid), smoke-size decoder and text tower."""
    sz = dataclasses.replace(VITB32, features=FEATURES, txt_width=64, txt_layers=2, txt_heads=2, embed=64)
    ref = make_reference(sz=sz, seed=6)
    src = save_lightning(ref, tmp_path / "b32.ckpt")
    assert convert_to(src, tmp_path / "out.pt")["config"]["model"]["backbone"] == "vit_base_patch32_384"
    model = load_model(tmp_path / "out.pt")
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        maps = ref.encode(x)
        tokens_, grid = model.image.backbone(x)
        ours = [r(t, grid) for r, t in zip(model.image.reassemble, tokens_)]
        assert [tuple(m.shape[1:]) for m in ours] == [tuple(m.shape[1:]) for m in maps] == [
            (96, 16, 24), (192, 8, 12), (384, 4, 6), (768, 2, 3)]
        assert max(rel_l2(a, b) for a, b in zip(ours, maps)) < 1e-5
        assert rel_l2(model(x, LABELS), ref(x, tokens(LABELS))) < 1e-5


@pytest.mark.parametrize("backbone,sizes", [("vit_large_patch16_384", VITL16), ("vit_base_patch32_384", VITB32),
                                            ("resnet101", None)])
def test_real_size_key_sets(backbone, sizes):
    """Official-size networks, shapes only (meta device): every official key maps onto our model with its
    shape, the encoder is recognised, and the reference has the official parameter counts."""
    with torch.device("meta"):
        ref = RefLSegNet(sz=sizes) if sizes else RefLSegRNNetZS(sz=VITL16)
        expected = build_model(dataclasses.replace(ModelConfig(), backbone=backbone)).state_dict()
    official = dict(ref.state_dict())
    assert detect_backbone(official) == backbone
    state, dropped = convert_state_dict(official, expected, ModelConfig())
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: tuple(v.shape) for k, v in expected.items()}
    count = lambda prefix: sum(p.numel() for k, p in ref.named_parameters() if k.startswith(prefix))  # noqa: E731
    scratch = {"vit_large_patch16_384": 16_328_192, "vit_base_patch32_384": 13_157_888, "resnet101": 18_687_488}
    assert count("scratch.") == scratch[backbone]
    if backbone == "vit_large_patch16_384":
        assert (count("pretrained.model."), count("pretrained.act_postprocess")) == (304_715_752, 22_815_232)
        assert len([k for k in official if k.startswith("pretrained.")]) == 318
    elif backbone == "vit_base_patch32_384":
        assert count("pretrained.model.") == 88_297_192
    else:  # torchvision ResNet-101 without its classifier (44,549,160 - 2,049,000)
        assert count("pretrained.") == 42_500_160
        # dead: refinenet4.resConfUnit1 (2 convs + 2 BatchNorms x 5 tensors), CLIP logit_scale + visual stand-in (2)
        assert dropped == 2 + 2 * 5 + 1 + 2
    assert count("clip_pretrained.") - count("clip_pretrained.visual.") - 1 == 63_428_096  # text tower


def test_wrong_backbone_flag_names_what_the_file_holds(tmp_path):
    src = save_lightning(make_reference(), tmp_path / "vit.ckpt")
    with pytest.raises(ConversionError) as err:
        convert_checkpoint(src, smoke(), backbone="clip_resnet101")
    assert str(err.value) == (f"{src}: the file holds the image encoder vit_tiny_patch16_224, not clip_resnet101; "
                              "convert it with --backbone vit_tiny_patch16_224")
    with pytest.raises(ConfigError, match="model.backbone: 'resnet50' is not supported; supported: "
                                          "vit_large_patch16_384 \\(official clip_vitl16_384\\)"):
        convert_checkpoint(src, smoke(), backbone="resnet50")
    state = official_state(make_reference())
    state["pretrained.model.patch_embed.proj.weight"] = torch.zeros(192, 3, 14, 14)
    torch.save(state, tmp_path / "p14.pth")
    with pytest.raises(ConversionError, match="holds a ViT of width 192 with 14x14 patches, which is none of the "
                                              "supported backbones: vit_large_patch16_384 \\(official"):
        convert_checkpoint(tmp_path / "p14.pth", smoke())
