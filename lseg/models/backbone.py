"""timm ViT as a DPT encoder: token maps after the hook blocks, any input size that is a multiple of 16.

Why an own block loop instead of timm's ``forward_intermediates``: with ``dynamic_img_size`` timm
resizes the position embeddings *bicubically with antialiasing*, while the official LSeg resizes them
bilinearly (``align_corners=False``, no antialias) with the CLS position kept. The weights were trained
with the latter, so we call timm's ``resample_abs_pos_embed`` with exactly those settings and run the
blocks ourselves; the blocks themselves are timm's (fused SDPA attention).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from lseg.config import ConfigError
from lseg.models.checkpointing import checkpoint


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
    """A timm VisionTransformer reduced to what LSeg uses: no final norm, no head, no blocks past the last hook.

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
