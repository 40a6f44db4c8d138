"""Preemption and time-limit signals.

The handler only sets a flag: saving from inside a signal handler would race with the training
step and cannot run collectives. The trainer polls :meth:`PreemptionFlag.should_stop` at each step
boundary, where all ranks agree (all-reduce of the local flag) before saving and exiting with
:data:`REQUEUE_EXIT_CODE`, which both launchers treat as "requeue me".
"""
from __future__ import annotations

import signal
from types import FrameType

import torch
import torch.distributed as dist

#: Exit status of a trainer that saved a checkpoint because it was asked to stop (EX_TEMPFAIL).
REQUEUE_EXIT_CODE = 75

DEFAULT_SIGNALS = ("SIGUSR1", "SIGUSR2", "SIGTERM")


class PreemptionFlag:
    """Set by SIGUSR1/SIGUSR2/SIGTERM; read collectively at step boundaries."""

    def __init__(self, signals: tuple[str, ...] = DEFAULT_SIGNALS) -> None:
        self.received: str | None = None
        self._previous: dict[int, object] = {}
        for name in signals:
            signum = getattr(signal, name)
            self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signal.Signals(signum).name

    def restore(self) -> None:
        """Put back the handlers that were installed before us."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def should_stop(self, device: torch.device | str = "cpu") -> bool:
        """True on every rank if any rank received a signal (a collective call under DDP)."""
        local = 1 if self.received else 0
        if dist.is_available() and dist.is_initialized():
            t = torch.tensor([local], dtype=torch.int32, device=device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            return bool(t.item())
        return bool(local)
