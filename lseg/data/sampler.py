"""Deterministic, resumable, sharded training sampler over a dataset mixture.

Why not ``DistributedSampler``: a preempted job must continue mid-epoch with exactly the samples
an uninterrupted run would have seen, and mixing datasets with ratios needs oversampling.

The epoch's global order is a pure function of ``(seed, epoch, dataset sizes, ratios)``:

* no ratios: a permutation of the concatenation;
* ratios ``r``: the epoch keeps the concatenation's length ``N``; dataset ``i`` contributes
  ``N * r_i / sum(r)`` samples (largest-remainder rounding) drawn as back-to-back permutations of
  it (so a small dataset is repeated, a large one subsampled), then the whole list is shuffled.

Alongside every position the epoch generator draws a 62-bit augmentation seed, so a sample's
crop/flip depends on (seed, epoch, position) only, not on workers or ranks. Rank ``r`` of ``W``
takes positions ``r, r + W, r + 2W, ...``, truncated to a multiple of the batch size
(``samples_per_rank``): ranks never share a position and every micro-step is a full batch.
Resuming with ``start = k`` yields the same items as the uninterrupted iterator from item ``k`` on.
"""
from __future__ import annotations

import hashlib
from typing import Iterator, Sequence

import torch

from lseg.data.errors import DataError

_SEED_BITS = 62


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """Independent stream per (seed, epoch) (hashing avoids seed+epoch collisions)."""
    digest = hashlib.sha256(f"lseg-data:{seed}:{epoch}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def mixture_counts(sizes: Sequence[int], ratios: Sequence[float] | None) -> list[int]:
    """Samples per dataset in one epoch (sum = sum(sizes))."""
    total = sum(sizes)
    if ratios is None:
        return list(sizes)
    if len(ratios) != len(sizes) or any(r <= 0 for r in ratios):
        raise DataError(f"data.train_ratios {list(ratios)}: need one positive ratio per dataset")
    exact = [total * r / sum(ratios) for r in ratios]
    counts = [int(e) for e in exact]
    by_remainder = sorted(range(len(sizes)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def epoch_order(sizes: Sequence[int], ratios: Sequence[float] | None, seed: int,
                epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(global indices, augmentation seeds) of one epoch, both int64 of the same length."""
    g = epoch_generator(seed, epoch)
    total = sum(sizes)
    if ratios is None:
        indices = torch.randperm(total, generator=g)
    else:
        parts, offset = [], 0
        for size, count in zip(sizes, mixture_counts(sizes, ratios)):
            reps = -(-count // size) if count else 0
            draws = [torch.randperm(size, generator=g) for _ in range(reps)]
            if draws:
                parts.append(torch.cat(draws)[:count] + offset)
            offset += size
        mixed = torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64)
        indices = mixed[torch.randperm(len(mixed), generator=g)]
    seeds = torch.randint(0, 1 << _SEED_BITS, (len(indices),), generator=g, dtype=torch.int64)
    return indices, seeds


def samples_per_rank(total: int, world_size: int, batch_size: int) -> int:
    """Samples each rank consumes per epoch (a multiple of ``batch_size``; drop-last semantics)."""
    per_rank = (total // world_size) // batch_size * batch_size
    if per_rank == 0:
        raise DataError(f"training set of {total} samples is smaller than world_size x batch_size "
                        f"= {world_size} x {batch_size}")
    return per_rank


class ResumableSampler(torch.utils.data.Sampler):
    """Yields ``(global index, augmentation seed)`` for one rank, one epoch, from ``start``."""

    def __init__(self, sizes: Sequence[int], ratios: Sequence[float] | None, seed: int, epoch: int,
                 rank: int = 0, world_size: int = 1, batch_size: int = 1, start: int = 0):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in 0..{world_size - 1}")
        self.sizes, self.ratios = list(sizes), None if ratios is None else list(ratios)
        self.seed, self.epoch, self.rank, self.world_size = seed, epoch, rank, world_size
        self.batch_size = batch_size
        self.samples_per_rank = samples_per_rank(sum(self.sizes), world_size, batch_size)
        if not 0 <= start <= self.samples_per_rank:
            raise ValueError(f"start {start} not in 0..{self.samples_per_rank} (samples per rank per epoch)")
        self.start = start

    def positions(self) -> torch.Tensor:
        """Positions of this rank's remaining items in the epoch's global order."""
        k = torch.arange(self.start, self.samples_per_rank, dtype=torch.int64)
        return self.rank + self.world_size * k

    def __len__(self) -> int:
        return self.samples_per_rank - self.start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices, seeds = epoch_order(self.sizes, self.ratios, self.seed, self.epoch)
        pos = self.positions()
        return iter(zip(indices[pos].tolist(), seeds[pos].tolist()))
