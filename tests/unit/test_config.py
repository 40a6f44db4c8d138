"""Config schema: YAML + overrides, fail-fast validation, round trip."""
import subprocess
import sys
from pathlib import Path

import pytest

from lseg.config import Config, ConfigError, dump_yaml, from_dict, load_config, load_yaml, to_dict

from helpers import REPO  # noqa: E402


def test_real_recipe_matches_official_hyper_parameters():
    cfg = load_config(REPO / "configs/lseg_vitl16_480_mseg.yaml")
    from lseg.models.backbone import resolve_levels

    assert cfg.model.backbone == "vit_large_patch16_384"
    _, hooks, channels = resolve_levels(cfg.model)  # the backbone's official values (none set in the file)
    assert hooks == [5, 11, 17, 23]
    assert channels == [256, 512, 1024, 1024] and cfg.model.features == 256
    assert (cfg.optim.name, cfg.optim.momentum, cfg.optim.weight_decay) == ("sgd", 0.9, 1e-4)
    assert cfg.optim.lr == pytest.approx(0.004 / 16 * cfg.train.batch_size)
    assert cfg.optim.decoder_lr_mult == 10.0 and cfg.optim.poly_power == 0.9
    assert (cfg.data.base_size, cfg.data.crop_size, cfg.data.scale_range) == (520, 480, [0.5, 2.0])
    assert cfg.model.logit_scale == pytest.approx(1 / 0.07)
    assert cfg.train.precision == "bf16"


def test_overrides_convert_types_from_schema():
    cfg = load_config(REPO / "configs/smoke.yaml",
                      ["optim.lr=0.001", "model.arch_option=2", "model.hooks=[1,2,3,4]",
                       "optim.clip_grad_norm=1", "eval.max_samples=null", "train.compile=true",
                       "optim.weight_decay=1e-5"])
    assert cfg.optim.lr == 0.001 and isinstance(cfg.optim.lr, float)
    assert cfg.model.arch_option == 2 and cfg.model.hooks == [1, 2, 3, 4]
    assert cfg.optim.clip_grad_norm == 1.0 and isinstance(cfg.optim.clip_grad_norm, float)
    assert cfg.eval.max_samples is None and cfg.train.compile is True
    assert cfg.optim.weight_decay == 1e-5


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=0.1", "unknown config key 'optim.lrr' (did you mean 'optim.lr'?)"),
    ("optimm.lr=0.1", "unknown config key 'optimm' (did you mean 'optim'?)"),
    ("train.batch_size=four", "train.batch_size: expected an integer, got 'four'"),
    ("train.batch_size=0", "train.batch_size: must be > 0, got 0"),
    ("train.precision=fp8", "train.precision: 'fp8' is not one of ['bf16', 'fp16', 'fp32']"),
    ("model.arch_option=3", "model.arch_option: 3 is not one of [0, 1, 2]"),
    ("data.crop_size=100", "data.crop_size/data.eval_size: must be multiples of the patch size 16"),
    ("train.ema_decay=1.5", "train.ema_decay: must be in [0, 1), got 1.5"),
    ("model.pretrained=maybe", "model.pretrained: expected true/false, got 'maybe'"),
    ("optim.lr", "override 'optim.lr': expected key=value"),
    ("optim.lr.x=1", "override 'optim.lr.x': 'optim.lr' is not a section"),
])
def test_bad_values_fail_with_one_line_naming_the_key(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(REPO / "configs/smoke.yaml", [override])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_key_in_yaml_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  max_step: 10\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'train.max_step' \(did you mean 'train.max_steps'\?\)"):
        load_config(f)


def test_malformed_yaml_names_file_and_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train:\n  max_steps: 10\n  batch_size: [1, 2\n")
    with pytest.raises(ConfigError) as info:
        load_yaml(f)
    assert str(f) in str(info.value) and "line" in str(info.value)


def test_yaml_is_loaded_safely(tmp_path):
    f = tmp_path / "evil.yaml"
    f.write_text("train: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_yaml(f)
    assert not (Path.cwd() / "pwned").exists()


def test_dump_and_load_round_trip(tmp_path):
    cfg = load_config(REPO / "configs/smoke.yaml", ["optim.lr=0.0123", "data.train_ratios=[1, 3]"])
    path = tmp_path / "config.yaml"
    dump_yaml(cfg, path)
    again = load_config(path)
    assert again == cfg
    assert from_dict(to_dict(cfg)) == cfg
    assert Config() == load_config(None)


def test_cli_rejects_bad_value_before_any_work(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "lseg.train", "--config", str(REPO / "configs/smoke.yaml"),
                           "--output-dir", str(out), "optim.lr=-1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error (rank ?): optim.lr: must be > 0, got -1.0"]
    assert not out.exists()


def test_retired_keys_in_saved_configs_are_dropped_with_a_warning(tmp_path, caplog):
    """Run dirs and checkpoints written before a key was retired still load; typing it is an error."""
    from lseg.config import ConfigError, RETIRED_KEYS

    assert "log.image_every" in RETIRED_KEYS
    old = tmp_path / "config.yaml"
    old.write_text("log:\n  every: 5\n  image_every: 100\n")
    with caplog.at_level("WARNING", logger="lseg"):
        cfg = load_config(old)
    assert cfg.log.every == 5 and not hasattr(cfg.log, "image_every")
    assert "log.image_every' is retired" in caplog.text
    with pytest.raises(ConfigError, match="unknown config key 'log.image_every'"):
        load_config(None, ["log.image_every=3"])
