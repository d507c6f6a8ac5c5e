"""Computed properties of a 3D record: RDKit descriptors and GFN2-xTB single points (tblite).

Names say where a value comes from: ``bertz_ct`` is RDKit's BertzCT complexity, not PubChem's
"Complexity"; ``xtb_*`` values are GFN2-xTB on the MMFF geometry, not DFT (3D-MoLM used PubChemQC's
B3LYP/6-31G*): same quantities, different level of theory.
"""

from __future__ import annotations

import numpy as np
from rdkit import Chem
from rdkit.Chem import Crippen, Descriptors, GraphDescriptors, rdMolDescriptors

HARTREE_TO_EV = 27.211386245988
ANGSTROM_TO_BOHR = 1.0 / 0.52917721067
AU_TO_DEBYE = 2.541746473

#: Property name -> (label used in questions, unit appended to answers).
PROPERTY_INFO = {
    "molecular_weight": ("molecular weight", " g/mol"),
    "logp": ("LogP (Crippen)", ""),
    "tpsa": ("topological polar surface area", " \u00c5\u00b2"),
    "bertz_ct": ("BertzCT complexity", ""),
    "xtb_homo": ("GFN2-xTB HOMO energy", " eV"),
    "xtb_lumo": ("GFN2-xTB LUMO energy", " eV"),
    "xtb_gap": ("GFN2-xTB HOMO-LUMO gap", " eV"),
    "xtb_energy": ("GFN2-xTB total energy", " eV"),
}


def rdkit_properties(mol: Chem.Mol) -> dict[str, float]:
    """Molecular weight (g/mol), Crippen LogP, TPSA (A^2) and BertzCT of a molecule."""
    heavy = Chem.RemoveHs(mol)
    return {
        "molecular_weight": float(Descriptors.MolWt(heavy)),  # type: ignore[attr-defined]  # rdkit stub lacks it
        "logp": float(Crippen.MolLogP(heavy)),  # type: ignore[attr-defined]  # rdkit stub lacks it
        "tpsa": float(rdMolDescriptors.CalcTPSA(heavy)),
        "bertz_ct": float(GraphDescriptors.BertzCT(heavy)),
    }


def xtb_properties(atomic_numbers: np.ndarray, positions: np.ndarray, charge: int) -> dict[str, float]:
    """GFN2-xTB HOMO, LUMO, gap, total energy (eV) and dipole (debye) of one geometry (angstrom).

    Raises RuntimeError from tblite when the SCF fails; callers record that as a missing value.
    """
    from tblite.interface import Calculator  # imported lazily: only the dataset build needs it

    numbers = np.asarray(atomic_numbers, dtype=np.int32)
    electrons = int(numbers.sum()) - charge
    calc = Calculator(
        "GFN2-xTB",
        numbers,
        np.asarray(positions, dtype=np.float64) * ANGSTROM_TO_BOHR,
        charge=float(charge),
        uhf=electrons % 2,
    )
    calc.set("verbosity", 0)
    result = calc.singlepoint()
    energies = result.get("orbital-energies") * HARTREE_TO_EV
    occupations = result.get("orbital-occupations")
    occupied = occupations > 1e-6  # spin-summed occupations: 2, 1 (open shell) or 0
    homo, lumo = float(energies[occupied].max()), float(energies[~occupied].min())
    return {
        "xtb_homo": homo,
        "xtb_lumo": lumo,
        "xtb_gap": lumo - homo,
        "xtb_energy": float(result.get("energy")) * HARTREE_TO_EV,
        "xtb_dipole": float(np.linalg.norm(result.get("dipole"))) * AU_TO_DEBYE,
    }
