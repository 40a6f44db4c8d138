"""tools/convert_langseg.py against an independent tiny re-implementation of the official LSegNet.

The reference below is written from the spec (shared/reference/langseg_spec.md §1), with the
official module names, so its state dict has the official keys. It shares nothing with lseg.models
except the CLIP tokenizer (token ids are an input, not part of the network).
"""
from __future__ import annotations

import argparse
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lseg.checkpoint_io import CheckpointError, load_checkpoint
from lseg.models import load_model

from helpers import REPO as ROOT  # noqa: E402
SMOKE = ROOT / "configs" / "smoke.yaml"
TOOL = ROOT / "tools" / "convert_langseg.py"
LABELS = ["dog", "grass", "other", "traffic light"]

# Sizes of configs/smoke.yaml: vit_tiny_patch16_224 (dim 192, 12 blocks, 3 heads, 14x14 grid),
# hooks [2,5,8,11], reassemble [32,64,128,128], features 32, text width 64 / 2 layers / 2 heads / embed 64.
VIT_DIM, VIT_DEPTH, VIT_HEADS, VIT_GRID = 192, 12, 3, 14
HOOKS, CHANNELS, FEATURES = [2, 5, 8, 11], [32, 64, 128, 128], 32
TXT_WIDTH, TXT_LAYERS, TXT_HEADS, EMBED, VOCAB, CTX = 64, 2, 2, 64, 49408, 77


# ------------------------------------------------------------------ reference: image encoder (timm 0.4 ViT)
class RefAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5).softmax(-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, n, d))


class RefMlp(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class RefBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn, self.mlp = RefAttention(dim, heads), RefMlp(dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class RefViT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.randn(1, 1, VIT_DIM) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + VIT_GRID ** 2, VIT_DIM) * 0.5)
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, VIT_DIM, 16, 16)
        self.blocks = nn.ModuleList(RefBlock(VIT_DIM, VIT_HEADS) for _ in range(VIT_DEPTH))
        self.norm = nn.LayerNorm(VIT_DIM, eps=1e-6)  # dead in LSeg
        self.head = nn.Linear(VIT_DIM, 1000)  # dead in LSeg


class RefReadout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Linear(2 * VIT_DIM, VIT_DIM), nn.GELU())


def ref_act_postprocess(k: int) -> nn.Sequential:
    c = CHANNELS[k]
    layers = [RefReadout(), nn.Identity(), nn.Identity(), nn.Conv2d(VIT_DIM, c, 1)]  # 1, 2: Transpose, Unflatten
    if k == 0:
        layers.append(nn.ConvTranspose2d(c, c, 4, stride=4))
    elif k == 1:
        layers.append(nn.ConvTranspose2d(c, c, 2, stride=2))
    elif k == 3:
        layers.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
    return nn.Sequential(*layers)


