"""Loading and validating configs against the schema (``lseg.config.schema``).

Why a hand-rolled loader instead of OmegaConf/Hydra: the schema *is* the documentation, YAML files
only hold differences from it, and every error (unknown key, wrong type, impossible value) must be
one line naming the dotted key before any work starts. ``dataclasses`` + ``typing`` give us the
types for free; this module is the only place that interprets them.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import logging
import re
import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml

from lseg.config.schema import Config


class ConfigError(ValueError):
    """A user-caused configuration problem; the message is one line naming the key."""


# --------------------------------------------------------------------------------------------
# Validation of values (types are checked by the loader)
# --------------------------------------------------------------------------------------------

_CHOICES: dict[str, tuple] = {
    "model.arch_option": (0, 1, 2),
    "model.activation": ("relu", "lrelu", "tanh"),
    "data.on_bad_sample": ("skip", "error"),
    "data.folder.zero_is": ("class", "ignore"),
    "optim.name": ("sgd", "adamw"),
    "train.precision": ("bf16", "fp16", "fp32"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.label_set": ("run", "per_sample"),
    "dist.backend": ("auto", "nccl", "gloo"),
}
_POSITIVE = (
    "model.features", "data.base_size", "data.crop_size", "data.eval_size", "optim.lr",
    "train.max_steps", "train.batch_size", "train.accum_steps", "train.ckpt_every", "train.keep_last",
    "train.max_nonfinite_steps", "eval.batch_size", "log.every", "dist.timeout_s", "model.logit_scale",
    "train.loss_chunks", "train.fp16_init_scale", "dist.bucket_cap_mb",
)
_NON_NEGATIVE = (
    "model.block_depth", "data.num_workers", "optim.weight_decay", "optim.momentum",
    "optim.warmup_steps", "optim.min_lr", "optim.decoder_lr_mult", "train.keep_every",
    "train.seed", "eval.every", "eval.num_image_panels",
)


def _get(cfg: Config, dotted: str) -> Any:
    obj: Any = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def validate(cfg: Config) -> Config:
    """Check values that types cannot express; raise ConfigError naming the key."""
    for key, choices in _CHOICES.items():
        if _get(cfg, key) not in choices:
            raise ConfigError(f"{key}: {_get(cfg, key)!r} is not one of {list(choices)}")
    for key in _POSITIVE:
        if not _get(cfg, key) > 0:
            raise ConfigError(f"{key}: must be > 0, got {_get(cfg, key)!r}")
    for key in _NON_NEGATIVE:
        if _get(cfg, key) < 0:
            raise ConfigError(f"{key}: must be >= 0, got {_get(cfg, key)!r}")
    m, d, o, t = cfg.model, cfg.data, cfg.optim, cfg.train
    if m.hooks is not None and len(m.hooks) != 4:
        raise ConfigError(f"model.hooks: need 4 block indices, got {m.hooks}")
    if m.reassemble_channels is not None and len(m.reassemble_channels) != 4:
        raise ConfigError(f"model.reassemble_channels: need 4 values, got {m.reassemble_channels}")
    if d.crop_size % 16 or d.eval_size % 16:
        raise ConfigError("data.crop_size/data.eval_size: must be multiples of the patch size 16")
    if len(d.scale_range) != 2 or not 0 < d.scale_range[0] <= d.scale_range[1]:
        raise ConfigError(f"data.scale_range: need [low, high] with 0 < low <= high, got {d.scale_range}")
    if not 0 <= d.max_bad_fraction <= 1:
        raise ConfigError(f"data.max_bad_fraction: must be in [0, 1], got {d.max_bad_fraction}")
    if not d.train_datasets:
        raise ConfigError("data.train_datasets: must name at least one dataset")
    if not 0 <= d.folder.ignore_index <= 255:
        raise ConfigError(f"data.folder.ignore_index: must be a mask value in 0..255, got {d.folder.ignore_index}")
    if d.train_ratios is not None and (
        len(d.train_ratios) != len(d.train_datasets) or any(r <= 0 for r in d.train_ratios)
    ):
        raise ConfigError("data.train_ratios: need one positive ratio per entry of data.train_datasets")
    if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
        raise ConfigError(f"optim.betas: need two values in [0, 1), got {o.betas}")
    if o.clip_grad_norm is not None and o.clip_grad_norm <= 0:
        raise ConfigError(f"optim.clip_grad_norm: must be > 0 or null, got {o.clip_grad_norm}")
    if not 0 <= t.ema_decay < 1:
        raise ConfigError(f"train.ema_decay: must be in [0, 1), got {t.ema_decay}")
    if not 0 < o.warmup_factor <= 1:
        raise ConfigError(f"optim.warmup_factor: must be in (0, 1], got {o.warmup_factor}")
    for i, pattern in enumerate(t.init_exclude):
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"train.init_exclude[{i}]: {pattern!r} is not a valid regex ({exc})") from None
    if t.init_ema and not t.init_from:
        raise ConfigError("train.init_ema: true needs train.init_from (the checkpoint whose EMA weights to take)")
    if t.label_set == "per_sample" and d.holdout_classes:
        raise ConfigError("data.holdout_classes: not used with train.label_set=per_sample (a batch's label set is "
                          "its samples' classes; choose the training classes with the dataset split)")
    return cfg


# --------------------------------------------------------------------------------------------
# Loading: YAML mapping + dotted overrides -> typed dataclasses
# --------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML value to the schema type ``tp``; raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0] if len(errors) == 1 else ConfigError(
            f"{key}: expected {_type_name(tp)}, got {value!r}"
        )
    if origin is dict:
        key_tp, value_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {_convert(k, key_tp, f"{key} key"): _convert(v, value_tp, f"{key}.{k}") for k, v in value.items()}
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, key + ".")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported schema type {tp!r}")  # pragma: no cover


def _unknown_key(prefix: str, name: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
    return ConfigError(f"unknown config key '{prefix}{name}'{hint}")


#: Keys that existed once and do nothing now. Configs saved in older run dirs and checkpoints still
#: hold them, so they are dropped with a warning instead of refusing those files.
RETIRED_KEYS: dict[str, str] = {
    "log.image_every": "image panels are written at every evaluation (eval.num_image_panels)",
}


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for name, value in data.items():
        if prefix + str(name) in RETIRED_KEYS:
            logging.getLogger("lseg").warning("config key '%s%s' is retired and ignored: %s",
                                              prefix, name, RETIRED_KEYS[prefix + str(name)])
            continue
        if name not in hints:
            raise _unknown_key(prefix, str(name), names)
        kwargs[name] = _convert(value, hints[name], prefix + name)
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted}: '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """``["optim.lr=0.001", "model.hooks=[2,5,8,11]"]`` -> [(key, yaml-parsed value)]."""
    parsed = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}': expected key=value, e.g. optim.lr=0.001")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        parsed.append((key.strip(), value))
    return parsed


def _check_override_key(key: str) -> None:
    cls: Any = Config
    prefix = ""
    parts = key.split(".")
    for i, part in enumerate(parts):
        if typing.get_origin(cls) is dict and i == len(parts) - 1:
            return  # data.roots.<name>=...: one entry of a mapping
        if not dataclasses.is_dataclass(cls):
            raise ConfigError(f"override '{key}': '{prefix.rstrip('.')}' is not a section")
        hints = typing.get_type_hints(cls)
        if part not in hints:
            raise _unknown_key(prefix, part, list(hints))
        cls = hints[part]
        prefix += part + "."


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping safely; malformed files give one line with file and position."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"malformed YAML in {path}{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    return data


def from_dict(data: dict) -> Config:
    return validate(_build(Config, data))


def load_config(path: str | Path | dict | None = None, overrides: list[str] | tuple = ()) -> Config:
    """Schema defaults <- YAML file <- ``key=value`` overrides, then validation.

    ``path`` may also be an already-loaded config dict (e.g. the one stored in a checkpoint); it is
    copied, not changed.
    """
    if isinstance(path, dict):
        data = copy.deepcopy(path)
    else:
        data = load_yaml(path) if path is not None else {}
    for key, value in parse_overrides(list(overrides)):
        _check_override_key(key)
        _set_dotted(data, key, value)
    return from_dict(data)


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Config, path: str | Path | None = None) -> str:
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    if path is not None:
        Path(path).write_text(text)
    return text


def add_config_args(parser) -> None:
    """The flags every entry point shares: --config FILE and trailing key=value overrides."""
    parser.add_argument("--config", default=None, help="YAML config file (default: schema defaults)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides, e.g. optim.lr=0.001 model.arch_option=2")
