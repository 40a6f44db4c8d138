"""Activation checkpointing that leaves BatchNorm running statistics as one plain step leaves them.

Non-reentrant checkpointing runs a region's forward a second time during backward. A BatchNorm
layer in training mode would then update its running mean, variance and batch counter twice per
step, so a checkpointed model would drift away from the same model trained without it. While a
region is recomputed, its BatchNorm layers therefore update throw-away copies of their buffers: the
recomputation runs the very same kernels with the same inputs (so autograd finds the same tensors
it saved in the forward, and the outputs are identical), and the real buffers keep the one update
of the forward. Nothing extra is kept in memory for this, unlike saving the BatchNorm outputs with
selective checkpointing.
"""
from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint as _checkpoint


_STATS = ("running_mean", "running_var", "num_batches_tracked")


@contextlib.contextmanager
def _running_stats_frozen(layers: tuple[_BatchNorm, ...]) -> Iterator[None]:
    real = [{name: getattr(bn, name) for name in _STATS} for bn in layers]
    for bn, buffers in zip(layers, real):
        for name, tensor in buffers.items():
            setattr(bn, name, tensor.clone())
    try:
        yield
    finally:  # also when checkpointing stops the recomputation early (it raises to do so)
        for bn, buffers in zip(layers, real):
            for name, tensor in buffers.items():
                setattr(bn, name, tensor)


def _contexts(layers: tuple[_BatchNorm, ...]) -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
    return contextlib.nullcontext(), _running_stats_frozen(layers)


def checkpoint(fn: Callable[..., Any], *args: Any, scope: nn.Module | None = None) -> Any:
    """``fn(*args)``, recomputed in backward instead of keeping its activations (non-reentrant).

    ``scope``: the module holding every BatchNorm layer ``fn`` runs; default ``fn`` itself when it
    is a module (otherwise ``fn`` must run no BatchNorm in training mode).
    """
    scope = scope if scope is not None else fn if isinstance(fn, nn.Module) else None
    layers = tuple(m for m in (scope.modules() if scope is not None else ())
                   if isinstance(m, _BatchNorm) and m.training and m.track_running_stats)
    if not layers:
        return _checkpoint(fn, *args, use_reentrant=False)
    return _checkpoint(fn, *args, use_reentrant=False, context_fn=functools.partial(_contexts, layers))