# ------------------------------------------------------------------ reference: decoder ("scratch")
class RefRCU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(FEATURES, FEATURES, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(FEATURES, FEATURES, 3, padding=1, bias=False)
        self.bn1, self.bn2 = nn.BatchNorm2d(FEATURES), nn.BatchNorm2d(FEATURES)

    def forward(self, x):
        out = self.bn1(self.conv1(F.relu(x)))
        out = self.bn2(self.conv2(F.relu(out)))
        return out + x


class RefFusion(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.resConfUnit1, self.resConfUnit2 = RefRCU(), RefRCU()
        self.out_conv = nn.Conv2d(FEATURES, FEATURES, 1)

    def forward(self, *xs):
        out = xs[0]
        if len(xs) == 2:
            out = out + self.resConfUnit1(xs[1])
        out = self.resConfUnit2(out)
        out = F.interpolate(out, scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(out)


class RefHeadBlock(nn.Module):
    def __init__(self, arch_option: int, activation: str) -> None:
        super().__init__()
        self.depthwise = nn.Module()
        self.depthwise.depthwise = nn.Conv2d(1, 1, 3, padding=1)
        self.arch_option = arch_option
        self.act = {"relu": nn.ReLU(), "lrelu": nn.LeakyReLU(), "tanh": nn.Tanh()}[activation]

    def forward(self, x, act=True):
        c, h, w = x.shape[1:]
        y = self.depthwise.depthwise(x.reshape(-1, 1, h, w)).view(-1, c, h, w)
        if self.arch_option == 1:
            y = y + x.max(dim=1, keepdim=True)[0]
        return self.act(y) if act else y


# ------------------------------------------------------------------ reference: OpenAI CLIP text side
class RefMHA(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.in_proj_weight = nn.Parameter(torch.randn(3 * TXT_WIDTH, TXT_WIDTH) * TXT_WIDTH ** -0.5)
        self.in_proj_bias = nn.Parameter(torch.randn(3 * TXT_WIDTH) * 0.02)
        self.out_proj = nn.Linear(TXT_WIDTH, TXT_WIDTH)

    def forward(self, x, mask):
        b, n, d = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, n, TXT_HEADS, d // TXT_HEADS).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1) / math.sqrt(d // TXT_HEADS) + mask).softmax(-1)
        return self.out_proj((att @ v).transpose(1, 2).reshape(b, n, d))


class RefResBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(TXT_WIDTH), nn.LayerNorm(TXT_WIDTH)
        self.attn = RefMHA()
        self.mlp = nn.Module()
        self.mlp.c_fc, self.mlp.c_proj = nn.Linear(TXT_WIDTH, 4 * TXT_WIDTH), nn.Linear(4 * TXT_WIDTH, TXT_WIDTH)

    def forward(self, x, mask):
        x = x + self.attn(self.ln_1(x), mask)
        h = self.mlp.c_fc(self.ln_2(x))
        return x + self.mlp.c_proj(h * torch.sigmoid(1.702 * h))  # QuickGELU


class RefCLIP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(VOCAB, TXT_WIDTH)
        self.positional_embedding = nn.Parameter(torch.randn(CTX, TXT_WIDTH) * 0.01)
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList(RefResBlock() for _ in range(TXT_LAYERS))
        self.ln_final = nn.LayerNorm(TXT_WIDTH)
        self.text_projection = nn.Parameter(torch.randn(TXT_WIDTH, EMBED) * TXT_WIDTH ** -0.5)
        self.logit_scale = nn.Parameter(torch.tensor(4.6052))  # dead in LSeg
        self.visual = nn.Module()  # dead in LSeg (a stand-in for the 88 M-param image tower)
        self.visual.conv1 = nn.Conv2d(3, 8, 32, 32, bias=False)
        self.visual.proj = nn.Parameter(torch.randn(8, EMBED))

    def encode_text(self, tokens):
        x = self.token_embedding(tokens) + self.positional_embedding
        mask = torch.full((CTX, CTX), float("-inf")).triu(1)
        for blk in self.transformer.resblocks:
            x = blk(x, mask)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0]), tokens.argmax(-1)] @ self.text_projection


# ------------------------------------------------------------------ reference: LSegNet
class RefLSegNet(nn.Module):
    def __init__(self, arch_option: int = 0, block_depth: int = 0, activation: str = "lrelu") -> None:
        super().__init__()
        self.clip_pretrained = RefCLIP()
        self.pretrained = nn.Module()
        self.pretrained.model = RefViT()
        for k in range(4):
            setattr(self.pretrained, f"act_postprocess{k + 1}", ref_act_postprocess(k))
        self.scratch = nn.Module()
        for k, c in enumerate(CHANNELS, start=1):
            setattr(self.scratch, f"layer{k}_rn", nn.Conv2d(c, FEATURES, 3, padding=1, bias=False))
            setattr(self.scratch, f"refinenet{k}", RefFusion())
        self.scratch.head1 = nn.Conv2d(FEATURES, EMBED, 1)
        self.arch_option, self.block_depth = arch_option, block_depth
        if arch_option in (1, 2):
            self.scratch.head_block = RefHeadBlock(arch_option, activation)
        self.logit_scale = torch.tensor(1 / 0.07)

    def vit_hooks(self, x):
        vit = self.pretrained.model
        b, _, h, w = x.shape
        gh, gw = h // 16, w // 16
        tok, grid = vit.pos_embed[:, :1], vit.pos_embed[0, 1:]
        grid = grid.reshape(1, VIT_GRID, VIT_GRID, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(gh, gw), mode="bilinear")
        pos = torch.cat([tok, grid.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)], dim=1)
        x = vit.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([vit.cls_token.expand(b, -1, -1), x], dim=1) + pos
        acts = []
        for i, blk in enumerate(vit.blocks):
            x = blk(x)
            if i in HOOKS:
                acts.append(x)
        maps = []
        for k, a in enumerate(acts):
            post = getattr(self.pretrained, f"act_postprocess{k + 1}")
            readout = a[:, 0].unsqueeze(1).expand_as(a[:, 1:])
            t = post[0].project(torch.cat([a[:, 1:], readout], -1)).transpose(1, 2)
            t = t.unflatten(2, (gh, gw))
            for layer in list(post)[3:]:
                t = layer(t)
            maps.append(t)
        return maps

    def forward(self, x, tokens):
        l1, l2, l3, l4 = (getattr(self.scratch, f"layer{k + 1}_rn")(m) for k, m in enumerate(self.vit_hooks(x)))
        p4 = self.scratch.refinenet4(l4)
        p3 = self.scratch.refinenet3(p4, l3)
        p2 = self.scratch.refinenet2(p3, l2)
        p1 = self.scratch.refinenet1(p2, l1)
        txt = self.clip_pretrained.encode_text(tokens)
        img = self.scratch.head1(p1)
        b, c, h, w = img.shape
        img = img.permute(0, 2, 3, 1).reshape(-1, c)
        img = img / img.norm(dim=-1, keepdim=True)
        txt = txt / txt.norm(dim=-1, keepdim=True)
        out = (self.logit_scale * img @ txt.t()).view(b, h, w, -1).permute(0, 3, 1, 2)
        if self.arch_option in (1, 2):
            for _ in range(self.block_depth - 1):
                out = self.scratch.head_block(out)
            out = self.scratch.head_block(out, act=False)
        return F.interpolate(out, scale_factor=2, mode="bilinear", align_corners=True)


