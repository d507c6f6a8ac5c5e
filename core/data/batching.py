"""Batches of molecules of similar size: less padding, so less work wasted in Uni-Mol's N x N layers.

Uni-Mol attends over every pair of positions, so a batch padded to its largest molecule costs ``B * N_max**2``
for ``sum(N_i**2)`` of real work: in random batches of molbridge-mini about half the atom rows and most of the
pairs are padding. Two orders fix that:

- training (``data.bucketing``): :func:`bucketed` keeps the epoch's seeded shuffle but sorts each chunk of
  ``chunk`` batches by size and shuffles the batches' order, so batches are dense yet still random and the
  order is a function of (seed, epoch) alone: exact resume is kept;
- evaluation and cache building: :func:`by_size` makes batches of sorted sizes; results are put back in
  dataset order by the caller.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def bucketed(order: Sequence[int], sizes: Sequence[int], batch_size: int, seed: int, chunk: int = 50) -> list[int]:
    """``order`` (a shuffled epoch) regrouped into batches of similar ``sizes``, batches in a seeded order.

    Within each chunk of ``chunk * batch_size`` items of ``order``, items are sorted by size (stable) and cut
    into batches; all batches of the epoch are then shuffled with ``seed``. An incomplete last batch stays last
    (the loader drops it, as it would without bucketing)."""
    items = np.asarray(order, dtype=np.int64)
    size_of = np.asarray(sizes)
    span = max(1, chunk) * batch_size
    regrouped = (
        np.concatenate(
            [part[np.argsort(size_of[part], kind="stable")] for part in np.split(items, range(span, len(items), span))]
        )
        if len(items)
        else items
    )
    full = len(regrouped) // batch_size * batch_size
    batches = regrouped[:full].reshape(-1, batch_size)
    batches = batches[np.random.default_rng(seed).permutation(len(batches))]
    return batches.reshape(-1).tolist() + regrouped[full:].tolist()


def by_size(sizes: Sequence[int], batch_size: int) -> list[list[int]]:
    """Index batches of ascending size (evaluation, cache building): the least padding for a fixed batch size."""
    order = np.argsort(np.asarray(sizes), kind="stable")
    return [order[start : start + batch_size].tolist() for start in range(0, len(order), batch_size)]


def padding_fraction(batches: Sequence[Sequence[int]], sizes: Sequence[int], power: int = 1) -> float:
    """Share of padded positions (``power=1``) or of padded pairs (``power=2``, Uni-Mol's attention) in ``batches``."""
    size_of = np.asarray(sizes)
    padded = real = 0
    for batch in batches:
        counts = size_of[list(batch)]
        padded += len(counts) * counts.max() ** power
        real += (counts**power).sum()
    return float(1 - real / padded) if padded else 0.0
