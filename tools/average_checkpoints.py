#!/usr/bin/env python
"""Uniform average of model weights from several checkpoints (model-only output).

    python tools/average_checkpoints.py --checkpoints A.pt B.pt C.pt --output avg.pt
    python tools/average_checkpoints.py --run-dir RUN --last 5 --output RUN/avg_last5.pt
    python tools/average_checkpoints.py --run-dir RUN --top 3 --metric eval/mIoU --output RUN/avg_top3.pt

Rules (and why):
* Floating tensors are summed in float64 and divided once, then cast back to each tensor's own
  dtype — summing bf16/fp16 weights in their own dtype loses several bits per addition.
* Integer and bool tensors (BatchNorm ``num_batches_tracked``) are not averaged; they are taken from
  the **last** checkpoint (the last one listed; for ``--run-dir`` selections, the highest step),
  so the output describes the newest model's bookkeeping.
* Key sets, shapes and dtypes must agree across all inputs; otherwise one error names the first
  mismatching key — a silent partial average would be a different model.
* EMA weights are used when every input has them (``--ema`` forces them, ``--no-ema`` refuses them).
* The output is ``{"format", "model", "config", "sources", "step", "averaged"}``: the same payload
  that ``lseg.models.load_model``, ``tools/eval_sweep.py`` and ``tools/predict.py`` read, without
  optimizer state. Reads and the write go through ``lseg.checkpoint_io``.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:  # allow `python tools/average_checkpoints.py` from a checkout
    sys.path.insert(0, str(_REPO))

from lseg.checkpoint_io import FORMAT, load_checkpoint, save_atomic  # noqa: E402
from lseg.cli import cli_main  # noqa: E402

STEP_FILE = re.compile(r"step_(\d+)\.pt$")


class AverageError(ValueError):
    """Inputs that cannot be averaged; the message names the key or file."""


# ------------------------------------------------------------------------------------------------
# Finding checkpoints of a run (shared with tools/eval_sweep.py)
# ------------------------------------------------------------------------------------------------


@dataclass
class RunCheckpoint:
    path: Path
    step: int
    metrics: dict[str, float] = field(default_factory=dict)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                out.update(_flatten(v, key + "/"))
            else:
                out[key] = v
    return out


def _index_entries(index: Any) -> list[dict]:
    """index.json may be a list of entries or a mapping holding one; read it defensively."""
    if isinstance(index, list):
        return [e for e in index if isinstance(e, dict)]
    if isinstance(index, dict):
        for key in ("checkpoints", "entries", "kept", "files"):
            if isinstance(index.get(key), list):
                return [e for e in index[key] if isinstance(e, dict)]
        if all(isinstance(v, dict) for v in index.values()):  # {name: entry}
            return [dict(v, path=v.get("path", k)) for k, v in index.items()]
    return []


def _resolve(ckpt_dir: Path, raw: str) -> Path | None:
    p = Path(raw)
    for cand in (p, ckpt_dir / p, ckpt_dir.parent / p, ckpt_dir / p.name):
        if cand.is_file():
            return cand
    return None


def _metrics_from_jsonl(run_dir: Path) -> dict[int, dict[str, float]]:
    """step -> numeric metrics from RUN/metrics.jsonl (flat or nested records, bad lines skipped)."""
    path = run_dir / "metrics.jsonl"
    out: dict[int, dict[str, float]] = {}
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
            continue
        flat = {k: v for k, v in _flatten(rec).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        flat = {k[len("metrics/"):] if k.startswith("metrics/") else k: float(v) for k, v in flat.items()}
        out.setdefault(rec["step"], {}).update(flat)
    return out


def list_run_checkpoints(run_dir: str | Path) -> list[RunCheckpoint]:
    """The step checkpoints of a run, oldest first, with any recorded metrics.

    Sources, in order: ``checkpoints/index.json`` entries, then ``checkpoints/step_*.pt`` files the
    index does not mention (so a missing or stale index still works); metrics not in the index are
    looked up by step in ``metrics.jsonl``. ``last.pt``/``best.pt`` are aliases and are skipped.
    """
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    if not ckpt_dir.is_dir():
        raise AverageError(f"{run_dir}: no checkpoints/ directory")
    found: dict[Path, RunCheckpoint] = {}
    index_path = ckpt_dir / "index.json"
    if index_path.is_file():
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, OSError):
            index = None
            print(f"warning: {index_path} is unreadable; using the step_*.pt files", file=sys.stderr)
        for entry in _index_entries(index):
            raw = entry.get("path") or entry.get("file") or entry.get("name")
            path = _resolve(ckpt_dir, str(raw)) if raw else None
            if path is None or path.name in ("last.pt", "best.pt"):
                continue
            step = entry.get("step")
            if not isinstance(step, int):
                m = STEP_FILE.search(path.name)
                step = int(m.group(1)) if m else -1
            metrics = {k: float(v) for k, v in _flatten(entry.get("metrics") or {}).items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)}
            found[path.resolve()] = RunCheckpoint(path, step, metrics)
    for path in ckpt_dir.glob("step_*.pt"):
        m = STEP_FILE.search(path.name)
        if m and path.resolve() not in found:
            found[path.resolve()] = RunCheckpoint(path, int(m.group(1)))
    by_step = _metrics_from_jsonl(run_dir)
    for ck in found.values():
        for k, v in by_step.get(ck.step, {}).items():
            ck.metrics.setdefault(k, v)
    return sorted(found.values(), key=lambda c: (c.step, str(c.path)))


def select_last(ckpts: Sequence[RunCheckpoint], n: int) -> list[RunCheckpoint]:
    if n <= 0:
        raise AverageError(f"--last must be >= 1, got {n}")
    return list(ckpts)[-n:]


def select_top(ckpts: Sequence[RunCheckpoint], n: int, metric: str, maximize: bool = True) -> list[RunCheckpoint]:
    """The ``n`` best checkpoints by ``metric`` (ties: newer first), returned oldest first."""
    if n <= 0:
        raise AverageError(f"--top must be >= 1, got {n}")
    scored = [c for c in ckpts if metric in c.metrics and not math.isnan(c.metrics[metric])]
    if not scored:
        available = sorted({k for c in ckpts for k in c.metrics})
        raise AverageError(f"no checkpoint has a recorded '{metric}' (recorded: {', '.join(available) or 'none'})")
    sign = 1.0 if maximize else -1.0
    best = sorted(scored, key=lambda c: (sign * c.metrics[metric], c.step), reverse=True)[:n]
    return sorted(best, key=lambda c: c.step)


# ------------------------------------------------------------------------------------------------
# Averaging
# ------------------------------------------------------------------------------------------------


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


def _weights(payload: dict, path: Path, use_ema: bool | None) -> tuple[dict, str]:
    """The full state dict to average: ``model``, or ``model`` with the EMA tensors swapped in.

    The trainer's EMA covers only the image side (keys ``image.*``; an unprefixed key means
    ``image.<key>``, as in ``lseg.models.load_model``); the frozen text tower comes from ``model``,
    so the output is always a complete model.
    """
    if not isinstance(payload.get("model"), dict):
        raise AverageError(f"{path}: no 'model' state dict (not an lseg-hpc checkpoint?)")
    has_ema = isinstance(payload.get("ema"), dict) and bool(payload["ema"])
    if use_ema and not has_ema:
        raise AverageError(f"{path}: --ema given but the checkpoint holds no EMA weights")
    if not (use_ema or (use_ema is None and has_ema)):
        return payload["model"], "model"
    merged = dict(payload["model"])
    for key, value in payload["ema"].items():
        full = key if key.startswith(("image.", "text.")) else f"image.{key}"
        if full not in merged:
            raise AverageError(f"{path}: EMA key '{key}' has no counterpart in the model weights")
        merged[full] = value
    return merged, "ema"


def average_files(paths: Sequence[str | Path], use_ema: bool | None = None) -> dict[str, Any]:
    """Load, check and average; return the model-only payload (not yet written).

    ``use_ema=None`` picks EMA weights only if every input has them, so a mixed list never
    averages EMA with raw weights.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise AverageError("no checkpoints selected")
    payloads = [load_checkpoint(p) for p in paths]
    if use_ema is None:
        use_ema = all(isinstance(p.get("ema"), dict) and p["ema"] for p in payloads)
    picked = [_weights(p, path, use_ema) for p, path in zip(payloads, paths)]
    state = average_state_dicts([w for w, _ in picked], [str(p) for p in paths])
    last = payloads[-1]
    sources = [{"path": str(path.resolve()), "step": p.get("step"), "weights": kind}
               for path, p, (_, kind) in zip(paths, payloads, picked)]
    return {
        "format": FORMAT,
        "model": state,
        "config": last.get("config"),
        "step": last.get("step"),
        "sources": sources,
        "averaged": {"n": len(paths), "weights": picked[-1][1], "accumulation": "float64",
                     "integer_buffers": "from last"},
    }


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoints", nargs="+", metavar="CKPT", help="explicit checkpoint files")
    src.add_argument("--run-dir", metavar="RUN", help="a training run directory")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--last", type=int, metavar="N", help="with --run-dir: the N newest step checkpoints")
    sel.add_argument("--top", type=int, metavar="N", help="with --run-dir: the N best by --metric")
    p.add_argument("--metric", default="eval/mIoU", help="metric for --top (index.json or metrics.jsonl)")
    p.add_argument("--minimize", action="store_true", help="--top picks the smallest values (e.g. a loss)")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                   help="--ema: average the EMA weights (error if a checkpoint has none); --no-ema: the raw "
                        "model weights; default: EMA if every checkpoint has it")
    p.add_argument("--output", "-o", required=True, help="output checkpoint path")
    p.add_argument("--dry-run", action="store_true", help="print the selection and exit")
    return p


def select_paths(args: argparse.Namespace) -> list[Path]:
    if args.checkpoints:
        if args.last or args.top:
            raise AverageError("--last/--top need --run-dir")
        return [Path(p) for p in args.checkpoints]
    ckpts = list_run_checkpoints(args.run_dir)
    if not ckpts:
        raise AverageError(f"{args.run_dir}: no step checkpoints found")
    if args.top:
        chosen = select_top(ckpts, args.top, args.metric, maximize=not args.minimize)
    else:
        chosen = select_last(ckpts, args.last or len(ckpts))
    return [c.path for c in chosen]


@cli_main(AverageError)
def main(argv: Iterable[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    paths = select_paths(args)
    print(f"averaging {len(paths)} checkpoint(s):")
    for p in paths:
        print(f"  {p}")
    if args.dry_run:
        return 0
    payload = average_files(paths, use_ema=args.ema)
    save_atomic(payload, args.output)
    print(f"wrote {args.output} ({payload['averaged']['weights']} weights, step {payload['step']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
