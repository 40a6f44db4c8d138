"""Image encoders of LSeg: the supported backbones, a timm ViT as a DPT encoder, torchvision's ResNet-101.

``BACKBONES`` is the one table of what differs between the official image encoders (ViT hooks,
reassemble channels and factors, patch size, input normalisation, initial weights); everything
else (decoder, head, logits) is shared.

Why an own ViT block loop instead of timm's ``forward_intermediates``: with ``dynamic_img_size`` timm
resizes the position embeddings *bicubically with antialiasing*, while the official LSeg resizes them
bilinearly (``align_corners=False``, no antialias) with the CLS position kept. The weights were trained
with the latter, so we call timm's ``resample_abs_pos_embed`` with exactly those settings and run the
blocks ourselves; the blocks themselves are timm's (fused SDPA attention).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from lseg.config import ConfigError, ModelConfig
from lseg.models.checkpointing import checkpoint

#: The normalisation every image of our data pipeline gets (and the ViTs were trained with).
PIPELINE_MEAN = PIPELINE_STD = (0.5, 0.5, 0.5)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    """One image encoder: the values the official lang-seg code builds it with."""

    kind: str  # "vit" (timm ViT + reassemble) | "resnet" (torchvision ResNet stages)
    official: str | None  # lang-seg's --backbone name; None: not an official encoder
    channels: tuple[int, ...]  # per decoder level (1/4 .. 1/32): ViT reassemble output / ResNet stage width
    weights: str  # timm pretrained name of the initial weights (Hugging Face Hub, see weights.py)
    hooks: tuple[int, ...] = ()  # ViT blocks (0-based) whose outputs feed the four levels
    factors: tuple[float, ...] = ()  # ViT reassemble resampling of the token grid per level
    patch: int = 1  # ViT patch size (inputs must be multiples of it); 1: any input size
    width: int = 0  # ViT embedding width (with the patch size, what tells official checkpoints apart)
    mean: tuple[float, ...] = PIPELINE_MEAN  # input normalisation the encoder expects
    std: tuple[float, ...] = PIPELINE_STD


BACKBONES: dict[str, BackboneSpec] = {
    # Official LSeg and the FSS-1000 ViT zero-shot model (clip_vitl16_384).
    "vit_large_patch16_384": BackboneSpec("vit", "clip_vitl16_384", (256, 512, 1024, 1024), "vit_large_patch16_384",
                                          (5, 11, 17, 23), (4, 2, 1, 0.5), patch=16, width=1024),
    "vit_base_patch32_384": BackboneSpec("vit", "clip_vitb32_384", (96, 192, 384, 768), "vit_base_patch32_384",
                                         (2, 5, 8, 11), (8, 4, 2, 1), patch=32, width=768),
    # The zero-shot models: torchvision's ImageNet ResNet-101 ("clip" names only the text side).
    "resnet101": BackboneSpec("resnet", "clip_resnet101", (256, 512, 1024, 2048), "resnet101.tv_in1k",
                              mean=IMAGENET_MEAN, std=IMAGENET_STD),
    # The small model of configs/smoke.yaml (CPU demo and tests).
    "vit_tiny_patch16_224": BackboneSpec("vit", None, (32, 64, 128, 128), "vit_tiny_patch16_224",
                                         (2, 5, 8, 11), (4, 2, 1, 0.5), patch=16, width=192),
}


def supported_backbones() -> str:
    """``name (official X), ...`` for messages."""
    return ", ".join(f"{n} (official {s.official})" if s.official else n for n, s in BACKBONES.items())


def backbone_spec(name: str) -> BackboneSpec:
    """The table entry for ``name``; one-line error listing the supported ones otherwise."""
    if name not in BACKBONES:
        raise ConfigError(f"model.backbone: {name!r} is not supported; supported: {supported_backbones()}")
    return BACKBONES[name]


def check_input_sizes(backbone: str, sizes: dict[str, int]) -> None:
    """Training and evaluation sides must be multiples of the patch size (a ViT-B/32 at 496 px would
    otherwise fail inside the first forward pass); ``sizes`` maps config keys to values."""
    patch = backbone_spec(backbone).patch
    for key, size in sizes.items():
        if size % patch:
            raise ConfigError(f"{key}: {size} is not a multiple of {patch}, the patch size of {backbone}")


def backbone_name(name: str) -> str:
    """Our name for ``name``, which may also be lang-seg's (``clip_resnet101`` -> ``resnet101``)."""
    official = {s.official: n for n, s in BACKBONES.items() if s.official}
    return official.get(name, name)


