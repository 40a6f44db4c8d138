"""lseg.engine.optim: the two LR groups and the per-iteration warm-up + poly schedule."""
import pytest
import torch
from torch import nn

from lseg.config import OptimConfig
from lseg.engine.optim import build_optimizer, build_scheduler, lr_factor


def test_lr_schedule_warmup_then_poly():
    cfg = OptimConfig(lr=0.01, warmup_steps=10, warmup_factor=0.1, poly_power=0.9)
    assert lr_factor(0, 100, cfg) == pytest.approx(0.1)
    assert lr_factor(5, 100, cfg) == pytest.approx((1 - 0.05) ** 0.9 * 0.55)
    assert lr_factor(50, 100, cfg) == pytest.approx(0.5 ** 0.9)
    assert lr_factor(100, 100, cfg) == 0.0
    floor = OptimConfig(lr=0.01, min_lr=0.001)
    assert lr_factor(100, 100, floor) == pytest.approx(0.1)


def test_decoder_group_gets_the_multiplier_and_the_scheduler_scales_both():
    backbone, decoder, frozen = nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2)
    frozen.requires_grad_(False)
    cfg = OptimConfig(lr=0.004, decoder_lr_mult=10.0, warmup_steps=0, poly_power=1.0)
    opt = build_optimizer({"backbone": list(backbone.parameters()),
                           "decoder": [*decoder.parameters(), *frozen.parameters()]}, cfg)
    assert isinstance(opt, torch.optim.SGD)
    assert [g["name"] for g in opt.param_groups] == ["backbone", "decoder"]
    assert [len(g["params"]) for g in opt.param_groups] == [2, 2]  # frozen parameters are left out
    sched = build_scheduler(opt, max_steps=4, cfg=cfg)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.004, 0.04])
    opt.step()
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.003, 0.03])  # poly 1.0: 1 - 1/4
