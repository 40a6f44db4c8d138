"""train.init_from (lseg.models.init_from and the trainer's start-up hook): weights only, strict, exact."""
from __future__ import annotations

import hashlib
import os

import pytest
import torch

from lseg.checkpoint_io import CheckpointError, load_checkpoint, save_atomic
from lseg.checkpoints.average import average_checkpoints
from lseg.checkpoints.payload import checkpoint_payload
from lseg.config import ConfigError, load_config, to_dict
from lseg.distributed import DistInfo
from lseg.engine.trainer import Trainer
from lseg.models import build_model
from lseg.models.convert import convert_checkpoint
from lseg.models.init_from import file_sha256, init_weights

from helpers import SMOKE, assert_same_weights, base_overrides, evil_checkpoint
from reference_lseg import make_reference, save_lightning


def _cfg(*overrides: str):
    return load_config(SMOKE, ["model.text.layers=1", *overrides])


def _source(path, seed: int = 1, ema: bool = False, *overrides: str):
    """A training-like checkpoint of a model with other weights than the run's (seed 0) would start with."""
    cfg = _cfg(*overrides)
    torch.manual_seed(seed)
    model = build_model(cfg.model)
    ema_state = {k: v + 1 for k, v in model.image.state_dict().items()} if ema else None
    save_atomic(checkpoint_payload(model.state_dict(), to_dict(cfg), ema=ema_state, step=7,
                                   optimizer={"state": {0: {"momentum_buffer": torch.ones(2)}}, "param_groups": []},
                                   sampler={"epoch": 3, "position": 8}), path)
    return path


def _trainer(tmp_path, data_root, *overrides: str) -> Trainer:
    cfg = load_config(SMOKE, [*base_overrides(data_root), f"train.output_dir={tmp_path / 'run'}", *overrides])
    (tmp_path / "run").mkdir(exist_ok=True)
    return Trainer(cfg, DistInfo())


@pytest.fixture()
def run_state():
    return build_model(_cfg().model).state_dict()


def test_trainer_starts_from_exactly_the_source_weights_with_fresh_state(tmp_path, synthetic_root):
    src = _source(tmp_path / "src.pt")
    trainer = _trainer(tmp_path, synthetic_root, f"train.init_from={src}", "train.ema_decay=0.5")
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.init_from_weights()
    source = load_checkpoint(src)["model"]
    assert_same_weights(trainer.model.state_dict(), source)
    assert any(not torch.equal(before[k], source[k]) for k in source)  # the load changed something
    assert_same_weights({"image." + k: v for k, v in trainer.ema.module.state_dict().items()},
                        {k: v for k, v in source.items() if k.startswith("image.")})
    # the label embeddings come from the source's text tower
    torch.testing.assert_close(trainer.text_features, trainer.model.text.encode(trainer.class_names), rtol=0, atol=0)
    assert trainer.step == 0 and trainer.epoch == 0 and trainer.samples_in_epoch == 0
    assert trainer.optimizer.state_dict()["state"] == {} and trainer.scheduler.last_epoch == 0
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    assert trainer.init_source == {"path": str(src.resolve()), "sha256": sha, "weights": "model", "excluded": []}
    trainer.save()
    saved = load_checkpoint(tmp_path / "run/checkpoints/last.pt")
    assert saved["provenance"]["init_from"]["sha256"] == sha and saved["step"] == 0


def test_ema_weights_of_the_source(tmp_path, run_state):
    src = _source(tmp_path / "src.pt", ema=True)
    got = init_weights(src, run_state, use_ema=True)
    ckpt = load_checkpoint(src)
    for k, v in got.items():
        want = ckpt["ema"][k] if k.startswith("image.") else ckpt["model"][k]  # the text tower is never averaged
        assert torch.equal(v, want), k
    plain = _source(tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="train.init_ema=true but .*plain.pt has no EMA weights"):
        init_weights(plain, run_state, use_ema=True)


