"""The configuration of every entry point: the schema (``schema``) and its loader (``loading``).

``from lseg.config import Config, load_config, ...`` is the interface; the two modules only split
what users read (keys, types, defaults) from the machinery that checks and builds it.
"""
from __future__ import annotations

from lseg.config.loading import (
    RETIRED_KEYS, ConfigError, add_config_args, dump_yaml, from_dict, load_config, load_yaml, parse_overrides,
    to_dict, validate,
)
from lseg.config.schema import (
    Config, DataConfig, DistConfig, EvalConfig, FolderConfig, LogConfig, ModelConfig, OptimConfig, TextConfig,
    TrainConfig,
)

__all__ = [
    "Config", "ConfigError", "DataConfig", "DistConfig", "EvalConfig", "FolderConfig", "LogConfig", "ModelConfig",
    "OptimConfig", "RETIRED_KEYS", "TextConfig", "TrainConfig", "add_config_args", "dump_yaml", "from_dict",
    "load_config", "load_yaml", "parse_overrides", "to_dict", "validate",
]
