"""The LSeg network: trainable image side (``LSeg.image``) + frozen text side (``LSeg.text``).

The split is what the trainer needs: only ``model.image`` goes into DDP (the frozen text tower has
nothing to all-reduce), and ``model.image`` takes precomputed text embeddings so a label set is
embedded once, not once per step.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from lseg.config import ConfigError, ModelConfig
from lseg.models.backbone import PIPELINE_MEAN, PIPELINE_STD, Renormalize, ResNetBackbone, ViTBackbone, resolve_levels
from lseg.models.checkpointing import checkpoint
from lseg.models.dpt import DPTDecoder, Reassemble
from lseg.models.text import TextEncoder, text_tower_config

_ACTIVATIONS = {"relu": nn.ReLU, "lrelu": nn.LeakyReLU, "tanh": nn.Tanh}


class SpatialRegularizer(nn.Module):
    """Official ``arch_option`` 1/2 head block on the N-channel logit map.

    One ``Conv2d(1, 1, 3)`` shared by all label channels and by every repetition; applied
    ``max(block_depth, 1)`` times, the last time without activation. Option 1 adds the channel-wise
    max of the input (official ``bottleneck_block``), option 2 does not (``depthwise_block``).
    """

    def __init__(self, arch_option: int, block_depth: int, activation: str) -> None:
        super().__init__()
        self.arch_option = arch_option
        self.repeats = max(block_depth, 1)
        self.conv = nn.Conv2d(1, 1, kernel_size=3, padding=1)
        self.act = _ACTIVATIONS[activation]()

    def _once(self, x: torch.Tensor, act: bool) -> torch.Tensor:
        b, n, h, w = x.shape
        y = self.conv(x.reshape(b * n, 1, h, w)).reshape(b, n, h, w)
        if self.arch_option == 1:
            y = y + x.max(dim=1, keepdim=True).values
        return self.act(y) if act else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.repeats):
            x = self._once(x, act=i < self.repeats - 1)
        return x


class _ScaledCosine(torch.autograd.Function):
    """``logits[b, n] = (pixels[b] . text[n]) / max(|pixels[b]|, 1e-12)`` with a hand-written backward.

    Why not autograd's: differentiating the normalisation of the 512-channel map at half resolution
    makes four temporaries of that map's size (0.45 GB per 480 px image in fp32), the largest
    transient of a training step once the ViT is checkpointed; this backward makes one. The
    division by the norm happens after the dot product (same value as normalising first).
    """

    @staticmethod
    def forward(ctx: Any, pixels: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        norm = torch.linalg.vector_norm(pixels, dim=1, keepdim=True)
        inv_norm = 1 / norm.clamp(min=1e-12)
        logits = torch.einsum("bchw,nc->bnhw", pixels, text) * inv_norm
        ctx.save_for_backward(pixels, text, inv_norm, logits, norm > 1e-12)
        return logits

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        pixels, text, inv_norm, logits, unclamped = ctx.saved_tensors
        grad_pixels = grad_text = None
        if ctx.needs_input_grad[0]:
            # d/dp [(p.t) / |p|] = t / |p| - (p.t) p / |p|^3, summed over labels with their gradients;
            # where the norm is clamped to 1e-12 the second term is zero.
            radial = (grad * logits).sum(1, keepdim=True) * inv_norm * inv_norm * unclamped
            grad_pixels = torch.einsum("bnhw,nc->bchw", grad, text).mul_(inv_norm)
            grad_pixels.addcmul_(pixels, radial, value=-1)
        if ctx.needs_input_grad[1]:
            grad_text = torch.einsum("bnhw,bchw->nc", grad * inv_norm, pixels)
        return grad_pixels, grad_text


class LSegImage(nn.Module):
    """Everything trainable: image encoder, reassemble, DPT fusion, ``head1``, spatial block, logit scale.

    ``forward(images, text_features) -> logits (B, N, H, W)`` in fp32; with ``upsample=False`` the
    logit map at half resolution, from which training computes its loss without ever holding the
    full-resolution logits (``lseg.engine.loss``). The encoder is a ViT (token maps, reassembled to
    1/4 .. 1/32 by ``reassemble``) or a ResNet (its four stages; ``reassemble`` is then empty).
    """

    def __init__(self, cfg: ModelConfig, embed_dim: int, backbone_file: str | None = None) -> None:
        super().__init__()
        spec, hooks, channels = resolve_levels(cfg)
        self.input_norm = (Renormalize(spec.mean, spec.std)
                           if (spec.mean, spec.std) != (PIPELINE_MEAN, PIPELINE_STD) else None)
        if spec.kind == "resnet":
            self.backbone: nn.Module = ResNetBackbone(pretrained_file=backbone_file)
            self.reassemble = nn.ModuleList()
        else:
            self.backbone = ViTBackbone(cfg.backbone, hooks, pretrained=cfg.pretrained, pretrained_file=backbone_file)
            self.reassemble = nn.ModuleList(
                Reassemble(self.backbone.embed_dim, c, s) for c, s in zip(channels, spec.factors)
            )
        self.decoder = DPTDecoder(channels, cfg.features)
        self.head1 = nn.Conv2d(cfg.features, embed_dim, kernel_size=1)
        self.spatial = (SpatialRegularizer(cfg.arch_option, cfg.block_depth, cfg.activation)
                        if cfg.arch_option in (1, 2) else None)
        if cfg.learnable_logit_scale:
            # Stored as a log so that SGD steps are multiplicative and the scale stays positive.
            self.logit_scale_log = nn.Parameter(torch.tensor(math.log(cfg.logit_scale)))
        else:
            # Fixed like the official model; not persistent: the config, not the checkpoint, defines it.
            self.register_buffer("logit_scale_fixed", torch.tensor(float(cfg.logit_scale)), persistent=False)
        self.set_grad_checkpointing(cfg.grad_checkpointing)

    @property
    def logit_scale(self) -> torch.Tensor:
        if hasattr(self, "logit_scale_log"):
            return self.logit_scale_log.float().exp()
        return self.logit_scale_fixed.float()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute in backward instead of keeping activations: every ViT block (ResNet: the stem and
        every bottleneck block), reassemble stage and fusion block, and the head (``head1`` + label
        dot-product), each non-reentrant; memory for about 1/4 more compute.
        """
        self.backbone.set_grad_checkpointing(enable)
        self.decoder.grad_checkpointing = enable
        self.grad_checkpointing = enable

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """``backbone``: the image encoder (ViT / ResNet); ``decoder``: all other trainable parameters
        (official: 10x LR)."""
        backbone_ids = {id(p) for p in self.backbone.parameters()}
        return {
            "backbone": [p for p in self.backbone.parameters() if p.requires_grad],
            "decoder": [p for p in self.parameters() if p.requires_grad and id(p) not in backbone_ids],
        }

    def _decode(self, images: torch.Tensor) -> torch.Tensor:
        if self.input_norm is not None:
            images = self.input_norm(images)
        if not len(self.reassemble):  # ResNet: the stage outputs are the four maps
            return self.decoder(self.backbone(images))
        tokens, grid = self.backbone(images)
        if self.grad_checkpointing and torch.is_grad_enabled():  # keeps only the maps, not the 2x-wide readout
            maps = [checkpoint(r, t, grid) for r, t in zip(self.reassemble, tokens)]
        else:
            maps = [r(t, grid) for r, t in zip(self.reassemble, tokens)]
        return self.decoder(maps)

    def pixel_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """Unnormalised per-pixel embeddings ``(B, D, H/2, W/2)`` (output of ``head1``)."""
        return self.head1(self._decode(images))

    def logit_map(self, pixels: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """``logit_scale * cos(pixel, text)`` in fp32 (autocast off) and the spatial block, at ``pixels``' size.

        Pixel vectors are divided by their norm like the official code; ``F.normalize``'s eps (1e-12)
        only differs from that for a norm below 1e-12, where the official code would give NaN.
        """
        with torch.autocast(device_type=pixels.device.type, enabled=False):
            txt = F.normalize(text_features.to(device=pixels.device, dtype=torch.float32), dim=-1, eps=1e-12)
            logits = _ScaledCosine.apply(pixels.float(), txt * self.logit_scale)
            return self.spatial(logits) if self.spatial is not None else logits

    def logits_from_embeddings(self, pixels: torch.Tensor, text_features: torch.Tensor,
                               out_size: tuple[int, int]) -> torch.Tensor:
        """:meth:`logit_map`, then the official x2 bilinear upsample (``align_corners=True``) to ``out_size``."""
        logits = self.logit_map(pixels, text_features)
        return F.interpolate(logits, size=out_size, mode="bilinear", align_corners=True)

    def _head(self, decoded: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        return self.logit_map(self.head1(decoded), text_features)

    def forward(self, images: torch.Tensor, text_features: torch.Tensor, upsample: bool = True) -> torch.Tensor:
        if text_features.ndim != 2 or text_features.shape[1] != self.head1.out_channels:
            raise ValueError(f"text_features must be (N, {self.head1.out_channels}), got {tuple(text_features.shape)}")
        decoded = self._decode(images)
        if self.grad_checkpointing and torch.is_grad_enabled():
            logits = checkpoint(self._head, decoded, text_features)  # the spatial block has no BatchNorm
        else:
            logits = self._head(decoded, text_features)
        if not upsample:
            return logits
        return F.interpolate(logits, size=tuple(images.shape[-2:]), mode="bilinear", align_corners=True)


class LSeg(nn.Module):
    """``model(images, labels) -> logits (B, N, H, W)``; see README.md, "The model"."""

    def __init__(self, cfg: ModelConfig, backbone_file: str | None = None, text_file: str | None = None) -> None:
        super().__init__()
        self.config = cfg
        embed_dim = text_tower_config(cfg.text)[0]
        self.image = LSegImage(cfg, embed_dim, backbone_file=backbone_file)
        self.text = TextEncoder(cfg.text, pretrained_file=text_file)

    def forward(self, images: torch.Tensor, labels: Sequence[str]) -> torch.Tensor:
        return self.image(images, self.text.encode(labels))

    def reset_nonpersistent_buffers(self) -> None:
        """Recompute the buffers a state dict does not carry (after building on ``meta`` + assign-load)."""
        device = self.image.head1.weight.device
        if hasattr(self.image, "logit_scale_fixed"):
            self.image.logit_scale_fixed = torch.tensor(float(self.config.logit_scale), device=device)
        if self.image.input_norm is not None:
            self.image.input_norm.reset(device)
        tower = self.text.tower
        if getattr(tower, "attn_mask", None) is not None:
            tower.attn_mask = tower.build_causal_mask().to(tower.positional_embedding.device)


def build_model(cfg: ModelConfig) -> LSeg:
    """Build LSeg from ``cfg`` (random init, or timm/open_clip pretrained weights from the local cache)."""
    if cfg.arch_option not in (0, 1, 2):
        raise ConfigError(f"model.arch_option: {cfg.arch_option!r} is not one of [0, 1, 2]")
    if cfg.activation not in _ACTIVATIONS:
        raise ConfigError(f"model.activation: {cfg.activation!r} is not one of {list(_ACTIVATIONS)}")
    backbone_file = text_file = None
    if cfg.pretrained:
        from lseg.models import weights
        from lseg.models.backbone import backbone_spec

        backbone_file = weights.locate(weights.timm_source(backbone_spec(cfg.backbone).weights), cfg.weights_cache)
        text_file = weights.locate(weights.open_clip_source(cfg.text.arch, cfg.text.pretrained), cfg.weights_cache)
    return LSeg(cfg, backbone_file=backbone_file, text_file=text_file)
