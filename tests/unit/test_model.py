"""lseg.models: shapes, exact parameter counts, gradients, precision, text cache, loading, weights."""
from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lseg.checkpoint_io import FORMAT, CheckpointError, save_atomic
from lseg.config import ConfigError, load_config, to_dict
from lseg.engine.loss import upsampled_segmentation_loss
from lseg.models import LSeg, WeightsError, build_model, load_model
from lseg.models.backbone import resize_pos_embed

from helpers import REPO as ROOT  # noqa: E402
SMOKE = ROOT / "configs" / "smoke.yaml"
LABELS = ["road", "sky", "person"]


def smoke_cfg(**overrides):
    return dataclasses.replace(load_config(SMOKE).model, **overrides)


@pytest.fixture(scope="module")
def model() -> LSeg:
    torch.manual_seed(0)
    return build_model(smoke_cfg()).eval()


def payload(m: LSeg, cfg_model=None, **extra) -> dict:
    cfg = load_config(SMOKE)
    cfg.model = cfg_model or m.config
    return {"format": FORMAT, "model": m.state_dict(), "config": to_dict(cfg), **extra}


# ------------------------------------------------------------------------------------ shapes
@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (1, 3, 64, 96), (1, 3, 96, 32), (1, 3, 48, 80)])
def test_output_shape(model, shape):
    """Square, non-square, and odd token grids (48/16 = 3) all give (B, N, H, W) fp32 logits."""
    with torch.no_grad():
        out = model(torch.randn(*shape), LABELS)
    assert out.shape == (shape[0], len(LABELS), shape[2], shape[3])
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    # |logit| <= logit_scale because both sides are unit vectors
    assert out.abs().max() <= 1 / 0.07 + 1e-4


def test_size_not_multiple_of_16(model):
    with pytest.raises(ValueError, match="multiple of the patch size 16"):
        model(torch.randn(1, 3, 64, 72), LABELS)


def test_pixel_embeddings_and_logit_formula(model):
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        pix = model.image.pixel_embeddings(x)
        txt = model.text.encode(LABELS)
        assert pix.shape == (1, 64, 32, 32)
        want = torch.einsum("bchw,nc->bnhw", pix / pix.norm(dim=1, keepdim=True), txt) / 0.07
        want = F.interpolate(want, size=(64, 64), mode="bilinear", align_corners=True)
        torch.testing.assert_close(model(x, LABELS), want, rtol=1e-5, atol=1e-5)


def test_zero_pixel_vector_gives_no_nan(model):
    pix = torch.zeros(1, 64, 4, 4)
    out = model.image.logits_from_embeddings(pix, model.text.encode(LABELS), (8, 8))
    assert torch.equal(out, torch.zeros(1, 3, 8, 8))


def test_pos_embed_resize_is_official_bilinear():
    """CLS kept; grid bilinear align_corners=False, no antialias (not timm's bicubic default)."""
    from timm.layers import resample_abs_pos_embed

    pe = torch.randn(1, 1 + 24 * 24, 8)
    out = resize_pos_embed(pe, (24, 24), (30, 20))
    grid = pe[:, 1:].reshape(1, 24, 24, 8).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(30, 20), mode="bilinear").permute(0, 2, 3, 1).reshape(1, 600, 8)
    assert torch.equal(out[:, :1], pe[:, :1])
    torch.testing.assert_close(out[:, 1:], want, rtol=0, atol=0)
    assert torch.equal(resize_pos_embed(pe, (24, 24), (24, 24)), pe)
    bicubic = resample_abs_pos_embed(pe, (30, 20), (24, 24), num_prefix_tokens=1)
    assert (bicubic - out).abs().max() > 1e-3  # timm's default really is different


# ------------------------------------------------------------------------------------ sizes
def test_official_parameter_counts_on_meta():
    cfg = load_config(ROOT / "configs" / "lseg_vitl16_480_mseg.yaml").model
    cfg = dataclasses.replace(cfg, pretrained=False)
    with torch.device("meta"):
        m = build_model(cfg)
        m1 = build_model(dataclasses.replace(cfg, arch_option=1, learnable_logit_scale=True))
    count = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    # official trainable 343,859,176 minus unused ViT head 1,025,000 + norm 2,048 and
    # refinenet4.resConfUnit1 1,180,672
    assert count(m.image) == 341_651_456
    assert count(m.image.backbone) == 303_688_704
    assert count(m.text) == 63_428_096
    assert count(m1.image) == 341_651_456 + 10 + 1
    assert len(m.image.backbone.model.blocks) == 24
    assert not hasattr(m.image.decoder.refinenet4, "resConfUnit1")
    assert all(b.attn.fused_attn for b in m.image.backbone.model.blocks)  # timm SDPA path


