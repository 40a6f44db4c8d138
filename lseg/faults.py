"""Test-only fault injection: make one rank crash at a chosen step, to test failure handling.

    LSEG_FAULT_INJECT=raise:rank=1:step=3 python -m lseg.train ...

raises :class:`InjectedFault` (a plain crash, so its traceback is printed) on rank 1 when step 3
is about to run. Why it exists: "one rank raises, the others must stop with one line instead of
hanging or printing tracebacks of their own" needs a genuine crash on exactly one rank, which no
user input produces. Unset (always, outside tests) it costs one dict lookup per step.
"""
from __future__ import annotations

import os

ENV = "LSEG_FAULT_INJECT"


class InjectedFault(RuntimeError):
    """The crash requested through ``LSEG_FAULT_INJECT``."""


def parse(spec: str) -> dict[str, int]:
    """``raise:rank=R:step=S`` -> ``{"rank": R, "step": S}`` (both required)."""
    kind, *fields = spec.split(":")
    try:
        values = {k: int(v) for k, v in (f.split("=", 1) for f in fields)}
    except ValueError:
        raise ValueError(f"{ENV}={spec!r}: expected raise:rank=R:step=S") from None
    if kind != "raise" or set(values) != {"rank", "step"}:
        raise ValueError(f"{ENV}={spec!r}: expected raise:rank=R:step=S")
    return values


def maybe_fail(rank: int, step: int) -> None:
    """Raise :class:`InjectedFault` if ``LSEG_FAULT_INJECT`` asks for it at (``rank``, ``step``)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    want = parse(spec)
    if want["rank"] == rank and want["step"] == step:
        raise InjectedFault(f"{ENV}: injected failure on rank {rank} at step {step}")
