"""Uniform average of model weights from several checkpoints (model-only output).

Rules (and why):

* Floating tensors are summed in float64 and divided once, then cast back to each tensor's own
  dtype: summing bf16/fp16 weights in their own dtype loses several bits per addition.
* Integer and bool tensors (BatchNorm ``num_batches_tracked``) are not averaged; they are taken
  from the last input (for run-dir selections, the highest step), so the output describes the
  newest model's bookkeeping.
* Key sets, shapes and dtypes must agree across all inputs; otherwise one error names the first
  mismatching key: a silent partial average would be a different model.
* EMA weights are used when every input has them (or when asked; raw weights when refused), never
  a mix of EMA and raw weights.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from lseg.checkpoint_io import CheckpointError, load_checkpoint
from lseg.checkpoints.files import list_run_checkpoints, select_last, select_top
from lseg.checkpoints.payload import checkpoint_payload, has_ema, model_weights


class AverageError(CheckpointError):
    """Inputs that cannot be averaged together; the message names the key or file."""


def check_compatible(state_dicts: Sequence[dict[str, torch.Tensor]], names: Sequence[str]) -> None:
    """Raise AverageError naming the first key whose presence, shape or dtype differs."""
    ref, ref_name = state_dicts[0], names[0]
    for sd, name in zip(state_dicts[1:], names[1:]):
        for key in ref:
            if key not in sd:
                raise AverageError(f"key mismatch: '{key}' is in {ref_name} but not in {name}")
        for key in sd:
            if key not in ref:
                raise AverageError(f"key mismatch: '{key}' is in {name} but not in {ref_name}")
        for key, t in ref.items():
            u = sd[key]
            if not isinstance(t, torch.Tensor) or not isinstance(u, torch.Tensor):
                raise AverageError(f"'{key}' is not a tensor in {ref_name} or {name}")
            if t.shape != u.shape:
                raise AverageError(f"shape mismatch for '{key}': {tuple(t.shape)} in {ref_name} "
                                   f"vs {tuple(u.shape)} in {name}")
            if t.dtype != u.dtype:
                raise AverageError(f"dtype mismatch for '{key}': {t.dtype} in {ref_name} vs {u.dtype} in {name}")


def average_state_dicts(state_dicts: Sequence[dict[str, torch.Tensor]],
                        names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Uniform mean of floating tensors (fp64 accumulation); other tensors from the last input."""
    if not state_dicts:
        raise AverageError("nothing to average")
    names = list(names) if names is not None else [f"input {i}" for i in range(len(state_dicts))]
    check_compatible(state_dicts, names)
    n = len(state_dicts)
    out: dict[str, torch.Tensor] = {}
    for key, ref in state_dicts[0].items():
        if ref.is_floating_point() or ref.is_complex():
            acc_dtype = torch.complex128 if ref.is_complex() else torch.float64
            acc = torch.zeros(ref.shape, dtype=acc_dtype)
            for sd in state_dicts:
                acc += sd[key].to(acc_dtype)
            out[key] = (acc / n).to(ref.dtype)
        else:
            out[key] = state_dicts[-1][key].clone()
    return out


def select_checkpoints(run_dir: str | Path, last: int | None = None, top: int | None = None,
                       metric: str = "eval/mIoU", maximize: bool = True) -> list[Path]:
    """A run's step checkpoints to average: the ``last`` newest, the ``top`` best, or all of them."""
    ckpts = list_run_checkpoints(run_dir)
    if top is not None:
        ckpts = select_top(ckpts, top, metric, maximize)
    elif last is not None:
        ckpts = select_last(ckpts, last)
    return [c.path for c in ckpts]


def average_checkpoints(paths: Sequence[str | Path], use_ema: bool | None = None) -> dict[str, Any]:
    """Load, check and average; return the model-only payload (not yet written).

    ``use_ema=None`` picks EMA weights only if every input has them. The config and step of the
    output are the last input's.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise AverageError("no checkpoints selected")
    seen: dict[Path, Path] = {}
    for p in paths:
        if p.resolve() in seen:
            raise AverageError(f"{p} is selected twice (as {seen[p.resolve()]}); a uniform average takes "
                               "each checkpoint once")
        seen[p.resolve()] = p
    payloads = [load_checkpoint(p) for p in paths]
    if use_ema is None:
        use_ema = all(has_ema(p) for p in payloads)
    kind = "ema" if use_ema else "model"
    weights = [model_weights(p, path, use_ema) for p, path in zip(payloads, paths)]
    state = average_state_dicts(weights, [str(p) for p in paths])
    last = payloads[-1]
    sources = [{"path": str(path.resolve()), "step": p.get("step"), "weights": kind}
               for path, p in zip(paths, payloads)]
    return checkpoint_payload(state, last.get("config"), step=last.get("step"), sources=sources,
                              averaged={"n": len(paths), "weights": kind, "accumulation": "float64",
                                        "integer_buffers": "from last"})
