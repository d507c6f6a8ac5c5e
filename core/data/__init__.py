"""The molecule data layer: from SMILES/SDF/LMDB to 3D records on disk, and back into torch.

Read API (what tasks use)::

    from molbridge.core.data import open_dataset, MoleculeDataset

    store = open_dataset("molbridge-mini")          # or a directory written by `bench data prepare`
    len(store); store.split_kinds()                  # -> ["random", "scaffold"] (+ "given", ...)
    train_rows = store.split("train", kind="scaffold")   # numpy indices; also "valid", "test"
    # "given": the input's own partition (a split column, ChEBI-20's files, the 3D-MoLM release's folders);
    # "given-described": the same over molecules with a description (text stages; leaves out PubChemQC's);
    # "given-pretrain": as given-described with the release's pretrain part as "train" (pretraining phases)
    mol = store[int(train_rows[0])]
    mol.id, mol.smiles, mol.atomic_numbers           # int64 (N,), hydrogens included
    mol.conformers                                   # float32 (C, N, 3) angstrom; 0 = lowest force-field energy
    mol.forcefield, mol.embedding                    # per conformer mmff|uff|none; etkdg|random_coords|given
    mol.description, mol.texts, mol.properties       # properties: dict name -> float (see dataset.json units)
    mol.instructions                                 # 3D-MoIT records {instruction, input, output, task[, subset]}
    mol.given_split                                  # the input's own split label, or None
    store.failures()                                 # every rejected input with stage and reason

    train = MoleculeDataset.from_split("molbridge-mini", "train", kind="scaffold")  # augment=True for train
    item = train[0]   # keys from molbridge.core.batch: MOL_ID, SMILES, ATOMIC_NUMBERS, POSITIONS, TEXT, ...
    train.set_epoch(epoch)                           # new seeded conformer draw per epoch

Evaluation datasets (``augment=False``) always use conformer 0. Encoder featurization can be cached
next to the dataset with :class:`~molbridge.core.data.features.FeatureCache`.

Write side: :mod:`~molbridge.core.data.readers` (input formats), :mod:`~molbridge.core.data.release`
(the 3D-MoLM release joined), :mod:`~molbridge.core.data.conformers` (ETKDGv3 -> random coordinates,
MMFF94 -> UFF, failure reasons), :mod:`~molbridge.core.data.prepare` and :mod:`~molbridge.core.data.pool`
(parallel, sharded, resumable, crash-proof), :mod:`~molbridge.core.data.store` (the Parquet format and why),
:mod:`~molbridge.core.data.mini` (the shipped dataset's deterministic build), :mod:`~molbridge.core.data.samples`
(a real-molecule sample from RDKit's shipped files). Commands: ``bench data prepare|build-mini|info``.
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