def test_param_groups_partition(model):
    groups = model.image.param_groups()
    ids = [id(p) for g in groups.values() for p in g]
    assert len(ids) == len(set(ids)) == len(list(model.image.parameters()))
    assert sum(p.numel() for p in groups["backbone"]) == sum(p.numel() for p in model.image.backbone.parameters())
    assert not any(p.requires_grad for p in model.text.parameters())


def test_hooks_out_of_range():
    with pytest.raises(ConfigError, match="model.hooks"):
        build_model(smoke_cfg(hooks=[2, 5, 8, 12]))


# ------------------------------------------------------------------------------------ gradients
def _loss(m: LSeg, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(m(x, LABELS), target, ignore_index=255)


def test_every_image_param_gets_a_grad_and_text_none():
    torch.manual_seed(0)
    m = build_model(smoke_cfg(arch_option=1, block_depth=2, learnable_logit_scale=True)).train()
    x = torch.randn(2, 3, 64, 48)
    target = torch.randint(0, 3, (2, 64, 48))
    _loss(m, x, target).backward()
    missing = [n for n, p in m.image.named_parameters() if p.grad is None]
    assert missing == []  # so DDP can run with find_unused_parameters=False
    assert all(p.grad is None and not p.requires_grad for p in m.text.parameters())
    assert m.image.logit_scale_log.grad.abs() > 0


def test_text_is_frozen_and_stays_eval(model):
    model.train()
    try:
        assert model.image.training
        assert not model.text.training and not any(mod.training for mod in model.text.modules())
    finally:
        model.eval()
    assert all(not p.requires_grad for p in model.text.parameters())


def test_grad_checkpointing_gives_same_grads():
    torch.manual_seed(0)
    m = build_model(smoke_cfg()).train()
    x = torch.randn(1, 3, 32, 64)
    target = torch.randint(0, 3, (1, 32, 64))
    grads = []
    for ckpt in (False, True):
        m.zero_grad(set_to_none=True)
        m.image.set_grad_checkpointing(ckpt)
        assert m.image.backbone.grad_checkpointing is ckpt and m.image.decoder.grad_checkpointing is ckpt
        _loss(m, x, target).backward()
        grads.append({n: p.grad.clone() for n, p in m.image.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-5, atol=1e-6, msg=name)


def _batchnorm_state(m: LSeg) -> dict[str, torch.Tensor]:
    return {n: b.clone() for n, b in m.image.named_buffers() if n.rsplit(".", 1)[-1] in
            ("running_mean", "running_var", "num_batches_tracked")}


@pytest.mark.parametrize("arch_option", [0, 2])
def test_checkpointed_step_updates_batchnorm_once(arch_option):
    """One checkpointed training step (ViT blocks, reassemble, fusion blocks with BatchNorm, head, each
    recomputed in backward) leaves the BatchNorm running statistics and batch counters exactly as
    one plain step does, and gives the same gradients."""
    torch.manual_seed(0)
    plain = build_model(smoke_cfg(arch_option=arch_option, block_depth=2, learnable_logit_scale=True)).train()
    ckpt = copy.deepcopy(plain)
    ckpt.image.set_grad_checkpointing(True)
    before = _batchnorm_state(plain)
    x = torch.randn(2, 3, 64, 48)
    target = torch.randint(0, 3, (2, 64, 48))
    target[0, :16] = 255
    for m in (plain, ckpt):
        upsampled_segmentation_loss(m.image(x, m.text.encode(LABELS), upsample=False), target).backward()
    after_plain, after_ckpt = _batchnorm_state(plain), _batchnorm_state(ckpt)
    assert len(after_plain) == 3 * 14  # 7 residual units x 2 BatchNorms
    for name, value in after_plain.items():
        assert torch.equal(after_ckpt[name], value), name
        if name.endswith("num_batches_tracked"):
            assert int(value) == 1, name  # updated once, not once more by the recomputation
        else:
            assert not torch.equal(value, before[name]), name  # the step did update it
    for (name, p), q in zip(plain.image.named_parameters(), ckpt.image.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-6, atol=1e-9, msg=name)


def test_checkpointing_keeps_far_fewer_tensors_for_backward():
    """What autograd holds between forward and backward (saved tensors, parameters excluded): with
    checkpointing only the inputs of the recomputed regions remain."""
    torch.manual_seed(0)
    m = build_model(smoke_cfg()).train()
    params = {p.untyped_storage()._cdata for p in m.image.parameters()}
    x, target = torch.randn(2, 3, 96, 96), torch.randint(0, 3, (2, 96, 96))

    def saved_mb() -> float:
        sizes: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            sizes[t.untyped_storage()._cdata] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            upsampled_segmentation_loss(m.image(x, m.text.encode(LABELS), upsample=False), target)
        return sum(v for k, v in sizes.items() if k not in params) / 2**20

    plain = saved_mb()
    m.image.set_grad_checkpointing(True)
    assert saved_mb() < plain / 5


def test_half_resolution_logit_map(model):
    """``upsample=False`` returns the map the loss upsamples; the official x2 bilinear upsample of it is
    exactly what the default forward returns."""
    x = torch.randn(2, 3, 64, 48)
    text = model.text.encode(LABELS)
    with torch.no_grad():
        low = model.image(x, text, upsample=False)
        assert low.shape == (2, 3, 32, 24) and low.dtype == torch.float32
        up = F.interpolate(low, size=(64, 48), mode="bilinear", align_corners=True)
        assert torch.equal(model.image(x, text), up)


def test_scaled_cosine_gradient_matches_autograd_of_the_formula():
    """The hand-written backward of the label dot-product equals autograd through F.normalize (float64),
    including an all-zero pixel vector (norm clamped to 1e-12)."""
    from lseg.models.lseg import _ScaledCosine

    torch.manual_seed(0)
    pixels = torch.randn(2, 6, 3, 5, dtype=torch.float64)
    pixels[0, :, 1, 1] = 0
    pixels.requires_grad_()
    text = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, 4, 3, 5, dtype=torch.float64)
    ours = torch.autograd.grad(_ScaledCosine.apply(pixels, text), (pixels, text), grad)
    want = torch.autograd.grad(torch.einsum("bchw,nc->bnhw", F.normalize(pixels, dim=1, eps=1e-12), text),
                               (pixels, text), grad)
    for a, b in zip(ours, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-9)
    small = torch.randn(1, 6, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_ScaledCosine.apply, (small, text))


def test_grad_checkpointing_from_config():
    m = build_model(smoke_cfg(grad_checkpointing=True))
    assert m.image.backbone.grad_checkpointing and m.image.decoder.grad_checkpointing


def test_bf16_autocast_logits_fp32(model):
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x, LABELS)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            pix = model.image.pixel_embeddings(x)
            out = model(x, LABELS)
    assert pix.dtype == torch.bfloat16  # autocast was active for the network
    assert out.dtype == torch.float32
    assert ((out - ref).norm() / ref.norm()).item() < 0.1


