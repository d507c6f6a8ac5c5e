"""A torch ``Dataset`` over a stored split, keyed as in :mod:`molbridge.core.batch`."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch.utils.data import Dataset

from molbridge.core import batch
from molbridge.core.data.store import MoleculeStore, open_dataset


class MoleculeDataset(Dataset):
    """Molecules of one split as dicts keyed by :mod:`molbridge.core.batch` names.

    Items hold ``MOL_ID``, ``SMILES``, ``ATOMIC_NUMBERS`` (int64 numpy (N,)), ``POSITIONS`` (float32 numpy
    (N, 3), angstrom), ``TEXT`` (the ``text_field``, default the description), plus ``"properties"``,
    ``"instructions"`` and ``"conformer"`` (which conformer was used). With ``augment`` the conformer is
    drawn at random, seeded by (seed, epoch, molecule), so it does not depend on worker scheduling;
    without it (evaluation) it is always conformer 0, the lowest-energy one.
    """

    def __init__(
        self,
        store: MoleculeStore,
        indices: np.ndarray | None = None,
        *,
        augment: bool = False,
        seed: int = 0,
        text_field: str = "description",
        features: Any = None,
    ):
        self.store = store
        self.indices = np.arange(len(store)) if indices is None else np.asarray(indices, dtype=np.int64)
        self.augment, self.seed, self.epoch, self.text_field = augment, seed, 0, text_field
        self.features = features  # a FeatureCache: conformer-0 encoder features, used when not augmenting

    @classmethod
    def from_split(
        cls,
        name_or_dir: str,
        split: str,
        kind: str = "scaffold",
        *,
        augment: bool | None = None,
        limit: int | None = None,
        **kwargs: Any,
    ) -> MoleculeDataset:
        """The ``split`` (train/valid/test) of a dataset under ``kind``; augmentation on for train only."""
        store = open_dataset(name_or_dir)
        indices = store.split(split, kind)[:limit]
        return cls(store, indices, augment=(split == "train") if augment is None else augment, **kwargs)

    def set_epoch(self, epoch: int) -> None:
        """Change the conformer draw per epoch (call from the training loop)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices)

    def sizes(self) -> np.ndarray:
        """Atoms per item (hydrogens included), read once from the store: what size-bucketed batching groups by."""
        if not hasattr(self, "_sizes"):
            counts = np.array([len(z) for z in self.store.column("atomic_numbers")], dtype=np.int64)
            self._sizes = counts[self.indices]
        return self._sizes

    def _conformer(self, row: int, count: int) -> int:
        if not self.augment or count == 1:
            return 0
        return int(np.random.default_rng((self.seed, self.epoch, row)).integers(count))

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.item(i)

    def item(self, i: int, conformer: int | None = None) -> dict[str, Any]:
        """Item ``i`` with its ``conformer`` (None: the one this epoch draws, or conformer 0 without ``augment``)."""
        row = int(self.indices[i])
        mol = self.store[row]
        k = self._conformer(row, len(mol.conformers)) if conformer is None else conformer
        item = {
            batch.MOL_ID: mol.id,
            batch.SMILES: mol.smiles,
            batch.ATOMIC_NUMBERS: mol.atomic_numbers,
            batch.POSITIONS: mol.conformers[k],
            batch.TEXT: mol.texts.get(self.text_field, ""),
            "conformer": k,
            "properties": mol.properties,
            "instructions": mol.instructions,
        }
        if self.features is not None and k == 0:
            item["features"] = self.features[row]
        return item
