"""Rebuilding a model from one of our checkpoint files.

The checkpoint carries its full config, so the architecture is rebuilt from it (never from the
caller's config) and the weights must then fit exactly: the first missing, unexpected or mis-shaped
key is reported in one line with the file name, instead of PyTorch's multi-page strict-load dump.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from lseg.checkpoint_io import FORMAT, CheckpointError, load_checkpoint
from lseg.checkpoints.payload import model_weights
from lseg.config import ConfigError, from_dict
from lseg.models.lseg import LSeg, build_model


def first_mismatch(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> str | None:
    """Describe the first key that is missing, unexpected or of another shape; None if all fit."""
    for key, ref in expected.items():
        if key not in given:
            return f"missing key '{key}'"
        if not isinstance(given[key], torch.Tensor):
            return f"key '{key}' is not a tensor"
        if tuple(given[key].shape) != tuple(ref.shape):
            return (f"key '{key}' has shape {list(given[key].shape)} in the checkpoint but "
                    f"{list(ref.shape)} in the model")
    for key in given:
        if key not in expected:
            return f"unexpected key '{key}'"
    return None


def load_model(path: str | Path, device: str | torch.device = "cpu", use_ema: bool = False,
               checkpoint: dict | None = None) -> LSeg:
    """Model in eval mode from an lseg-hpc checkpoint (training, averaged or converted).

    ``checkpoint``: the file's contents when the caller has already read them (for its config),
    so that a multi-GB file is not read twice; ``path`` then only names it in messages.
    """
    path = Path(path)
    ckpt = load_checkpoint(path) if checkpoint is None else checkpoint
    if ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an {FORMAT} checkpoint (format={ckpt.get('format')!r}); "
                              "official lang-seg files must first go through tools/convert_langseg.py")
    for field in ("model", "config"):
        if not isinstance(ckpt.get(field), dict):
            raise CheckpointError(f"{path}: checkpoint has no '{field}' dict")
    try:
        cfg = from_dict(ckpt["config"]).model
    except ConfigError as exc:
        raise CheckpointError(f"{path}: invalid config in checkpoint: {exc}") from None
    # Weights come from the file; never fetch pretrained ones for a model we overwrite anyway.
    cfg = dataclasses.replace(cfg, pretrained=False)
    state = model_weights(ckpt, path, use_ema)
    # Build on the meta device and adopt the checkpoint tensors: random init of a ViT-L on CPU takes
    # minutes (timm's trunc_normal_), and would be overwritten anyway.
    with torch.device("meta"):
        model = build_model(cfg)
    problem = first_mismatch(model.state_dict(), state)
    if problem is not None:
        raise CheckpointError(f"{path}: checkpoint does not match the architecture in its config: {problem}")
    expected = model.state_dict()
    state = {k: v.to(expected[k].dtype) if v.is_floating_point() and v.dtype != expected[k].dtype else v
             for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    model.reset_nonpersistent_buffers()
    left = next((n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta), None)
    if left is not None:  # a library added state we do not know how to rebuild: fail loudly, not later
        raise CheckpointError(f"{path}: '{left}' was not restored from the checkpoint")
    return model.to(device).eval()