def resolve_levels(cfg: ModelConfig) -> tuple[BackboneSpec, list[int], list[int]]:
    """(spec, hooks, channels) of ``cfg``: ``model.hooks`` / ``model.reassemble_channels`` override a
    ViT's table values; a ResNet has neither (its four stages are fixed)."""
    spec = backbone_spec(cfg.backbone)
    if spec.kind == "resnet":
        for key in ("hooks", "reassemble_channels"):
            if getattr(cfg, key) is not None:
                raise ConfigError(f"model.{key}: {cfg.backbone} has none (its four stages feed the decoder); "
                                  f"set model.{key}=null")
        return spec, [], list(spec.channels)
    hooks = list(spec.hooks) if cfg.hooks is None else list(cfg.hooks)
    channels = list(spec.channels) if cfg.reassemble_channels is None else list(cfg.reassemble_channels)
    return spec, hooks, channels


class Renormalize(nn.Module):
    """Pipeline images (mean = std = 0.5) -> the normalisation ``mean``/``std``, as one affine per channel.

    Why inside the model: the data pipeline, the evaluation protocols and the predictor all produce
    one normalisation; an encoder trained with another (ImageNet statistics for the ResNet) converts
    here. ``(x01 - 0.5) / 0.5 = p`` gives ``(x01 - m) / s = p * 0.5 / s + (0.5 - m) / s``.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.mean, self.std = tuple(mean), tuple(std)
        # Constants, not weights: not saved; reset() rebuilds them after a meta-device build.
        scale, shift = self._constants(None)
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("shift", shift, persistent=False)

    def _constants(self, device: torch.device | None) -> tuple[torch.Tensor, torch.Tensor]:
        scale = torch.tensor([0.5 / s for s in self.std], device=device).view(1, 3, 1, 1)
        shift = torch.tensor([(0.5 - m) / s for m, s in zip(self.mean, self.std)], device=device).view(1, 3, 1, 1)
        return scale, shift

    def reset(self, device: torch.device) -> None:
        self.scale, self.shift = self._constants(device)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images * self.scale.to(images.dtype) + self.shift.to(images.dtype)


def resize_pos_embed(pos_embed: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int],
                     num_prefix_tokens: int = 1) -> torch.Tensor:
    """Official LSeg resize: prefix (CLS) positions kept, grid bilinear, align_corners=False, no antialias."""
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim = grid.shape[-1]
    grid = grid.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=new_grid, mode="bilinear", align_corners=False, antialias=False)
    grid = grid.to(pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim)
    return torch.cat([prefix, grid], dim=1)


class ViTBackbone(nn.Module):
    """A timm VisionTransformer (a ``BACKBONES`` ViT) reduced to what LSeg uses: no final norm, no head,
    no blocks past the last hook.

    ``forward`` returns one ``(B, 1 + h*w, D)`` token tensor per hook (block outputs, before any norm)
    and the patch grid ``(h, w)``.
    """

    def __init__(self, name: str, hooks: list[int], pretrained: bool = False,
                 pretrained_file: str | None = None) -> None:
        super().__init__()
        import timm

        kwargs = {}
        if pretrained and pretrained_file:
            # Load from a file we located ourselves (see weights.py): timm never touches the network.
            kwargs["pretrained_cfg_overlay"] = {"file": pretrained_file}
        try:
            vit = timm.create_model(name, pretrained=pretrained, num_classes=0, dynamic_img_size=True, **kwargs)
        except RuntimeError as exc:
            if "Unknown model" in str(exc):
                raise ConfigError(f"model.backbone: unknown timm model '{name}'") from None
            raise
        for attr in ("blocks", "patch_embed", "pos_embed", "cls_token"):
            if getattr(vit, attr, None) is None:
                raise ConfigError(f"model.backbone: '{name}' is not a ViT with a CLS token and absolute "
                                  f"position embeddings (missing '{attr}')")
        if getattr(vit, "num_prefix_tokens", 1) != 1 or getattr(vit, "no_embed_class", False):
            raise ConfigError(f"model.backbone: '{name}' must have exactly one CLS token inside pos_embed")
        depth = len(vit.blocks)
        if any(not 0 <= h < depth for h in hooks):
            raise ConfigError(f"model.hooks: {hooks} out of range for '{name}' with {depth} blocks")
        # Blocks after the last hook, the final norm and the classifier would never receive gradients
        # (DDP with find_unused_parameters=False would fail), so they are not kept.
        vit.prune_intermediate_layers(indices=list(hooks), prune_norm=True, prune_head=True)
        self.model = vit
        self.hooks = list(hooks)
        self.embed_dim: int = vit.embed_dim
        self.patch_size: int = vit.patch_embed.patch_size[0]
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], tuple[int, int]]:
        vit = self.model
        p = self.patch_size
        if images.shape[-2] % p or images.shape[-1] % p:
            raise ValueError(f"image size {tuple(images.shape[-2:])} is not a multiple of the patch size {p}")
        x = vit.patch_embed(images)  # (B, h, w, D) with dynamic_img_size
        b, h, w, d = x.shape
        pos = resize_pos_embed(vit.pos_embed, tuple(vit.patch_embed.grid_size), (h, w))
        x = torch.cat([vit.cls_token.expand(b, -1, -1), x.reshape(b, h * w, d)], dim=1) + pos
        x = vit.norm_pre(vit.patch_drop(vit.pos_drop(x)))
        use_ckpt = self.grad_checkpointing and torch.is_grad_enabled()
        taken: dict[int, torch.Tensor] = {}
        for i, block in enumerate(vit.blocks):
            x = checkpoint(block, x) if use_ckpt else block(x)
            if i in self.hooks:
                taken[i] = x
        return [taken[i] for i in self.hooks], (h, w)


class ResNetBackbone(nn.Module):
    """torchvision's ResNet-101 as the official zero-shot image encoder: the outputs of its four stages.

    ``forward`` returns the maps at 1/4 (256 ch), 1/8 (512), 1/16 (1024) and 1/32 (2048). The
    classifier (``fc``) is replaced by an identity (no parameters: it would never get a gradient).
    Module names are torchvision's, so its ImageNet weights load as they are.
    """

    def __init__(self, pretrained_file: str | None = None) -> None:
        super().__init__()
        import torchvision

        net = torchvision.models.resnet101(weights=None)
        net.fc = nn.Identity()
        if pretrained_file:
            load_resnet_weights(net, pretrained_file)
        self.model = net
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        r = self.model
        return r.maxpool(r.relu(r.bn1(r.conv1(x))))

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        # Recompute per bottleneck block: the BatchNorm-safe checkpoint keeps running statistics
        # updated once per step (see checkpointing.py).
        use_ckpt = self.grad_checkpointing and torch.is_grad_enabled()
        x = checkpoint(self._stem, images, scope=self.model.bn1) if use_ckpt else self._stem(images)
        maps = []
        for stage in (self.model.layer1, self.model.layer2, self.model.layer3, self.model.layer4):
            for block in stage:
                x = checkpoint(block, x) if use_ckpt else block(x)
            maps.append(x)
        return maps


def load_resnet_weights(net: nn.Module, path: str) -> None:
    """ImageNet weights (torchvision names, classifier dropped) into ``net``; one-line error on mismatch."""
    from lseg.models.weights import WeightsError, read_weights_file

    state = {k: v for k, v in read_weights_file(path).items() if not k.startswith("fc.")}
    expected = net.state_dict()
    for key, ref in expected.items():
        if key not in state or tuple(state[key].shape) != tuple(ref.shape):
            raise WeightsError(f"{path}: not a ResNet-101 ImageNet weight file ({key!r} missing or mis-shaped)")
    extra = next((k for k in state if k not in expected), None)
    if extra is not None:
        raise WeightsError(f"{path}: not a ResNet-101 ImageNet weight file (unexpected key {extra!r})")
    net.load_state_dict(state, strict=True)