def test_strict_by_default_and_init_exclude_on_both_sides(tmp_path, run_state):
    src = tmp_path / "src.pt"
    ckpt = load_checkpoint(_source(src))
    del ckpt["model"]["image.head1.weight"]
    ckpt["model"]["image.extra.weight"] = torch.zeros(3)
    save_atomic(ckpt, src)
    with pytest.raises(CheckpointError, match="missing key 'image.head1.weight'") as info:
        init_weights(src, run_state)
    assert "\n" not in str(info.value) and "train.init_exclude" in str(info.value)
    with pytest.raises(CheckpointError, match="unexpected key 'image.extra.weight'"):
        init_weights(src, run_state, exclude=[r"^image\.head1\."])
    got = init_weights(src, run_state, exclude=[r"^image\.head1\.", r"extra"])
    assert set(got) == set(run_state) - {"image.head1.weight", "image.head1.bias"}
    assert all(torch.equal(got[k], ckpt["model"][k]) for k in got)


def test_another_architecture_names_the_key_both_shapes_and_the_setting(tmp_path, run_state):
    src = _source(tmp_path / "other.pt", 1, False, "model.features=48")
    with pytest.raises(CheckpointError) as info:
        init_weights(src, run_state, model_config=to_dict(_cfg())["model"])
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"train.init_from: {src} does not fit this run's model: key '")
    assert "has shape [48," in msg and "but [32," in msg and "model.features=48 in the source, 32 here" in msg
    resnet = _source(tmp_path / "resnet.pt", 1, False, "model.backbone=resnet101", "model.hooks=null",
                     "model.reassemble_channels=null")
    with pytest.raises(CheckpointError, match="model.backbone='resnet101' in the source, 'vit_tiny_patch16_224' here"):
        init_weights(resnet, run_state, model_config=to_dict(_cfg())["model"])


def test_averaged_and_converted_checkpoints(tmp_path):
    a, b = _source(tmp_path / "a.pt", 1), _source(tmp_path / "b.pt", 2)
    save_atomic(average_checkpoints([a, b]), tmp_path / "avg.pt")
    state = build_model(_cfg().model).state_dict()
    got = init_weights(tmp_path / "avg.pt", state)
    wa, wb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    key = "image.head1.weight"
    assert torch.equal(got[key], ((wa[key].double() + wb[key].double()) / 2).float())

    cfg = load_config(SMOKE)  # the reference network's text tower has the smoke config's 2 layers
    official = save_lightning(make_reference(seed=3), tmp_path / "official.ckpt")
    save_atomic(convert_checkpoint(official, cfg), tmp_path / "converted.pt")
    with torch.device("meta"):
        expected = build_model(cfg.model).state_dict()
    got = init_weights(tmp_path / "converted.pt", expected)
    assert_same_weights(got, load_checkpoint(tmp_path / "converted.pt")["model"])
    assert any(k.startswith("text.") for k in got)  # CLIP's text tower travels with the official weights


def test_files_that_are_not_lseg_hpc_checkpoints_point_at_the_converter(tmp_path, run_state):
    official = save_lightning(make_reference(), tmp_path / "demo_e200.ckpt")
    with pytest.raises(CheckpointError) as info:
        init_weights(official, run_state)
    msg = str(info.value)
    assert "\n" not in msg and "is an official lang-seg checkpoint; convert it first" in msg
    assert f"python tools/convert_langseg.py {official} OUT.pt" in msg
    torch.save({"w": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="is not an lseg-hpc checkpoint .*tools/convert_langseg.py"):
        init_weights(tmp_path / "plain.pt", run_state)
    with pytest.raises(CheckpointError, match="train.init_from: checkpoint not found"):
        init_weights(tmp_path / "missing.pt", run_state)


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path, run_state):
    marker = tmp_path / "pwned"
    src = evil_checkpoint(tmp_path / "evil.pt", marker)
    with pytest.raises(CheckpointError) as info:
        init_weights(src, run_state)
    msg = str(info.value)
    assert not marker.exists() and not os.path.exists("pwned")
    assert "\n" not in msg and "refused to unpickle objects that could run code" in msg
    assert "tools/convert_langseg.py --trust-pickle" in msg


def test_config_checks():
    with pytest.raises(ConfigError, match=r"train.init_exclude\[1\]: '\(head' is not a valid regex"):
        _cfg("train.init_from=x.pt", "train.init_exclude=['^text', '(head']")
    with pytest.raises(ConfigError, match="train.init_ema: true needs train.init_from"):
        _cfg("train.init_ema=true")


def test_file_sha256(tmp_path):
    data = os.urandom(3 << 20) + b"tail"
    (tmp_path / "f").write_bytes(data)
    assert file_sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()
