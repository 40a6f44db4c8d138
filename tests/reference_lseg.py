"""An independent tiny re-implementation of the official LSegNet, for testing the checkpoint converter.

Written from the official architecture (lang-seg's LSegNet: a timm 0.4 ViT with DPT "scratch"
decoder, and OpenAI CLIP's text side), with the official module names, so its state dict has the
official keys. It shares nothing with lseg.models except the CLIP tokenizer (token ids are an
input, not part of the network). Sizes default to those of configs/smoke.yaml; ``Sizes`` also
describes the official ViT-L/16 and ViT-B/32 networks (built on the meta device for key and shape
checks). The zero-shot ResNet-101 network is in reference_lseg_zs.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class Sizes:
    """Network sizes. Defaults: configs/smoke.yaml (vit_tiny_patch16_224: dim 192, 12 blocks, 3 heads,
    14x14 grid; text width 64 / 2 layers / 2 heads / embed 64)."""

    vit_dim: int = 192
    vit_depth: int = 12
    vit_heads: int = 3
    vit_grid: int = 14  # position-embedding grid of the pretrained ViT
    patch: int = 16
    hooks: tuple[int, ...] = (2, 5, 8, 11)
    channels: tuple[int, ...] = (32, 64, 128, 128)
    upsample: tuple[float, ...] = (4, 2, 1, 0.5)  # act_postprocess resampling of the token grid
    features: int = 32
    txt_width: int = 64
    txt_layers: int = 2
    txt_heads: int = 2
    embed: int = 64


SMOKE = Sizes()
# lang-seg's clip_vitl16_384 / clip_vitb32_384 (features 256, CLIP ViT-B/32 text tower)
VITL16 = Sizes(1024, 24, 16, 24, 16, (5, 11, 17, 23), (256, 512, 1024, 1024), (4, 2, 1, 0.5), 256, 512, 12, 8, 512)
VITB32 = Sizes(768, 12, 12, 12, 32, (2, 5, 8, 11), (96, 192, 384, 768), (8, 4, 2, 1), 256, 512, 12, 8, 512)

HOOKS, CHANNELS, FEATURES = list(SMOKE.hooks), list(SMOKE.channels), SMOKE.features
VOCAB, CTX = 49408, 77


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
    def __init__(self, sz: Sizes) -> None:
        super().__init__()
        d = sz.vit_dim
        self.cls_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + sz.vit_grid ** 2, d) * 0.5)
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, d, sz.patch, sz.patch)
        self.blocks = nn.ModuleList(RefBlock(d, sz.vit_heads) for _ in range(sz.vit_depth))
        self.norm = nn.LayerNorm(d, eps=1e-6)  # dead in LSeg
        self.head = nn.Linear(d, 1000)  # dead in LSeg


class RefReadout(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Linear(2 * d, d), nn.GELU())


def ref_act_postprocess(k: int, sz: Sizes) -> nn.Sequential:
    c, d, up = sz.channels[k], sz.vit_dim, sz.upsample[k]
    layers = [RefReadout(d), nn.Identity(), nn.Identity(), nn.Conv2d(d, c, 1)]  # 1, 2: Transpose, Unflatten
    if up > 1:
        layers.append(nn.ConvTranspose2d(c, c, int(up), stride=int(up)))
    elif up == 0.5:
        layers.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
    return nn.Sequential(*layers)


# ------------------------------------------------------------------ reference: decoder ("scratch")
class RefRCU(nn.Module):
    def __init__(self, f: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(f, f, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(f, f, 3, padding=1, bias=False)
        self.bn1, self.bn2 = nn.BatchNorm2d(f), nn.BatchNorm2d(f)

    def forward(self, x):
        out = self.bn1(self.conv1(F.relu(x)))
        out = self.bn2(self.conv2(F.relu(out)))
        return out + x


class RefFusion(nn.Module):
    def __init__(self, f: int) -> None:
        super().__init__()
        self.resConfUnit1, self.resConfUnit2 = RefRCU(f), RefRCU(f)
        self.out_conv = nn.Conv2d(f, f, 1)

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
    def __init__(self, w: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.randn(3 * w, w) * w ** -0.5)
        self.in_proj_bias = nn.Parameter(torch.randn(3 * w) * 0.02)
        self.out_proj = nn.Linear(w, w)

    def forward(self, x, mask):
        b, n, d = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, n, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1) / math.sqrt(d // self.heads) + mask).softmax(-1)
        return self.out_proj((att @ v).transpose(1, 2).reshape(b, n, d))


class RefResBlock(nn.Module):
    def __init__(self, w: int, heads: int) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(w), nn.LayerNorm(w)
        self.attn = RefMHA(w, heads)
        self.mlp = nn.Module()
        self.mlp.c_fc, self.mlp.c_proj = nn.Linear(w, 4 * w), nn.Linear(4 * w, w)

    def forward(self, x, mask):
        x = x + self.attn(self.ln_1(x), mask)
        h = self.mlp.c_fc(self.ln_2(x))
        return x + self.mlp.c_proj(h * torch.sigmoid(1.702 * h))  # QuickGELU


class RefCLIP(nn.Module):
    def __init__(self, sz: Sizes) -> None:
        super().__init__()
        w = sz.txt_width
        self.token_embedding = nn.Embedding(VOCAB, w)
        self.positional_embedding = nn.Parameter(torch.randn(CTX, w) * 0.01)
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList(RefResBlock(w, sz.txt_heads) for _ in range(sz.txt_layers))
        self.ln_final = nn.LayerNorm(w)
        self.text_projection = nn.Parameter(torch.randn(w, sz.embed) * w ** -0.5)
        self.logit_scale = nn.Parameter(torch.tensor(4.6052))  # dead in LSeg
        self.visual = nn.Module()  # dead in LSeg (a stand-in for the 88 M-param image tower)
        self.visual.conv1 = nn.Conv2d(3, 8, 32, 32, bias=False)
        self.visual.proj = nn.Parameter(torch.randn(8, sz.embed))

    def encode_text(self, tokens):
        x = self.token_embedding(tokens) + self.positional_embedding
        mask = torch.full((CTX, CTX), float("-inf")).triu(1)
        for blk in self.transformer.resblocks:
            x = blk(x, mask)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0]), tokens.argmax(-1)] @ self.text_projection


# ------------------------------------------------------------------ reference: LSegNet
class RefDPTNet(nn.Module):
    """What every official LSegNet shares: CLIP, the "scratch" decoder, head1 and the logits.

    Subclasses set ``self.pretrained`` and ``encode(x) -> four maps at 1/4 .. 1/32``.
    """

    def __init__(self, sz: Sizes, in_channels, arch_option: int = 0, block_depth: int = 0,
                 activation: str = "lrelu") -> None:
        super().__init__()
        self.sz = sz
        self.clip_pretrained = RefCLIP(sz)
        self.scratch = nn.Module()
        for k, c in enumerate(in_channels, start=1):
            setattr(self.scratch, f"layer{k}_rn", nn.Conv2d(c, sz.features, 3, padding=1, bias=False))
            setattr(self.scratch, f"refinenet{k}", RefFusion(sz.features))
        self.scratch.head1 = nn.Conv2d(sz.features, sz.embed, 1)
        self.arch_option, self.block_depth = arch_option, block_depth
        if arch_option in (1, 2):
            self.scratch.head_block = RefHeadBlock(arch_option, activation)
        self.logit_scale = torch.tensor(1 / 0.07)

    def image_features(self, x):
        l1, l2, l3, l4 = (getattr(self.scratch, f"layer{k + 1}_rn")(m) for k, m in enumerate(self.encode(x)))
        p4 = self.scratch.refinenet4(l4)
        p3 = self.scratch.refinenet3(p4, l3)
        p2 = self.scratch.refinenet2(p3, l2)
        p1 = self.scratch.refinenet1(p2, l1)
        return self.scratch.head1(p1)

    def _logits(self, img, txt):
        b, c, h, w = img.shape
        img = img.permute(0, 2, 3, 1).reshape(-1, c)
        img = img / img.norm(dim=-1, keepdim=True)
        txt = txt / txt.norm(dim=-1, keepdim=True)
        return (self.logit_scale * img @ txt.t()).view(b, h, w, -1).permute(0, 3, 1, 2)

    def forward(self, x, tokens):
        out = self._logits(self.image_features(x), self.clip_pretrained.encode_text(tokens))
        if self.arch_option in (1, 2):
            for _ in range(self.block_depth - 1):
                out = self.scratch.head_block(out)
            out = self.scratch.head_block(out, act=False)
        return F.interpolate(out, scale_factor=2, mode="bilinear", align_corners=True)

    def forward_zs(self, x, token_pairs):
        """The zero-shot nets' forward: sample i against its own ("others", class) token pair."""
        img = self.image_features(x)
        outs = [self._logits(img[i:i + 1], self.clip_pretrained.encode_text(t)) for i, t in enumerate(token_pairs)]
        return F.interpolate(torch.cat(outs), scale_factor=2, mode="bilinear", align_corners=True)