# ------------------------------------------------------------------------------------ text
def test_text_encode_cache_and_values(model):
    model.text.clear_cache()
    a = model.text.encode(LABELS)
    assert a.shape == (3, 64) and a.dtype == torch.float32 and not a.requires_grad
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(3))
    assert model.text.encode(list(LABELS)) is a  # cached per label tuple
    b = model.text.encode(LABELS[:1])
    assert b is not a
    torch.testing.assert_close(b[0], a[0], rtol=1e-5, atol=1e-6)  # batch-independent
    assert len(model.text._cache) == 2


def test_text_cache_cleared_on_load(model):
    m = build_model(smoke_cfg())
    before = m.text.encode(LABELS).clone()
    m.load_state_dict(model.state_dict())  # through the parent: the text post-hook must fire
    assert len(m.text._cache) == 0
    after = m.text.encode(LABELS)
    torch.testing.assert_close(after, model.text.encode(LABELS))
    assert not torch.allclose(before, after)


def test_label_errors(model):
    with pytest.raises(ValueError, match="empty label list"):
        model.text.encode([])
    with pytest.raises(ValueError, match=r"labels\[1\]: empty label"):
        model.text.encode(["dog", "  "])
    with pytest.raises(ValueError, match=r"labels\[2\]: .* 80 tokens.* at most 75"):
        model.text.encode(["dog", "cat", "word " * 80])
    with pytest.raises(ValueError, match="single string"):
        model.text.encode("dog")
    model.text.encode(["dog " * 75])  # exactly 75 tokens fits


