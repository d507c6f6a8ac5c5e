"""Evaluation under DDP: every rank takes its share of the batches, and the results are gathered in order.

A split is cut into the batches a single process would make (same size, same order), and rank ``r`` of
``W`` takes batches ``r, r + W, r + 2W, ...``. Every batch is therefore computed exactly as one process
computes it, and :func:`gather` puts the per-batch results back in the single-process order, so metrics
are identical to a one-process evaluation, not merely close.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import torch.distributed as dist

T = TypeVar("T")


def world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, or (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def batches(count: int, batch_size: int) -> list[range]:
    """The index ranges of the batches a single process makes over ``count`` items."""
    return [range(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share of ``items`` (every W-th, from its rank on)."""
    rank, size = world()
    return list(items[rank::size])


def gather(mine: list[Any]) -> list[Any]:
    """Undo :func:`shard`: every rank's results, interleaved back into the original order, on every rank.

    Results travel as Python objects (``all_gather_object``): tensors are moved to CPU by the caller.
    """
    rank, size = world()
    if size == 1:
        return list(mine)
    parts: list[list[Any]] = [[] for _ in range(size)]
    dist.all_gather_object(parts, list(mine))
    ordered = []
    for i in range(max(len(p) for p in parts)):
        ordered += [part[i] for part in parts if i < len(part)]
    return ordered
