"""Split kinds stored with a dataset: seeded random and Bemis-Murcko scaffold splits (train/valid/test), and
the input's own partition when it came with one.

``given`` keeps the input's labels (a split column, the file each molecule came from, the 3D-MoLM release's
folders), synonyms normalised (validation/val/dev -> valid). Two more kinds serve the text stages of an input
whose molecules do not all have a text (the 3D-MoLM release: its PubChemQC molecules carry only property
records, and the reference's stages 1 and 2 never see them):

- ``given-described``: the same partition over the molecules with a description (or enriched description);
  the others are labelled ``undescribed``, so retrieval and captioning never train or score on an empty text;
- ``given-pretrain`` (only when the given split has a ``pretrain`` part): as ``given-described``, with
  ``pretrain`` as ``train`` and the given ``train`` renamed ``finetune``, so a recipe's pretraining phase
  selects it with ``data.split: given-pretrain`` while valid and test stay the given ones.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from rdkit import Chem
from rdkit.Chem.Scaffolds import MurckoScaffold

SPLIT_NAMES = ("train", "valid", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
GIVEN, GIVEN_DESCRIBED, GIVEN_PRETRAIN = "given", "given-described", "given-pretrain"
KINDS = ("random", "scaffold", GIVEN, GIVEN_DESCRIBED, GIVEN_PRETRAIN)
UNDESCRIBED = "undescribed"
SYNONYMS = {"validation": "valid", "val": "valid", "dev": "valid", "training": "train", "testing": "test"}
UNASSIGNED = "unassigned"  # a molecule without a label when others of the input have one


def normalize_label(label: str | None) -> str | None:
    """A split label as stored: lower case, synonyms mapped (``validation`` -> ``valid``); None stays None."""
    if label is None or not str(label).strip():
        return None
    text = str(label).strip().lower()
    return SYNONYMS.get(text, text)


def given_kinds(labels: list[str | None], described: list[bool]) -> dict[str, np.ndarray]:
    """The given kinds (module docstring) for per-molecule input labels; {} when no molecule has a label."""
    if all(label is None for label in labels):
        return {}
    given = np.array([UNASSIGNED if label is None else label for label in labels], dtype=object)
    kinds = {GIVEN: given, GIVEN_DESCRIBED: np.where(np.asarray(described, dtype=bool), given, UNDESCRIBED)}
    if "pretrain" in set(given.tolist()):
        renamed = {"pretrain": "train", "train": "finetune"}
        kinds[GIVEN_PRETRAIN] = np.array([renamed.get(label, label) for label in kinds[GIVEN_DESCRIBED]], dtype=object)
    return kinds


def _labels_from_order(order: np.ndarray, n: int, fractions: tuple[float, float, float]) -> np.ndarray:
    labels = np.empty(n, dtype=object)
    n_train, n_valid = round(fractions[0] * n), round(fractions[1] * n)
    for position, index in enumerate(order):
        labels[index] = "train" if position < n_train else "valid" if position < n_train + n_valid else "test"
    return labels


def random_split(n: int, seed: int, fractions=DEFAULT_FRACTIONS) -> np.ndarray:
    """Split label per molecule from a seeded permutation."""
    return _labels_from_order(np.random.default_rng(seed).permutation(n), n, fractions)


def scaffold(smiles: str) -> str:
    """Bemis-Murcko scaffold SMILES ('' for acyclic or unparsable molecules)."""
    mol = Chem.MolFromSmiles(smiles)
    return MurckoScaffold.MurckoScaffoldSmiles(mol=mol) if mol is not None else ""


def scaffold_split(smiles: list[str], seed: int, fractions=DEFAULT_FRACTIONS) -> np.ndarray:
    """Molecules sharing a scaffold land in the same split.

    Scaffold groups larger than half the test set go to train first (as in chemprop's balanced
    split), the rest are shuffled with ``seed``; groups then fill train, valid, test in turn.
    """
    groups: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(smiles):
        groups[scaffold(s)].append(i)
    keys = sorted(groups)  # fixed order before shuffling: independent of dict insertion
    big_limit = fractions[2] * len(smiles) / 2
    big = sorted((k for k in keys if len(groups[k]) > big_limit), key=lambda k: (-len(groups[k]), k))
    small = [k for k in keys if len(groups[k]) <= big_limit]
    small = [small[i] for i in np.random.default_rng(seed).permutation(len(small))]
    n = len(smiles)
    labels = np.empty(n, dtype=object)
    bounds = (fractions[0] * n, (fractions[0] + fractions[1]) * n)
    filled = 0
    for key in big + small:
        members = groups[key]
        filled += len(members)
        labels[members] = "train" if filled <= bounds[0] else "valid" if filled <= bounds[1] else "test"
    return labels
