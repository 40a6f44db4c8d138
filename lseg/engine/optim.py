"""Optimizer and per-iteration LR schedule (official recipe: SGD, decoder LR x10, poly 0.9)."""
from __future__ import annotations

import math

import torch
from torch import nn

from lseg.config import OptimConfig


def build_optimizer(param_groups: dict[str, list[nn.Parameter]], cfg: OptimConfig) -> torch.optim.Optimizer:
    """Two groups: the ViT backbone at ``lr`` and everything else at ``lr * decoder_lr_mult``.

    Weight decay applies to every parameter, norms and biases included, as in the official code.
    """
    groups = [
        {"params": [p for p in param_groups["backbone"] if p.requires_grad], "lr": cfg.lr, "name": "backbone"},
        {"params": [p for p in param_groups["decoder"] if p.requires_grad],
         "lr": cfg.lr * cfg.decoder_lr_mult, "name": "decoder"},
    ]
    groups = [g for g in groups if g["params"]]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def lr_factor(step: int, max_steps: int, cfg: OptimConfig) -> float:
    """Multiplier of each group's base LR at ``step``: linear warm-up, then poly decay to min_lr."""
    poly = max(0.0, 1.0 - step / max_steps) ** cfg.poly_power
    if step < cfg.warmup_steps:
        alpha = step / cfg.warmup_steps
        poly *= cfg.warmup_factor * (1 - alpha) + alpha
    floor = cfg.min_lr / cfg.lr
    return floor + (1 - floor) * poly if math.isfinite(floor) else poly


def build_scheduler(optimizer: torch.optim.Optimizer, max_steps: int,
                    cfg: OptimConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, max_steps, cfg))