FP16_IN_OFFICIAL = ("attn.in_proj", "attn.out_proj", "mlp.c_fc", "mlp.c_proj", "text_projection", "visual.")


def make_reference(arch_option=0, block_depth=0, activation="lrelu", seed=0) -> RefLSegNet:
    torch.manual_seed(seed)
    net = RefLSegNet(arch_option, block_depth, activation)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.startswith("clip_pretrained.") and any(s in name for s in FP16_IN_OFFICIAL):
                p.copy_(p.half().float())  # the official file stores these in fp16
            if name.endswith("depthwise.weight"):
                p.normal_(0, 0.4)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.num_batches_tracked.fill_(7)
    return net.eval()


def official_state(net: RefLSegNet) -> dict:
    state = {}
    for k, v in net.state_dict().items():
        if k.startswith("clip_pretrained.") and any(s in k for s in FP16_IN_OFFICIAL):
            v = v.half()
        state[k] = v.clone()
    return state


def save_lightning(net: RefLSegNet, path: Path, extra: dict | None = None) -> Path:
    ckpt = {"epoch": 3, "global_step": 1200, "pytorch-lightning_version": "1.4.9",
            "state_dict": {"net." + k: v for k, v in official_state(net).items()}}
    ckpt.update(extra or {})
    torch.save(ckpt, path)
    return path


def tokens(labels):
    import open_clip

    return open_clip.get_tokenizer("ViT-B-32")(labels)


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


