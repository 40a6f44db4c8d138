"""DDP settings for scale (dist.*), each checked on real gloo DDP with 2 processes against plain DDP."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lseg.config import ConfigError, load_config
from lseg.distributed import DistInfo
from lseg.engine.trainer import Trainer, ddp_options

from helpers import SMOKE, free_port

# The DDP construction before these settings existed: copied gradients, dynamic graph, 25 MB buckets.
PLAIN = ["dist.gradient_as_bucket_view=false", "dist.static_graph=false", "dist.bucket_cap_mb=25"]
RUN = ["data.crop_size=64", "train.batch_size=2", "model.text.layers=1", "model.grad_checkpointing=true",
       "optim.name=sgd", "optim.warmup_steps=0", "train.device=cpu"]


def _batch(rank: int, size: int, num_classes: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + rank)  # each rank its own half of the global batch
    label = torch.randint(0, num_classes, (2, size, size), generator=g)
    label[:, : size // 4] = 255
    return {"image": torch.rand(2, 3, size, size, generator=g) * 2 - 1, "label": label,
            "index": torch.arange(2), "num_bad": torch.zeros(2, dtype=torch.long)}


def _worker(rank: int, port: int, overrides: list[str], out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        cfg = load_config(SMOKE, [*RUN, f"train.output_dir={out}.run", *overrides])
        trainer = Trainer(cfg, DistInfo(rank=rank, world_size=2))
        batch = _batch(rank, cfg.data.crop_size, len(trainer.class_names))
        trainer.batch_source = iter([batch, batch])
        trainer.model.image.train()
        grads = []
        for _ in range(2):  # the second step runs on DDP's rebuilt buckets and re-created gradients
            trainer.run_step()
            grads.append({n: p.grad.clone() for n, p in trainer.model.image.named_parameters()})
        ddp, text = trainer.ddp, trainer.text_features
        held = {t.untyped_storage().data_ptr() for t in [*ddp.parameters(), *ddp.buffers()]}
        if rank == 0:
            torch.save({"grads": grads, "static_graph": ddp.static_graph,
                        "gradient_as_bucket_view": ddp.gradient_as_bucket_view,
                        "bucket_bytes_cap": ddp.bucket_bytes_cap,
                        "text_off_graph": (not text.requires_grad and text.grad_fn is None
                                           and text.untyped_storage().data_ptr() not in held)}, out)
    finally:
        dist.destroy_process_group()


def _run(tmp_path: Path, name: str, overrides: list[str]) -> dict:
    out = tmp_path / f"{name}.pt"
    mp.spawn(_worker, args=(free_port(), overrides, str(out)), nprocs=2, join=True)
    return torch.load(out, weights_only=True)


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> dict:
    return _run(tmp_path_factory.mktemp("ddp"), "plain", PLAIN)


def test_ddp_options_follow_the_config():
    cfg = load_config(SMOKE, ["dist.bucket_cap_mb=100"])
    assert ddp_options(cfg) == {"find_unused_parameters": False, "bucket_cap_mb": 100.0,
                                "gradient_as_bucket_view": True, "static_graph": True}
    # static_graph only where valid: not with no_sync accumulation, not under torch.compile
    assert not ddp_options(load_config(SMOKE, ["train.accum_steps=2"]))["static_graph"]
    assert not ddp_options(load_config(SMOKE, ["train.compile=true"]))["static_graph"]
    assert ddp_options(load_config(SMOKE, PLAIN)) == {"find_unused_parameters": False, "bucket_cap_mb": 25.0,
                                                      "gradient_as_bucket_view": False, "static_graph": False}
    with pytest.raises(ConfigError, match="dist.bucket_cap_mb: must be > 0, got 0.0"):
        load_config(SMOKE, ["dist.bucket_cap_mb=0"])


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["dist.gradient_as_bucket_view=true", "dist.static_graph=true",
                                     "dist.bucket_cap_mb=0.05"])
def test_each_ddp_setting_gives_the_gradients_of_plain_ddp(tmp_path, plain, setting):
    """Two steps with each setting: every gradient bit-identical to plain DDP (with two ranks the
    all-reduce adds the same two numbers whatever the bucketing); the label embeddings are no DDP
    parameter or buffer and carry no autograd history."""
    got = _run(tmp_path, "setting", [*PLAIN, setting])
    key, value = setting.removeprefix("dist.").split("=")
    if key == "bucket_cap_mb":
        assert got["bucket_bytes_cap"] == int(float(value) * 2**20) != plain["bucket_bytes_cap"]
    else:
        assert got[key] is True and plain[key] is False
    assert got["text_off_graph"] and plain["text_off_graph"]
    for step, (a, b) in enumerate(zip(got["grads"], plain["grads"]), start=1):
        assert a.keys() == b.keys()
        different = [n for n in a if not torch.equal(a[n], b[n])]
        assert not different, f"step {step}: {len(different)} gradients differ, e.g. {different[:3]}"
