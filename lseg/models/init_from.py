"""Starting a new run from the weights of an existing checkpoint (``train.init_from``).

Only weights travel. The new run keeps its own optimizer, schedule, step and sampler, because
fine-tuning is a new optimisation problem; continuing an interrupted one is what resume is for.

Strict like resume and :func:`lseg.models.load_model`: every weight of the run must come from the
source and every tensor of the source must land somewhere. A partial load would silently train a
different model from the one asked for, so the only way to skip keys is to name them with
``train.init_exclude`` regexes (applied to both sides; excluded weights keep the run's own init).

The frozen text tower is a weight like any other and comes from the source, as it does for resume
and ``load_model``: the source's image side was trained against that tower's embeddings (a converted
official file carries CLIP's text tower). ``train.init_exclude=['^text\\.']`` keeps the run's own.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Sequence

import torch

from lseg.checkpoint_io import FORMAT, CheckpointError, load_checkpoint
from lseg.checkpoints.payload import has_ema, model_weights
from lseg.models.loading import first_mismatch

KEY = "train.init_from"
CONVERT = "tools/convert_langseg.py"


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, streamed (checkpoints can be several GB)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _looks_official(ckpt: dict[str, Any]) -> bool:
    """A Lightning file (``state_dict`` with ``net.*`` keys) or a bare official LSegNet state dict."""
    state = ckpt.get("state_dict") if isinstance(ckpt.get("state_dict"), dict) else ckpt
    return any(isinstance(k, str) and k.startswith(("net.", "pretrained.model.")) for k in state)


def read_source(path: str | Path) -> dict[str, Any]:
    """The source checkpoint's contents; every user-caused problem is one line naming the file and the fix."""
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as exc:
        hint = ""
        if "refused to unpickle" in str(exc):
            hint = (f"; {KEY} reads lseg-hpc checkpoints only: convert an official lang-seg file you trust "
                    f"with {CONVERT} --trust-pickle")
        raise CheckpointError(f"{KEY}: {exc}{hint}") from None
    if ckpt.get("format") != FORMAT and _looks_official(ckpt):
        raise CheckpointError(f"{KEY}: {path} is an official lang-seg checkpoint; convert it first "
                              f"(python {CONVERT} {path} OUT.pt) and set {KEY}=OUT.pt")
    if ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{KEY}: {path} is not an {FORMAT} checkpoint (format={ckpt.get('format')!r}); it takes training "
            f"checkpoints, tools/average_checkpoints.py outputs and official files converted by {CONVERT}")
    return ckpt


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def model_differences(source: Any, ours: dict[str, Any], limit: int = 3) -> list[str]:
    """``model.*`` settings that differ between the source's config and this run's (``pretrained`` aside)."""
    if not isinstance(source, dict) or not isinstance(source.get("model"), dict):
        return []
    src, run = _flat(source["model"], "model."), _flat(ours, "model.")
    keys = [k for k in run if k != "model.pretrained" and k in src and src[k] != run[k]]
    return [f"{k}={src[k]!r} in the source, {run[k]!r} here" for k in keys[:limit]]


def init_weights(path: str | Path, expected: dict[str, torch.Tensor], exclude: Sequence[str] = (),
                 use_ema: bool = False, model_config: dict[str, Any] | None = None,
                 checkpoint: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """The source tensors the run starts from: every key of ``expected`` not excluded, in its dtype.

    ``expected``: the run's full state dict (``image.*`` + ``text.*``); ``model_config``: the run's
    ``model`` section as a dict, only to name differing settings when the shapes do not fit;
    ``checkpoint``: the file's contents if already read (``path`` then only names it).
    """
    ckpt = read_source(path) if checkpoint is None else checkpoint
    if use_ema and not has_ema(ckpt):
        raise CheckpointError(
            f"train.init_ema=true but {path} has no EMA weights (trained without train.ema_decay, or an "
            "average/conversion, which holds only model weights); set train.init_ema=false")
    try:
        state = model_weights(ckpt, path, use_ema)
    except CheckpointError as exc:
        raise CheckpointError(f"{KEY}: {exc}") from None
    patterns = [re.compile(p) for p in exclude]  # validated with the config

    def kept(key: str) -> bool:
        return not any(p.search(key) for p in patterns)

    want = {k: v for k, v in expected.items() if kept(k)}
    given = {k: v for k, v in state.items() if kept(k)}
    problem = first_mismatch(want, given)
    if problem is not None:
        diff = model_differences(ckpt.get("config"), model_config or {})
        arch = f" (another architecture: {'; '.join(diff)})" if diff else ""
        raise CheckpointError(
            f"{KEY}: {path} does not fit this run's model: {problem}{arch}; match the source's model settings, "
            "or skip such keys with a train.init_exclude regex")
    return {k: v.to(want[k].dtype) if v.is_floating_point() and v.dtype != want[k].dtype else v
            for k, v in given.items()}
