"""Scoring models on labelled images: the one scoring loop, label sets, sweeps and their reports.

``scoring`` is shared by the trainer's in-loop evaluation and the sweep; ``label_sets``,
``sweep`` and ``reports`` are the evaluation sweep (``tools/eval_sweep.py``). Modules are imported
by name (``from lseg.evaluation.scoring import score``) so that importing one stays cheap.
"""
from __future__ import annotations


class SweepError(ValueError):
    """A user-caused problem in a sweep (bad label set, no checkpoints, ...); printed as one line."""