class RefLSegNet(RefDPTNet):
    """Official LSegNet / LSegNetZS with a timm-0.4 ViT and DPT reassembly (act_postprocess)."""

    def __init__(self, arch_option: int = 0, block_depth: int = 0, activation: str = "lrelu",
                 sz: Sizes = SMOKE) -> None:
        super().__init__(sz, sz.channels, arch_option, block_depth, activation)
        self.pretrained = nn.Module()
        self.pretrained.model = RefViT(sz)
        for k in range(4):
            setattr(self.pretrained, f"act_postprocess{k + 1}", ref_act_postprocess(k, sz))

    def encode(self, x):
        sz, vit = self.sz, self.pretrained.model
        b, _, h, w = x.shape
        gh, gw = h // sz.patch, w // sz.patch
        tok, grid = vit.pos_embed[:, :1], vit.pos_embed[0, 1:]
        grid = grid.reshape(1, sz.vit_grid, sz.vit_grid, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(gh, gw), mode="bilinear")
        pos = torch.cat([tok, grid.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)], dim=1)
        x = vit.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([vit.cls_token.expand(b, -1, -1), x], dim=1) + pos
        acts = []
        for i, blk in enumerate(vit.blocks):
            x = blk(x)
            if i in sz.hooks:
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


FP16_IN_OFFICIAL = ("attn.in_proj", "attn.out_proj", "mlp.c_fc", "mlp.c_proj", "text_projection", "visual.")


def make_reference(arch_option=0, block_depth=0, activation="lrelu", seed=0, sz: Sizes = SMOKE) -> RefLSegNet:
    torch.manual_seed(seed)
    return randomize(RefLSegNet(arch_option, block_depth, activation, sz))


def randomize(net: RefDPTNet) -> RefDPTNet:
    """fp16-rounded CLIP weights (as the official file stores them), non-trivial BatchNorm statistics."""
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


def official_state(net: RefDPTNet) -> dict:
    state = {}
    for k, v in net.state_dict().items():
        if k.startswith("clip_pretrained.") and any(s in k for s in FP16_IN_OFFICIAL):
            v = v.half()
        state[k] = v.clone()
    return state


def save_lightning(net: RefDPTNet, path: Path, extra: dict | None = None) -> Path:
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
