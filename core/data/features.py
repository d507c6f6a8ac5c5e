"""Encoder featurization cached next to the dataset, one file per shard.

``FeatureCache(store, key, featurize)`` computes ``featurize(atomic_numbers, positions)`` for
conformer 0 of every molecule of a shard the first time the shard is touched and saves the list to
``<dataset>/features/<key>/part-xxxxx.pt`` (``torch.save``; loaded with ``weights_only=True``, so
reading it runs no code). ``key`` must change whenever the features would (name the encoder and
its featurization options). For packaged datasets (the package folder may be read-only, and in a
checkout it is under version control) and unwritable directories the cache lives under
``$MOLBRIDGE_CACHE`` or ``~/.cache/molbridge``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from molbridge.core.data.store import MoleculeStore, atomic_write, packaged_datasets
from molbridge.core.errors import MolbridgeError

Featurize = Callable[[np.ndarray, np.ndarray], dict[str, torch.Tensor]]


def _cache_root(store: MoleculeStore) -> Path:
    packaged = store.root.resolve() in {p.resolve() for p in packaged_datasets().values()}
    if not packaged and os.access(store.root, os.W_OK):
        return store.root / "features"
    base = Path(os.environ.get("MOLBRIDGE_CACHE", Path.home() / ".cache" / "molbridge"))
    return base / "features" / store.name


class FeatureCache:
    """``cache[i]``: the cached features of molecule ``i`` (conformer 0)."""

    def __init__(self, store: MoleculeStore, key: str, featurize: Featurize, root: str | Path | None = None):
        if not re.fullmatch(r"[A-Za-z0-9_.=-]+", key):
            raise MolbridgeError(f"feature cache key '{key}': use letters, digits and _.=- only")
        self.store, self.featurize = store, featurize
        self.dir = Path(root) if root else _cache_root(store) / key
        self._shards: dict[int, list[dict[str, torch.Tensor]]] = {}

    def _shard(self, shard: int) -> list[dict[str, torch.Tensor]]:
        if shard not in self._shards:
            path = self.dir / f"part-{shard:05d}.pt"
            if not path.is_file():
                start, stop = int(self.store.offsets[shard]), int(self.store.offsets[shard + 1])
                rows = [self.store[i] for i in range(start, stop)]
                features = [self.featurize(m.atomic_numbers, m.conformers[0]) for m in rows]
                atomic_write(path, lambda tmp: torch.save(features, tmp))
            self._shards[shard] = torch.load(path, weights_only=True)
        return self._shards[shard]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        shard = int(np.searchsorted(self.store.offsets, i, side="right") - 1)
        return self._shard(shard)[i - int(self.store.offsets[shard])]
