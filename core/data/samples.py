"""A deterministic sample of real molecules from the files RDKit's wheel ships (nothing downloaded, nothing copied).

:func:`real_sample` picks drug-like and natural-product-like molecules of 20-200 atoms (hydrogens included) from
RDKit's ``Data/NCI/first_5K.smi`` (NCI open set: natural products, steroids, glycosides, salts),
``Data/Pains/test_data/wehi_mols.csv`` (WEHI screening compounds), ``Contrib/PBF/testData/egfr.sdf`` (ZINC
EGFR ligands) and ``Contrib/fraggle/data/ChEMBL_11265_actives.smi`` (ChEMBL actives), biased towards the large
and complex ones: molecules are drawn without replacement with probability proportional to their atom count
to the 4th power, which moves the mean from the files' 38 atoms to about 53 (ChEBI-20 averages 58 with
hydrogens), so the sample stresses conformer generation the way ChEBI/PubChem molecules do. The same RDKit files
and arguments always give the same sample, in a fixed order.

Used by the conformer tests (a subset) and ``benchmarks/conformers.py`` (all of it).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rdkit import Chem, rdBase

rdBase.DisableLog("rdApp.*")  # what RDLogger.DisableLog is (RDLogger's stubs lack it)

SEED = 1_000_003


@dataclass(frozen=True)
class SampleMolecule:
    id: str  # "<source>:<id in the file>"
    smiles: str
    atoms: int  # with hydrogens, all fragments


def rdkit_root() -> Path:
    import rdkit

    return Path(os.path.dirname(rdkit.__file__))


def _smi(path: Path) -> list[tuple[str, str]]:
    rows = []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if parts and not parts[0].startswith("#"):
            rows.append((parts[1] if len(parts) > 1 else str(line_no), parts[0]))
    return rows


def _wehi(path: Path) -> list[tuple[str, str]]:
    with open(path, newline="") as handle:
        return [(row[1], row[0]) for row in csv.reader(handle) if len(row) >= 2]


def _sdf(path: Path) -> list[tuple[str, str]]:
    rows = []
    for index, mol in enumerate(Chem.SDMolSupplier(str(path))):
        if mol is not None:
            rows.append((mol.GetProp("_Name") or str(index), Chem.MolToSmiles(mol)))
    return rows


def sources() -> dict[str, tuple[Path, Callable[[Path], list[tuple[str, str]]]]]:
    root = rdkit_root()
    return {
        "nci": (root / "Data" / "NCI" / "first_5K.smi", _smi),
        "wehi": (root / "Data" / "Pains" / "test_data" / "wehi_mols.csv", _wehi),
        "egfr": (root / "Contrib" / "PBF" / "testData" / "egfr.sdf", _sdf),
        "chembl": (root / "Contrib" / "fraggle" / "data" / "ChEMBL_11265_actives.smi", _smi),
    }


def candidates(min_atoms: int = 20, max_atoms: int = 200) -> list[SampleMolecule]:
    """Every parsable molecule of the source files with ``min_atoms``-``max_atoms`` atoms (with H), in file order."""
    found = []
    for source, (path, reader) in sources().items():
        if not path.is_file():
            continue
        for mol_id, smiles in reader(path):
            mol = Chem.MolFromSmiles(smiles)
            if mol is None:
                continue
            atoms = mol.GetNumAtoms() + sum(a.GetTotalNumHs() for a in mol.GetAtoms())
            if min_atoms <= atoms <= max_atoms:
                found.append(SampleMolecule(f"{source}:{mol_id}", smiles, atoms))
    return found


def real_sample(n: int = 1000, seed: int = SEED, min_atoms: int = 20, max_atoms: int = 200) -> list[SampleMolecule]:
    """``n`` molecules drawn with probability proportional to atoms^4, returned largest first (ties by id)."""
    pool = candidates(min_atoms, max_atoms)
    if n >= len(pool):
        chosen = pool
    else:
        weights = np.array([m.atoms for m in pool], dtype=np.float64) ** 4
        picks = np.random.default_rng(seed).choice(len(pool), size=n, replace=False, p=weights / weights.sum())
        chosen = [pool[i] for i in picks]
    return sorted(chosen, key=lambda m: (-m.atoms, m.id))