# ------------------------------------------------------------------------------------ loading
def test_load_model_round_trip(model, tmp_path):
    save_atomic(payload(model), tmp_path / "ck.pt")
    loaded = load_model(tmp_path / "ck.pt")
    assert not loaded.training and not loaded.text.training
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(loaded(x, LABELS), model(x, LABELS))
    assert not any(p.requires_grad for p in loaded.text.parameters())
    assert all(p.requires_grad for p in loaded.image.parameters())


def test_load_model_ema(model, tmp_path):
    ema = {k[len("image."):]: v + 0.01 if v.is_floating_point() else v
           for k, v in model.state_dict().items() if k.startswith("image.")}
    save_atomic(payload(model, ema=ema), tmp_path / "ck.pt")
    loaded = load_model(tmp_path / "ck.pt", use_ema=True)
    torch.testing.assert_close(loaded.image.head1.bias, model.image.head1.bias + 0.01)
    torch.testing.assert_close(loaded.text.tower.ln_final.weight, model.text.tower.ln_final.weight)
    save_atomic(payload(model), tmp_path / "noema.pt")
    with pytest.raises(CheckpointError, match="no 'ema'"):
        load_model(tmp_path / "noema.pt", use_ema=True)


def test_load_model_architecture_mismatch(model, tmp_path):
    path = tmp_path / "other.pt"
    save_atomic(payload(model, cfg_model=smoke_cfg(features=48)), path)
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    assert "'image.decoder.layer1_rn.weight' has shape [32, 32, 3, 3] in the checkpoint but [48, 32, 3, 3]" in msg

    state = model.state_dict()
    del state["image.head1.bias"]
    save_atomic({**payload(model), "model": state}, path)
    with pytest.raises(CheckpointError, match="missing key 'image.head1.bias'"):
        load_model(path)
    save_atomic({**payload(model, cfg_model=smoke_cfg(arch_option=2))}, path)
    with pytest.raises(CheckpointError, match="missing key 'image.spatial.conv.weight'"):
        load_model(path)


# ------------------------------------------------------------------------------------ weights
def test_pretrained_missing_fails_fast(tmp_path):
    cfg = smoke_cfg(pretrained=True, weights_cache=str(tmp_path / "cache"))
    start = time.monotonic()
    with pytest.raises(WeightsError) as err:
        build_model(cfg)
    assert time.monotonic() - start < 5
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "cache") in msg
    assert f"python tools/prepare_weights.py --cache-dir {tmp_path / 'cache'}" in msg


def _fake_hub_file(cache: Path, repo: str, filename: str, state: dict) -> None:
    """A file in the Hugging Face cache layout (what hf_hub_download leaves behind)."""
    from safetensors.torch import save_file

    root = cache / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snap / filename))


def test_pretrained_weights_load_from_cache(tmp_path):
    """pretrained=True reads timm + open_clip files from the cache (no network); text keeps only text keys."""
    import timm

    from lseg.models import weights

    cfg = smoke_cfg(pretrained=True, weights_cache=str(tmp_path))
    torch.manual_seed(5)
    vit = timm.create_model(cfg.backbone, pretrained=False).state_dict()  # with head and norm
    src = weights.timm_source(cfg.backbone)
    _fake_hub_file(tmp_path, src.repo_id, "model.safetensors", vit)

    rand = build_model(smoke_cfg())
    clip = {k[len("text.tower."):]: torch.randn_like(v) for k, v in rand.state_dict().items()
            if k.startswith("text.tower.")}
    clip.update({"visual.proj": torch.randn(8, 64), "logit_scale": torch.tensor(4.6)})
    src = weights.open_clip_source(cfg.text.arch, cfg.text.pretrained)
    _fake_hub_file(tmp_path, src.repo_id, src.filenames[0], clip)

    m = build_model(cfg)
    torch.testing.assert_close(m.image.backbone.model.blocks[3].attn.qkv.weight, vit["blocks.3.attn.qkv.weight"])
    torch.testing.assert_close(m.image.backbone.model.pos_embed, vit["pos_embed"])
    torch.testing.assert_close(m.text.tower.text_projection, clip["text_projection"])
    assert not any(p.requires_grad for p in m.text.parameters())


