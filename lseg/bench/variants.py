"""The switches a benchmark compares: precision, activation checkpointing, torch.compile, channels-last.

A variant is a change to the config, nothing else: each variant gets its own ``Trainer`` built from
:meth:`Variant.apply`, so what is timed is exactly what ``python -m lseg.train`` would run with
those settings.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Any

from lseg.config import Config, ConfigError
from lseg.runtime import PRECISIONS


@dataclasses.dataclass(frozen=True)
class Variant:
    """One point of the grid: the four switches that change step speed or memory."""

    precision: str = "fp32"
    ckpt: bool = False
    compile: bool = False
    channels_last: bool = False

    @property
    def name(self) -> str:
        flags = [f for f, on in (("ckpt", self.ckpt), ("compile", self.compile),
                                 ("cl", self.channels_last)) if on]
        return "+".join([self.precision, *flags])

    def apply(self, cfg: Config) -> Config:
        """``cfg`` with this variant's four settings (a new object; ``cfg`` is left as it is)."""
        return dataclasses.replace(
            cfg, model=dataclasses.replace(cfg.model, grad_checkpointing=self.ckpt),
            train=dataclasses.replace(cfg.train, precision=self.precision, compile=self.compile,
                                      channels_last=self.channels_last))


_ON_OFF = {"on": True, "off": False, "true": True, "false": False, "1": True, "0": False}
_VARIANT_KEYS = {"precision": "precision", "ckpt": "ckpt", "compile": "compile",
                 "channels_last": "channels_last", "cl": "channels_last"}


def base_variant(cfg: Config) -> Variant:
    """The variant the config itself describes."""
    return Variant(cfg.train.precision, cfg.model.grad_checkpointing, cfg.train.compile, cfg.train.channels_last)


def parse_variants(specs: list[str] | None, base: Variant) -> list[Variant]:
    """``["precision=bf16,ckpt=on", "ckpt=off"]`` -> Variants; each spec changes only what it names.

    A spec may hold several combos separated by ``;``. A value may be ``a|b`` to expand a grid:
    ``precision=fp32|bf16,ckpt=on|off`` gives four variants. No specs: just ``base``.
    """
    combos = [c.strip() for s in (specs or []) for c in s.split(";") if c.strip()]
    if not combos:
        return [base]
    out: list[Variant] = []
    for combo in combos:
        choices: list[list[tuple[str, Any]]] = []
        for item in combo.split(","):
            key, sep, raw = item.strip().partition("=")
            if not sep or key not in _VARIANT_KEYS:
                raise ConfigError(f"variant item '{item}': expected one of {sorted(_VARIANT_KEYS)}=value")
            field = _VARIANT_KEYS[key]
            values = []
            for v in raw.split("|"):
                if field == "precision":
                    if v not in PRECISIONS:
                        raise ConfigError(f"variant precision '{v}': expected one of {list(PRECISIONS)}")
                    values.append((field, v))
                elif v.lower() in _ON_OFF:
                    values.append((field, _ON_OFF[v.lower()]))
                else:
                    raise ConfigError(f"variant {key}='{v}': expected on or off")
            choices.append(values)
        for picked in itertools.product(*choices):
            v = dataclasses.replace(base, **dict(picked))
            if v not in out:
                out.append(v)
    return out