@pytest.fixture(scope="module")
def tool_main():
    """tools/convert_langseg.py's main(), imported from its file (tools/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("convert_langseg_tool", TOOL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return lambda src, dst, *flags: mod.main([str(src), str(dst), "--config", str(SMOKE), *flags])


def test_parity_arch0_via_cli(tmp_path):
    ref = make_reference()
    src = save_lightning(ref, tmp_path / "official.ckpt")
    dst = tmp_path / "converted.pt"
    proc = run_tool(src, dst, "--config", SMOKE)
    assert proc.returncode == 0, proc.stderr
    payload = load_checkpoint(dst)
    assert payload["format"] == "lseg-hpc" and payload["converted_from"]["source_format"] == "lightning"
    # dead: visual (2) + clip logit_scale + ViT norm (2) + head (2) + refinenet4.resConfUnit1 (4 conv/bn x ...)
    n_dead_rcu = len([k for k in ref.state_dict() if k.startswith("scratch.refinenet4.resConfUnit1.")])
    assert payload["converted_from"]["dropped_tensors"] == 2 + 1 + 2 + 2 + n_dead_rcu
    assert all(v.dtype in (torch.float32, torch.int64) for v in payload["model"].values())

    model = load_model(dst)
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
def test_parity_spatial_blocks(tmp_path, tool_main, arch_option, block_depth, activation):
    ref = make_reference(arch_option, block_depth, activation, seed=arch_option * 10 + block_depth)
    src = save_lightning(ref, tmp_path / "official.ckpt")
    dst = tmp_path / "converted.pt"
    assert tool_main(src, dst, "--arch-option", str(arch_option), "--block-depth", str(block_depth),
                     "--activation", activation) == 0
    model = load_model(dst)
    assert model.image.spatial is not None and model.image.spatial.repeats == max(block_depth, 1)
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = ref(x, tokens(LABELS))
        got = model(x, LABELS)
    assert rel_l2(got, want) < 1e-4, rel_l2(got, want)


def test_plain_state_dict_input(tmp_path, tool_main):
    ref = make_reference(seed=3)
    torch.save(official_state(ref), tmp_path / "plain.pth")
    assert tool_main(tmp_path / "plain.pth", tmp_path / "out.pt") == 0
    model = load_model(tmp_path / "out.pt")
    x = torch.randn(1, 3, 32, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert rel_l2(model(x, LABELS[:2]), ref(x, tokens(LABELS[:2]))) < 1e-4


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_wrong_shape_is_named(tmp_path):
    state = official_state(make_reference())
    state["scratch.layer2_rn.weight"] = torch.zeros(FEATURES, 48, 3, 3)
    torch.save({"state_dict": {"net." + k: v for k, v in state.items()}}, tmp_path / "bad.ckpt")
    proc = run_tool(tmp_path / "bad.ckpt", tmp_path / "out.pt", "--config", SMOKE)
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert "scratch.layer2_rn.weight" in err and "[32, 48, 3, 3]" in err and "[32, 64, 3, 3]" in err
    assert not (tmp_path / "out.pt").exists()


def test_missing_key_is_named(tmp_path, tool_main, capsys):
    state = official_state(make_reference())
    del state["scratch.refinenet2.out_conv.bias"]
    torch.save({"state_dict": {"net." + k: v for k, v in state.items()}}, tmp_path / "bad.ckpt")
    assert tool_main(tmp_path / "bad.ckpt", tmp_path / "out.pt") == 2
    err = _error_line(capsys)
    assert "missing key 'scratch.refinenet2.out_conv.bias'" in err


def test_unknown_key_is_named(tmp_path, tool_main, capsys):
    state = official_state(make_reference())
    state["scratch.auxlayer.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "bad.pth")
    assert tool_main(tmp_path / "bad.pth", tmp_path / "out.pt") == 2
    assert "unexpected key 'scratch.auxlayer.weight'" in _error_line(capsys)


def test_head_block_needs_arch_option(tmp_path, tool_main, capsys):
    save_lightning(make_reference(arch_option=2, block_depth=2), tmp_path / "a2.ckpt")
    assert tool_main(tmp_path / "a2.ckpt", tmp_path / "out.pt") == 2
    assert "--arch-option" in _error_line(capsys)
    # and the opposite: arch_option 1 requested, file has no head_block weights
    save_lightning(make_reference(), tmp_path / "a0.ckpt")
    assert tool_main(tmp_path / "a0.ckpt", tmp_path / "out.pt", "--arch-option", "1") == 2
    assert "missing key 'scratch.head_block.depthwise.depthwise.weight'" in _error_line(capsys)


def test_pickled_objects_need_trust_pickle(tmp_path, tool_main, capsys):
    src = save_lightning(make_reference(), tmp_path / "pl.ckpt",
                         extra={"hyper_parameters": argparse.Namespace(backbone="clip_vitl16_384")})
    assert tool_main(src, tmp_path / "out.pt") == 2
    assert "--trust-pickle" in _error_line(capsys)
    assert tool_main(src, tmp_path / "out.pt", "--trust-pickle") == 0
    assert load_checkpoint(tmp_path / "out.pt")["format"] == "lseg-hpc"


def test_not_official_checkpoint(tmp_path, tool_main, capsys):
    torch.save({"weight": torch.zeros(2)}, tmp_path / "x.pt")
    assert tool_main(tmp_path / "x.pt", tmp_path / "out.pt") == 2
    assert "not an official lang-seg" in _error_line(capsys)
    with pytest.raises(CheckpointError, match="not an lseg-hpc checkpoint"):
        load_model(tmp_path / "x.pt")
