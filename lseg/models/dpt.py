"""DPT decoder of LSeg: readout projection, reassemble to four scales, RefineNet-style fusion.

Module and parameter names inside the fusion part follow the official code (``layerK_rn``,
``refinenetK.resConfUnit{1,2}.{conv,bn}{1,2}``, ``out_conv``) so that converting official checkpoints
is a prefix change. The one structural difference: ``refinenet4`` has no ``resConfUnit1`` (the
official one exists but never runs, so it could never be trained and would break DDP without
``find_unused_parameters``).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from lseg.models.checkpointing import checkpoint


class Reassemble(nn.Module):
    """One hook: project readout (CLS concatenated to every token), tokens -> map, 1x1 conv, resample.

    ``scale`` is the resampling of the token grid (1/16 for ViT-L/16, 1/32 for ViT-B/32): 8, 4 or 2
    (ConvTranspose with kernel = stride = scale), 1 (identity) or 0.5 (3x3 conv, stride 2).
    """

    def __init__(self, vit_dim: int, channels: int, scale: float) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Linear(2 * vit_dim, vit_dim), nn.GELU())
        self.conv = nn.Conv2d(vit_dim, channels, kernel_size=1)
        if scale in (8, 4, 2):
            self.resample: nn.Module = nn.ConvTranspose2d(channels, channels, kernel_size=int(scale),
                                                          stride=int(scale))
        elif scale == 1:
            self.resample = nn.Identity()
        elif scale == 0.5:
            self.resample = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1)
        else:
            raise ValueError(f"unsupported reassemble scale {scale}")

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        cls, patches = tokens[:, :1], tokens[:, 1:]
        x = self.project(torch.cat([patches, cls.expand_as(patches)], dim=-1))
        x = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], grid[0], grid[1])
        return self.resample(self.conv(x))


class ResidualConvUnit(nn.Module):
    """act -> conv3x3 -> BN -> act -> conv3x3 -> BN, plus the input (convs without bias, as official)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(features)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(features)
        self.act = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(self.conv1(self.act(x)))
        out = self.bn2(self.conv2(self.act(out)))
        return out + x


class FusionBlock(nn.Module):
    """``out_conv(up(RCU2(x + RCU1(skip))))``; without a skip input there is no RCU1 at all."""

    def __init__(self, features: int, with_skip: bool) -> None:
        super().__init__()
        if with_skip:
            self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)
        self.out_conv = nn.Conv2d(features, features, kernel_size=1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None, out_size: tuple[int, int]) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        # Official: scale_factor=2. With an even token grid out_size == 2 * input size, which is the same
        # computation; an explicit size also covers odd grids (H/16 odd) where x2 would not line up.
        x = F.interpolate(x, size=out_size, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class DPTDecoder(nn.Module):
    """Four reassembled maps (1/4 .. 1/32) -> fused ``features``-channel map at 1/2 input resolution.

    With ``grad_checkpointing`` each fusion block is recomputed in backward (BatchNorm statistics
    still updated once per step, see ``checkpointing.py``): the blocks at 1/4 and 1/2 resolution hold
    most of the decoder's activations.
    """

    def __init__(self, in_channels: list[int], features: int) -> None:
        super().__init__()
        for k, c in enumerate(in_channels, start=1):
            self.add_module(f"layer{k}_rn", nn.Conv2d(c, features, kernel_size=3, padding=1, bias=False))
        self.refinenet1 = FusionBlock(features, with_skip=True)
        self.refinenet2 = FusionBlock(features, with_skip=True)
        self.refinenet3 = FusionBlock(features, with_skip=True)
        self.refinenet4 = FusionBlock(features, with_skip=False)
        self.grad_checkpointing = False

    def _fuse(self, block: FusionBlock, x: torch.Tensor, skip: torch.Tensor | None,
              out_size: tuple[int, int]) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, skip, out_size)
        return block(x, skip, out_size)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        l1, l2, l3, l4 = (getattr(self, f"layer{k}_rn")(m) for k, m in enumerate(maps, start=1))
        top = (2 * l1.shape[-2], 2 * l1.shape[-1])
        path = self._fuse(self.refinenet4, l4, None, tuple(l3.shape[-2:]))
        path = self._fuse(self.refinenet3, path, l3, tuple(l2.shape[-2:]))
        path = self._fuse(self.refinenet2, path, l2, tuple(l1.shape[-2:]))
        return self._fuse(self.refinenet1, path, l1, top)
