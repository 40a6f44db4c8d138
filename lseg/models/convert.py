"""Official lang-seg checkpoint -> our checkpoint (the CLI is tools/convert_langseg.py).

Official names and ours differ only by prefixes, plus dead weights that the official forward never
uses and that we do not create. The image encoder is read off the file (ViT width and patch size,
or the zero-shot ResNet-101's stage keys), because the official files do not record it.
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
from lseg.models.backbone import BACKBONES, backbone_name, backbone_spec
from lseg.models.lseg import build_model

# Official prefix -> our prefix, first match wins (both ways: the ResNet ones before the ViT one).
_PREFIXES: list[tuple[str, str]] = [
    # zero-shot ResNet-101: pretrained.layer1 = Sequential(conv1, bn1, relu, maxpool, layer1)
    ("pretrained.layer1.0.", "image.backbone.model.conv1."),
    ("pretrained.layer1.1.", "image.backbone.model.bn1."),
    ("pretrained.layer1.4.", "image.backbone.model.layer1."),
    ("pretrained.layer2.", "image.backbone.model.layer2."),
    ("pretrained.layer3.", "image.backbone.model.layer3."),
    ("pretrained.layer4.", "image.backbone.model.layer4."),
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
    if not any(k.startswith(("pretrained.model.", "pretrained.layer1.")) for k in state):
        raise ConversionError("no 'pretrained.model.*' keys: not an official lang-seg LSegNet checkpoint "
                              "(nor 'pretrained.layer1.*': not a zero-shot ResNet one)")
    return state, kind


def describe_backbone(name: str) -> str:
    """``resnet101 (official clip_resnet101)`` for messages."""
    official = BACKBONES[name].official
    return f"{name} (official {official})" if official else name


def detect_backbone(official: dict[str, torch.Tensor]) -> str:
    """Which supported image encoder the official state dict holds (our name); raise if none.

    ResNet: its stem convolution ``pretrained.layer1.0``; ViT: the patch embedding's shape
    ``[width, 3, patch, patch]``, which tells the table's ViTs apart.
    """
    if "pretrained.layer1.0.weight" in official:
        return next(n for n, s in BACKBONES.items() if s.kind == "resnet")
    proj = official.get("pretrained.model.patch_embed.proj.weight")
    if not isinstance(proj, torch.Tensor) or proj.ndim != 4:
        raise ConversionError("missing key 'pretrained.model.patch_embed.proj.weight' (cannot tell the image encoder)")
    width, patch = int(proj.shape[0]), int(proj.shape[-1])
    for name, spec in BACKBONES.items():
        if spec.kind == "vit" and (spec.width, spec.patch) == (width, patch):
            return name
    raise ConversionError(f"the file holds a ViT of width {width} with {patch}x{patch} patches, which is none of "
                          f"the supported backbones: {', '.join(map(describe_backbone, BACKBONES))}")


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


def convert_checkpoint(src: str | Path, cfg: Config, trust_pickle: bool = False,
                       backbone: str | None = None) -> dict[str, Any]:
    """The lseg-hpc payload (model + ``cfg``) for the official file ``src``; errors name ``src``.

    The image encoder is the one the file holds; ``backbone`` (ours or lang-seg's name) is the
    caller's claim, checked against it. The rest of ``cfg.model`` must describe the network the
    file was trained with (the files do not record it), so a mismatch is reported by key with the
    setting to check.
    """
    if backbone is not None:
        backbone_spec(backbone_name(backbone))  # an unsupported name is a config error, before any reading
    try:
        ckpt = load_checkpoint(src, trust_pickle=trust_pickle)
    except CheckpointError as exc:
        if "refused to unpickle" in str(exc):
            raise CheckpointError(f"{exc}; re-run with --trust-pickle if you trust this file") from None
        raise
    try:
        official, kind = official_state_dict(ckpt)
        found = detect_backbone(official)
        if backbone is not None and backbone_name(backbone) != found:
            hint = BACKBONES[found].official or found
            raise ConversionError(f"the file holds the image encoder {describe_backbone(found)}, not {backbone}; "
                                  f"convert it with --backbone {hint}")
        model = dataclasses.replace(cfg.model, pretrained=False)
        if model.backbone != found:  # hooks / widths set for another encoder do not apply: the table's do
            model = dataclasses.replace(model, backbone=found, hooks=None, reassemble_channels=None)
        cfg = dataclasses.replace(cfg, model=model)
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