def test_prepare_weights_cli_offline(tmp_path, monkeypatch, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("prepare_weights_tool", ROOT / "tools" / "prepare_weights.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    with pytest.raises(SystemExit) as exc:
        tool.main(["--help"])
    assert exc.value.code == 0 and "--cache-dir" in capsys.readouterr().out
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    assert tool.main(["--cache-dir", str(tmp_path / "empty")]) == 2
    assert time.monotonic() - start < 5
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert str(tmp_path / "empty") in err and "HF_HUB_OFFLINE" in err and "vit_large_patch16_384" in err


@pytest.mark.slow
def test_vitl_forward_backward_small_input():
    """Full-size official config on CPU at a small non-square input (not 480): a few seconds of compute."""
    cfg = dataclasses.replace(load_config(ROOT / "configs" / "lseg_vitl16_480_mseg.yaml").model, pretrained=False)
    m = build_model(cfg).train()
    x = torch.randn(1, 3, 64, 96)
    out = m(x, ["a", "b"])
    assert out.shape == (1, 2, 64, 96)
    out.float().logsumexp(1).mean().backward()
    assert all(p.grad is not None for p in m.image.parameters())


# ------------------------------------------------------------------------------------ other backbones
def rn_cfg(**overrides):
    """The zero-shot ResNet-101 image encoder with the smoke decoder and text tower."""
    return smoke_cfg(backbone="resnet101", **overrides)


def test_unsupported_backbone_is_one_config_error():
    with pytest.raises(ConfigError) as err:
        build_model(smoke_cfg(backbone="resnet50"))
    assert str(err.value) == (
        "model.backbone: 'resnet50' is not supported; supported: vit_large_patch16_384 (official clip_vitl16_384), "
        "vit_base_patch32_384 (official clip_vitb32_384), resnet101 (official clip_resnet101), vit_tiny_patch16_224")
    with pytest.raises(ConfigError, match="model.hooks: resnet101 has none"):
        build_model(smoke_cfg(backbone="resnet101", hooks=[2, 5, 8, 11]))


def test_official_backbone_sizes_on_meta():
    """Image-side parameters of the other official encoders (official counts minus the never-used ones:
    ViT norm + head, refinenet4.resConfUnit1 = 1,180,672)."""
    with torch.device("meta"):
        rn = build_model(dataclasses.replace(load_config(None).model, backbone="resnet101"))
        b32 = build_model(dataclasses.replace(load_config(None).model, backbone="vit_base_patch32_384"))
    count = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    # torchvision ResNet-101 without fc; scratch 256 * (256+512+1024+2048) * 9 + fusion + head1
    assert count(rn.image.backbone) == 42_500_160 and count(rn.image) == 42_500_160 + 18_687_488 - 1_180_672
    # official ViT-B/32 88,297,192 - head 769,000 - norm 1,536; reassemble 7,599,168; scratch 13,157,888
    assert count(b32.image.backbone) == 87_526_656
    assert count(b32.image) == 87_526_656 + 7_599_168 + 13_157_888 - 1_180_672
    assert [tuple(r.resample.weight.shape) for r in b32.image.reassemble[:3]] == [
        (96, 96, 8, 8), (192, 192, 4, 4), (384, 384, 2, 2)]
    assert isinstance(b32.image.reassemble[3].resample, torch.nn.Identity)
    assert b32.image.backbone.hooks == [2, 5, 8, 11] and b32.image.backbone.patch_size == 32
    assert rn.image.input_norm is not None and b32.image.input_norm is None


def test_resnet_input_renormalisation_equals_imagenet_normalisation():
    """The pipeline's (x - 0.5) / 0.5 images, renormalised in the model, are what the official loader gives
    the ResNet: (x - ImageNet mean) / ImageNet std (to float rounding); the encoder then computes exactly
    torchvision's stages."""
    import torchvision

    from lseg.models.backbone import IMAGENET_MEAN, IMAGENET_STD, Renormalize

    x01 = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(Renormalize(IMAGENET_MEAN, IMAGENET_STD)((x01 - 0.5) / 0.5), (x01 - mean) / std,
                               rtol=0, atol=1e-6)
    torch.manual_seed(0)
    m = build_model(rn_cfg()).eval()
    tv = torchvision.models.resnet101()
    tv.load_state_dict({**m.image.backbone.model.state_dict(), **tv.fc.state_dict(prefix="fc.")})
    tv.eval()
    with torch.no_grad():
        x = m.image.input_norm((x01 - 0.5) / 0.5)
        ours = m.image.backbone(x)
        x = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        for k, got in enumerate(ours, start=1):
            x = getattr(tv, f"layer{k}")(x)
            assert got.shape == x.shape == (2, 256 * 2 ** (k - 1), 64 // 2 ** (k + 1), 96 // 2 ** (k + 1))
            assert torch.equal(got, x)


@pytest.mark.slow
def test_resnet_checkpointing_channels_last_and_text_path():
    """ResNet-101 encoder: activation checkpointing updates every BatchNorm (its 104 and the decoder's 14) once
    and gives the plain gradients; channels_last and the precomputed-text path give the same logits."""
    torch.manual_seed(0)
    plain = build_model(rn_cfg()).train()
    ckpt = copy.deepcopy(plain)
    ckpt.image.set_grad_checkpointing(True)
    assert ckpt.image.backbone.grad_checkpointing
    x, target = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    before = _batchnorm_state(plain)
    for m in (plain, ckpt):
        upsampled_segmentation_loss(m.image(x, m.text.encode(LABELS), upsample=False), target).backward()
    after_plain, after_ckpt = _batchnorm_state(plain), _batchnorm_state(ckpt)
    assert len(after_plain) == 3 * (104 + 14)
    for name, value in after_plain.items():
        assert torch.equal(after_ckpt[name], value), name
        if name.endswith("num_batches_tracked"):
            assert int(value) == 1, name
        else:
            assert not torch.equal(value, before[name]), name
    for (name, p), q in zip(plain.image.named_parameters(), ckpt.image.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
    plain.eval()
    with torch.no_grad():
        want = plain(x, LABELS)
        torch.testing.assert_close(plain.image(x, plain.text.encode(LABELS)), want, rtol=0, atol=0)
        plain.image.to(memory_format=torch.channels_last)
        got = plain(x.contiguous(memory_format=torch.channels_last), LABELS)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_resnet_pretrained_weights_load_from_cache(tmp_path):
    """model.pretrained=true reads torchvision's ImageNet ResNet-101 (the Hub copy timm/resnet101.tv_in1k,
    torchvision key names, classifier dropped) from the cache, never the network."""
    import torchvision

    from lseg.models import weights

    cfg = rn_cfg(pretrained=True, weights_cache=str(tmp_path))
    torch.manual_seed(7)
    tv = torchvision.models.resnet101().state_dict()
    src = weights.timm_source("resnet101.tv_in1k")
    assert src.repo_id == "timm/resnet101.tv_in1k"
    _fake_hub_file(tmp_path, src.repo_id, "model.safetensors", tv)
    rand = build_model(smoke_cfg())
    clip = {k[len("text.tower."):]: v for k, v in rand.state_dict().items() if k.startswith("text.tower.")}
    src = weights.open_clip_source(cfg.text.arch, cfg.text.pretrained)
    _fake_hub_file(tmp_path, src.repo_id, src.filenames[0], clip)
    m = build_model(cfg)
    torch.testing.assert_close(m.image.backbone.model.layer3[7].conv2.weight, tv["layer3.7.conv2.weight"])
    torch.testing.assert_close(m.image.backbone.model.bn1.running_var, tv["bn1.running_var"])
    tv["layer1.0.conv1.weight"] = torch.zeros(3)
    _fake_hub_file(tmp_path, "timm/resnet101.tv_in1k", "model.safetensors", tv)
    with pytest.raises(WeightsError, match="not a ResNet-101 ImageNet weight file \\('layer1.0.conv1.weight'"):
        build_model(cfg)
