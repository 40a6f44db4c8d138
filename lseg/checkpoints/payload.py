"""What a checkpoint file holds, and the one rule for its EMA keys.

Every file the project writes for a model (a training save, an average, a converted official
model) is ``{"format": "lseg-hpc", "model": <full state dict, image + text>, "config": <full
config dict>, ...}`` and is read back by :func:`lseg.models.load_model`. Training saves add the
optimizer, scheduler, scaler, step, sampler position, every rank's RNG and provenance.

EMA: the trainer averages only the trainable image side, so ``"ema"`` holds ``image.*`` keys and the
frozen text tower always comes from ``"model"``. Readers also accept EMA keys without the prefix
(an image-side module's own state dict).
"""
from __future__ import annotations

import ast
import platform
import random
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lseg.checkpoint_io import FORMAT, CheckpointError

EMA_PREFIX = "image."


def checkpoint_payload(model: dict[str, torch.Tensor], config: dict[str, Any] | None,
                       ema: dict[str, torch.Tensor] | None = None, **extra: Any) -> dict[str, Any]:
    """The dict to save: format tag, full model state, config; ``ema`` is the image side's EMA state."""
    payload = {"format": FORMAT, "model": model, "config": config, **extra}
    if ema is not None:
        payload["ema"] = {EMA_PREFIX + k: v for k, v in ema.items()}
    return payload


def has_ema(ckpt: dict[str, Any]) -> bool:
    return isinstance(ckpt.get("ema"), dict) and bool(ckpt["ema"])


def ema_image_state(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The EMA weights as the image-side module's own state dict (for resuming the EMA model)."""
    return {k.removeprefix(EMA_PREFIX): v for k, v in ckpt["ema"].items()}


def model_weights(ckpt: dict[str, Any], path: str | Path, use_ema: bool) -> dict[str, torch.Tensor]:
    """The complete model state dict of a checkpoint; with ``use_ema`` the EMA tensors replace theirs."""
    model = ckpt.get("model")
    if not isinstance(model, dict):
        raise CheckpointError(f"{path}: no 'model' state dict (not an {FORMAT} checkpoint?)")
    if not use_ema:
        return model
    if not has_ema(ckpt):
        raise CheckpointError(f"{path}: EMA weights requested but the checkpoint has no 'ema' weights")
    merged = dict(model)
    for key, value in ckpt["ema"].items():
        full = key if key.startswith((EMA_PREFIX, "text.")) else EMA_PREFIX + key
        if full not in merged:
            raise CheckpointError(f"{path}: EMA key '{key}' has no counterpart in the model weights")
        merged[full] = value
    return merged


# ------------------------------------------------------------------ training-only pieces


def rng_state() -> dict[str, Any]:
    """This process's RNG states, as tensors/plain types so that weights_only loading accepts them."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.frombuffer(np.random.get_state()[1].tobytes(), dtype=np.uint8).copy()),
        "numpy_pos": int(np.random.get_state()[2]),
        "python": repr(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    keys = np.frombuffer(state["numpy"].numpy().tobytes(), dtype=np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy_pos"], 0, 0.0))
    version, internal, gauss = ast.literal_eval(state["python"])
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def provenance(world_size: int) -> dict[str, Any]:
    """Where a checkpoint came from: code version, library versions, world size (resume checks it)."""
    import timm

    try:
        import open_clip

        oc = open_clip.__version__
    except Exception:  # noqa: BLE001 - provenance must never break a save
        oc = "unknown"
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        sha = "unknown"
    return {"git_sha": sha, "torch": str(torch.__version__), "timm": str(timm.__version__), "open_clip": str(oc),
            "python": platform.python_version(), "world_size": world_size, "host": platform.node()}
