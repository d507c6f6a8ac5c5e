"""The molecule data layer: from SMILES/SDF/LMDB to 3D records on disk, and back into torch.

Read API (what tasks use)::

    from molbridge.core.data import open_dataset, MoleculeDataset

    store = open_dataset("molbridge-mini")          # or a directory written by `bench data prepare`
    len(store); store.split_kinds()                  # -> ["random", "scaffold"]
    train_rows = store.split("train", kind="scaffold")   # numpy indices; also "valid", "test"
    mol = store[int(train_rows[0])]
    mol.id, mol.smiles, mol.atomic_numbers           # int64 (N,), hydrogens included
    mol.conformers                                   # float32 (C, N, 3) angstrom; 0 = lowest MMFF energy
    mol.description, mol.texts, mol.properties       # properties: dict name -> float (see dataset.json units)
    mol.instructions                                 # 3D-MoIT records {instruction, input, output, task}
    store.failures()                                 # every rejected input with stage and reason

    train = MoleculeDataset.from_split("molbridge-mini", "train", kind="scaffold")  # augment=True for train
    item = train[0]   # keys from molbridge.core.batch: MOL_ID, SMILES, ATOMIC_NUMBERS, POSITIONS, TEXT, ...
    train.set_epoch(epoch)                           # new seeded conformer draw per epoch

Evaluation datasets (``augment=False``) always use conformer 0. Encoder featurization can be cached
next to the dataset with :class:`~molbridge.core.data.features.FeatureCache`.

Write side: :mod:`~molbridge.core.data.readers` (input formats), :mod:`~molbridge.core.data.conformers`
(ETKDGv3 + MMFF, failure reasons), :mod:`~molbridge.core.data.prepare` (parallel, sharded, resumable),
:mod:`~molbridge.core.data.store` (the Parquet format and why), :mod:`~molbridge.core.data.mini`
(the shipped dataset's deterministic build). Commands: ``bench data prepare|build-mini|info``.
"""

from molbridge.core.data.conformers import (
    ConformerConfig,
    Failure,
    MoleculeInput,
    MoleculeRecord,
    make_record,
)
from molbridge.core.data.readers import read_inputs
from molbridge.core.data.store import DatasetError, Molecule, MoleculeStore, open_dataset

_LAZY = {"FeatureCache": "molbridge.core.data.features", "MoleculeDataset": "molbridge.core.data.torch_dataset"}


def __getattr__(name: str):
    # torch-dependent names load on first use, so preparation workers do not import torch
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ConformerConfig",
    "DatasetError",
    "Failure",
    "FeatureCache",
    "Molecule",
    "MoleculeDataset",
    "MoleculeInput",
    "MoleculeRecord",
    "MoleculeStore",
    "make_record",
    "open_dataset",
    "read_inputs",
]
