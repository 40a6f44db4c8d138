"""Official lang-seg checkpoint -> our checkpoint (the CLI is tools/convert_langseg.py).

Official names and ours differ only by prefixes, plus dead weights that the official forward never
uses and that we do not create.
"""
from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any

import torch

from lseg.checkpoint_io import CheckpointError, load_checkpoint
from lseg.checkpoints.payload import checkpoint_payload
from lseg.config import Config, ModelConfig, to_dict
from lseg.models.lseg import build_model

# Official prefix -> our prefix, first match wins.
_PREFIXES: list[tuple[str, str]] = [
    ("pretrained.model.", "image.backbone.model."),
    ("scratch.head1.", "image.head1."),
    ("scratch.head_block.depthwise.depthwise.", "image.spatial.conv."),
    ("scratch.layer", "image.decoder.layer"),
    ("scratch.refinenet", "image.decoder.refinenet"),
    ("clip_pretrained.", "text.tower."),
]
# act_postprocess{k}.{0.project.0 | 3 | 4} -> reassemble.{k-1}.{project.0 | conv | resample}
_REASSEMBLE = re.compile(r"^pretrained\.act_postprocess([1-4])\.(0\.project\.0|3|4)\.(weight|bias)$")
_REASSEMBLE_PART = {"0.project.0": "project.0", "3": "conv", "4": "resample"}
# Weights the official forward never reads.
_DEAD = re.compile(
    r"^(clip_pretrained\.visual\.|clip_pretrained\.(logit_scale|input_resolution|context_length|vocab_size)$"
    r"|pretrained\.model\.(norm|head|fc_norm)\.|scratch\.refinenet4\.resConfUnit1\.)"
)


class ConversionError(ValueError):
    """The official checkpoint does not fit the requested architecture; the message names the key."""


def official_state_dict(ckpt: dict) -> tuple[dict[str, torch.Tensor], str]:
    """The LSegNet state dict inside a Lightning checkpoint, an ``{"model": ...}`` dict or a plain one."""
    if isinstance(ckpt.get("state_dict"), dict):
        state, kind = ckpt["state_dict"], "lightning"
    elif isinstance(ckpt.get("model"), dict) and "format" not in ckpt:
        state, kind = ckpt["model"], "model-dict"
    else:
        state, kind = ckpt, "state-dict"
    if state and all(k.startswith("net.") for k in state):
        state = {k[len("net."):]: v for k, v in state.items()}
    if not any(k.startswith("pretrained.model.") for k in state):
        raise ConversionError("no 'pretrained.model.*' keys: not an official lang-seg LSegNet checkpoint")
    return state, kind


def map_key(key: str) -> str | None:
    """Our name for an official key; None for a dead weight; raise for a key we do not know."""
    if _DEAD.match(key):
        return None
    m = _REASSEMBLE.match(key)
    if m:
        return f"image.reassemble.{int(m.group(1)) - 1}.{_REASSEMBLE_PART[m.group(2)]}.{m.group(3)}"
    for old, new in _PREFIXES:
        if key.startswith(old):
            return new + key[len(old):]
    raise ConversionError(f"unexpected key '{key}' in the official checkpoint")


def official_name(key: str) -> str:
    """Inverse of :func:`map_key`, for messages about keys the official file lacks."""
    m = re.match(r"^image\.reassemble\.([0-3])\.(project\.0|conv|resample)\.(.+)$", key)
    if m:
        part = {v: k for k, v in _REASSEMBLE_PART.items()}[m.group(2)]
        return f"pretrained.act_postprocess{int(m.group(1)) + 1}.{part}.{m.group(3)}"
    for old, new in _PREFIXES:
        if key.startswith(new):
            return old + key[len(new):]
    return key


def convert_state_dict(official: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                       cfg: ModelConfig) -> tuple[dict[str, torch.Tensor], int]:
    """Map, check against ``expected`` (our model's state dict, e.g. built on ``meta``), cast to its dtypes.

    Returns the converted state dict and the number of dropped (dead) tensors. Text weights stored
    in fp16 by the official code become fp32.
    """
    out: dict[str, torch.Tensor] = {}
    dropped = 0
    for key, value in official.items():
        new = map_key(key)
        if new is None:
            dropped += 1
            continue
        if not isinstance(value, torch.Tensor):
            raise ConversionError(f"key '{key}' is not a tensor")
        if new not in expected:
            raise ConversionError(f"unexpected key '{key}' (would be '{new}', which this architecture does not "
                                  "have; check --arch-option / --config)")
        ref = expected[new]
        if tuple(value.shape) != tuple(ref.shape):
            raise ConversionError(f"key '{key}' has shape {list(value.shape)} but the architecture needs "
                                  f"{list(ref.shape)} for '{new}' (check --config)")
        out[new] = value.to(ref.dtype).contiguous() if value.dtype != ref.dtype else value.contiguous()
    if "image.logit_scale_log" in expected and "image.logit_scale_log" not in out:
        # The official scale is a constant (not in its state dict); start the learnable one there.
        out["image.logit_scale_log"] = torch.tensor(math.log(cfg.logit_scale), dtype=torch.float32)
    for key in expected:
        if key not in out:
            raise ConversionError(f"missing key '{official_name(key)}' (needed for '{key}'; check "
                                  "--arch-option / --config)")
    return {k: out[k] for k in expected}, dropped


#: Present only in networks with the spatial block (official arch_option 1 or 2).
HEAD_BLOCK_KEY = "scratch.head_block.depthwise.depthwise.weight"


def convert_checkpoint(src: str | Path, cfg: Config, trust_pickle: bool = False) -> dict[str, Any]:
    """The lseg-hpc payload (model + ``cfg``) for the official file ``src``; errors name ``src``.

    ``cfg.model`` must describe the network the file was trained with; the official files do not
    record it, so a mismatch is reported by key with the setting to check.
    """
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pretrained=False))
    try:
        ckpt = load_checkpoint(src, trust_pickle=trust_pickle)
    except CheckpointError as exc:
        if "refused to unpickle" in str(exc):
            raise CheckpointError(f"{exc}; re-run with --trust-pickle if you trust this file") from None
        raise
    try:
        official, kind = official_state_dict(ckpt)
        if HEAD_BLOCK_KEY in official and cfg.model.arch_option == 0:
            raise ConversionError(f"the checkpoint has '{HEAD_BLOCK_KEY}' (arch_option 1 or 2): pass --arch-option "
                                  "1|2 and the --block-depth/--activation it was trained with")
        with torch.device("meta"):  # shapes only: no memory, no init time
            expected = build_model(cfg.model).state_dict()
        state, dropped = convert_state_dict(official, expected, cfg.model)
    except ConversionError as exc:
        raise ConversionError(f"{src}: {exc}") from None
    return checkpoint_payload(state, to_dict(cfg), converted_from={
        "path": str(Path(src).resolve()), "source_format": kind, "dropped_tensors": dropped})
