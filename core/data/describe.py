"""True statements about a molecule, phrased with several templates, and 3D-MoIT instruction records.

:func:`structure_facts` computes facts with RDKit (rings, Murcko scaffold, functional groups, stereo,
charge, size, shape from principal moments of inertia, radius of gyration); :func:`describe` turns
them into a description and :func:`instructions` into question-answer records in the 3D-MoIT schema
``{instruction, input, output, task}``. Template choice is seeded per molecule, so output is
deterministic while the text varies across the dataset.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

import numpy as np
from rdkit import Chem
from rdkit.Chem import rdMolDescriptors
from rdkit.Chem.Scaffolds import MurckoScaffold

from molbridge.core.data.properties import PROPERTY_INFO

# A short list of groups we can name in prose. RDKit's FunctionalGroups.txt is written for
# fragment matching, not for naming, so the readable names are ours.
FUNCTIONAL_GROUPS = {
    "carboxylic acid": "[CX3](=O)[OX2H1]",
    "carboxylate": "[CX3](=O)[O-]",
    "ester": "[#6][CX3](=O)[OX2][#6]",
    "amide": "[NX3][CX3](=[OX1])[#6]",
    "urea": "[NX3][CX3](=[OX1])[NX3]",
    "aldehyde": "[CX3H1](=O)[#6]",
    "ketone": "[#6][CX3](=O)[#6]",
    "primary amine": "[NX3;H2;!$(NC=O);!$(N-a)][CX4]",
    "secondary amine": "[NX3;H1;!$(NC=O)]([CX4])[CX4]",
    "tertiary amine": "[NX3;H0;!$(NC=O)]([CX4])([CX4])[CX4]",
    "aniline": "[NX3;H2,H1;!$(NC=O)]c",
    "hydroxyl": "[OX2H][CX4]",
    "phenol": "[OX2H]c",
    "ether": "[OD2]([#6;!$(C=O)])[#6;!$(C=O)]",
    "nitrile": "[NX1]#[CX2]",
    "nitro": "[$([NX3](=O)=O),$([NX3+](=O)[O-])]",
    "sulfonamide": "[SX4](=[OX1])(=[OX1])[NX3]",
    "sulfone": "[#6][SX4](=[OX1])(=[OX1])[#6]",
    "thiol": "[SX2H]",
    "thioether": "[SX2]([#6])[#6]",
    "phosphate": "P(=O)([OX2])([OX2])",
    "alkene": "[CX3]=[CX3]",
    "alkyne": "[CX2]#[CX2]",
    "fluorine": "[F]",
    "chlorine": "[Cl]",
    "bromine": "[Br]",
    "iodine": "[I]",
}
_PATTERNS = {name: Chem.MolFromSmarts(smarts) for name, smarts in FUNCTIONAL_GROUPS.items()}


@dataclass
class Facts:
    """What :func:`describe` and :func:`instructions` may say about one molecule (all computed)."""

    formula: str
    heavy_atoms: int
    rings: int
    aromatic_rings: int
    ring_systems: int
    largest_ring: int
    scaffold: str
    groups: list[str]
    stereocentres: int
    unassigned_stereocentres: int
    stereo_double_bonds: int
    charge: int
    charged_atoms: int
    fragments: int
    shape: str
    npr: tuple[float, float]
    radius_of_gyration: float
    dipole: float | None = None
    properties: dict[str, float] = field(default_factory=dict)


def _ring_systems(mol: Chem.Mol) -> int:
    """Fused ring systems: rings sharing at least one atom are one system."""
    systems: list[set[int]] = []
    for ring in mol.GetRingInfo().AtomRings():
        atoms = set(ring)
        for system in [s for s in systems if s & atoms]:
            atoms |= system
            systems.remove(system)
        systems.append(atoms)
    return len(systems)


def _separated_charges(mol: Chem.Mol) -> int:
    """Charged atoms without an oppositely charged neighbour: a nitro group's N+/O- pair is only how
    the structure is drawn, not a zwitterion, so it is not counted."""

    def balanced(atom: Chem.Atom) -> bool:
        return any(n.GetFormalCharge() * atom.GetFormalCharge() < 0 for n in atom.GetNeighbors())

    return sum(a.GetFormalCharge() != 0 and not balanced(a) for a in mol.GetAtoms())


#: Nearest corner of the normalised-PMI triangle names the shape; two-atom molecules are "linear".
SHAPE_CORNERS = {"rod-like": (0.0, 1.0), "disc-like": (0.5, 0.5), "sphere-like": (1.0, 1.0)}
SHAPES = (*SHAPE_CORNERS, "linear")


def shape_class(npr1: float, npr2: float) -> str:
    """The shape the normalised principal moments are nearest to (a corner of the PMI triangle)."""
    return min(SHAPE_CORNERS, key=lambda k: (npr1 - SHAPE_CORNERS[k][0]) ** 2 + (npr2 - SHAPE_CORNERS[k][1]) ** 2)


def structure_facts(mol: Chem.Mol, conf_id: int = 0, dipole: float | None = None) -> Facts:
    """Facts about a molecule with explicit hydrogens and at least one conformer."""
    heavy = Chem.RemoveHs(mol)
    ring_info = heavy.GetRingInfo()
    # The legacy perception counts true tetrahedral centres; the new one also flags cage carbons (cubane).
    centres = Chem.FindMolChiralCenters(heavy, includeUnassigned=True, useLegacyImplementation=True)
    stereo_bonds = sum(b.GetStereo() != Chem.BondStereo.STEREONONE for b in heavy.GetBonds())
    scaffold = MurckoScaffold.MurckoScaffoldSmiles(mol=heavy) if ring_info.NumRings() else ""
    npr1 = rdMolDescriptors.CalcNPR1(mol, confId=conf_id) if mol.GetNumAtoms() > 2 else 0.0
    npr2 = rdMolDescriptors.CalcNPR2(mol, confId=conf_id) if mol.GetNumAtoms() > 2 else 1.0
    return Facts(
        formula=rdMolDescriptors.CalcMolFormula(heavy),
        heavy_atoms=heavy.GetNumAtoms(),
        rings=ring_info.NumRings(),
        aromatic_rings=rdMolDescriptors.CalcNumAromaticRings(heavy),
        ring_systems=_ring_systems(heavy),
        largest_ring=max((len(r) for r in ring_info.AtomRings()), default=0),
        scaffold=scaffold,
        groups=[name for name, pattern in _PATTERNS.items() if heavy.HasSubstructMatch(pattern)],
        stereocentres=len(centres),
        unassigned_stereocentres=sum(label == "?" for _, label in centres),
        stereo_double_bonds=int(stereo_bonds),
        charge=Chem.GetFormalCharge(heavy),
        charged_atoms=_separated_charges(heavy),
        fragments=len(Chem.GetMolFrags(heavy)),
        shape=shape_class(float(npr1), float(npr2)) if mol.GetNumAtoms() > 2 else "linear",
        npr=(round(float(npr1), 3), round(float(npr2), 3)),
        radius_of_gyration=float(rdMolDescriptors.CalcRadiusOfGyration(mol, confId=conf_id)),
        dipole=dipole,
    )


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else plural or word + 's'}"


def _size_sentence(f: Facts, rng: random.Random) -> str:
    return rng.choice(
        [
            f"The molecule has the formula {f.formula} with {_plural(f.heavy_atoms, 'heavy atom')}.",
            f"It is a molecule of formula {f.formula} ({_plural(f.heavy_atoms, 'non-hydrogen atom')}).",
            f"This compound, {f.formula}, contains {_plural(f.heavy_atoms, 'heavy atom')}.",
        ]
    )


def _ring_sentence(f: Facts, rng: random.Random) -> str:
    if f.rings == 0:
        return rng.choice(["It is acyclic.", "The structure contains no rings.", "It has no ring system."])
    aromatic = f"{f.aromatic_rings} of them aromatic" if f.aromatic_rings else "none of them aromatic"
    systems = _plural(f.ring_systems, "ring system")
    return rng.choice(
        [
            f"It contains {_plural(f.rings, 'ring')} ({aromatic}) in {systems}; the largest ring has "
            f"{f.largest_ring} atoms.",
            f"The structure has {_plural(f.rings, 'ring')}, {aromatic}, forming {systems}.",
            f"Its {_plural(f.rings, 'ring')} ({aromatic}) make up {systems}, with Murcko scaffold {f.scaffold}.",
        ]
    )


def _group_sentence(f: Facts, rng: random.Random) -> str:
    if not f.groups:
        return rng.choice(
            [
                "None of the common functional groups we look for is present.",
                "It carries none of the listed common functional groups.",
            ]
        )
    groups = _join(f.groups)
    return rng.choice(
        [
            f"Functional groups present: {groups}.",
            f"It contains the following functional groups: {groups}.",
            f"Its functional groups include {groups}.",
        ]
    )


def _stereo_sentence(f: Facts, rng: random.Random) -> str:
    if f.stereocentres == 0 and f.stereo_double_bonds == 0:
        return rng.choice(["It has no stereocentres.", "The molecule has no stereogenic centres."])
    parts = []
    if f.stereocentres:
        unassigned = f" ({f.unassigned_stereocentres} unspecified)" if f.unassigned_stereocentres else ""
        parts.append(_plural(f.stereocentres, "stereocentre") + unassigned)
    if f.stereo_double_bonds:
        parts.append(_plural(f.stereo_double_bonds, "stereo double bond"))
    return rng.choice([f"It has {_join(parts)}.", f"Stereochemistry: {_join(parts)}."])


def _charge_sentence(f: Facts, rng: random.Random) -> str:
    salt = " It consists of several disconnected components." if f.fragments > 1 else ""
    if f.charge == 0 and f.charged_atoms == 0:
        return rng.choice(["It is neutral.", "The molecule carries no formal charge."]) + salt
    if f.charge == 0:
        kind = "a salt" if f.fragments > 1 else "zwitterionic"
        return f"It is overall neutral but {kind}, with {_plural(f.charged_atoms, 'charged atom')}." + salt
    sign = f"{f.charge:+d}"
    return rng.choice([f"It carries a net formal charge of {sign}.", f"Its net charge is {sign}."]) + salt


def _shape_sentence(f: Facts, rng: random.Random) -> str:
    dipole = f" and a GFN2-xTB dipole moment of {f.dipole:.1f} D" if f.dipole is not None else ""
    return rng.choice(
        [
            f"In its lowest-energy MMFF conformer the molecule is {f.shape}, with a radius of gyration of "
            f"{f.radius_of_gyration:.1f} \u00c5{dipole}.",
            f"Its 3D shape is {f.shape} (normalised principal moments {f.npr[0]:.2f}, {f.npr[1]:.2f}); "
            f"radius of gyration {f.radius_of_gyration:.1f} \u00c5{dipole}.",
            f"The MMFF geometry is {f.shape} and spans a radius of gyration of {f.radius_of_gyration:.1f} \u00c5"
            f"{dipole}.",
        ]
    )


_SHAPE_WORD = re.compile(r"\b(" + "|".join(map(re.escape, SHAPES)) + r")\b", re.IGNORECASE)
_RADIUS = re.compile(r"radius of gyration (?:of )?(\d+(?:\.\d+)?) ?\u00c5", re.IGNORECASE)


def read_shape_facts(text: str) -> tuple[str | None, float | None]:
    """The shape class and radius of gyration (A) a text states, as :func:`_shape_sentence` phrases them.

    The inverse of the shape sentence, for scoring generated captions on the two facts that only the 3D
    conformer gives: the first shape word of the text and the first radius of gyration; None for a fact
    the text does not state.
    """
    shape, radius = _SHAPE_WORD.search(text), _RADIUS.search(text)
    return (shape.group(1).lower() if shape else None), (float(radius.group(1)) if radius else None)


def describe(facts: Facts, seed: int) -> str:
    """A description made only of true statements about the facts; template choice seeded by ``seed``."""
    rng = random.Random(seed)
    sentences = [
        _size_sentence(facts, rng),
        _ring_sentence(facts, rng),
        _group_sentence(facts, rng),
        _stereo_sentence(facts, rng),
        _charge_sentence(facts, rng),
        _shape_sentence(facts, rng),
    ]
    first, rest = sentences[0], sentences[1:]
    rng.shuffle(rest)  # vary the order too, keeping the identifying sentence first
    return " ".join([first] + rest)


PROPERTY_QUESTIONS = [
    "What is the {label} of this molecule? If uncertain, provide an estimate. Respond with the numerical value only.",
    "Could you give me the {label} of this molecule? Reply with a number.",
    "Estimate the {label} of the input molecule. Answer with the numerical value only.",
    "Please provide the {label} value for this molecule.",
]
PROPERTY_TASKS = {
    "molecular_weight": "Molecular Weight",
    "logp": "LogP",
    "tpsa": "Topological Polar Surface Area",
    "bertz_ct": "BertzCT Complexity",
    "xtb_homo": "HOMO (GFN2-xTB)",
    "xtb_lumo": "LUMO (GFN2-xTB)",
    "xtb_gap": "HOMO-LUMO Gap (GFN2-xTB)",
    "xtb_energy": "Total Energy (GFN2-xTB)",
}


def _descriptive_qa(f: Facts) -> list[tuple[str, str]]:
    aromatic = f", {f.aromatic_rings} of them aromatic" if f.rings else ""
    qa = [
        ("How many rings does this molecule contain?", f"The molecule contains {_plural(f.rings, 'ring')}{aromatic}."),
        ("What is the molecular formula of this molecule?", f"The molecular formula is {f.formula}."),
        (
            "Which functional groups does this molecule have?",
            f"It has {_join(f.groups)}." if f.groups else "None of the common functional groups is present.",
        ),
        (
            "Describe the overall 3D shape of this molecule.",
            f"Its lowest-energy conformer is {f.shape}, with a radius of gyration of "
            f"{f.radius_of_gyration:.1f} \u00c5.",
        ),
        (
            "Does this molecule have stereocentres?",
            f"Yes, it has {_plural(f.stereocentres, 'stereocentre')}." if f.stereocentres else "No, it has none.",
        ),
        (
            "What is the net formal charge of this molecule?",
            f"The net formal charge is {f.charge:+d}."
            if f.charge
            else "The molecule is neutral (net formal charge 0).",
        ),
    ]
    if f.scaffold:
        qa.append(("What is the Bemis-Murcko scaffold of this molecule?", f"The scaffold is {f.scaffold}."))
    return qa


def instructions(
    facts: Facts, properties: dict[str, float], smiles: str, description: str, seed: int, descriptive: int = 3
) -> list[dict[str, str]]:
    """3D-MoIT records: one per available property, ``descriptive`` fact questions, and the description."""
    rng = random.Random(seed)
    records = []
    for key, task in PROPERTY_TASKS.items():
        value = properties.get(key)
        if value is None or not np.isfinite(value):
            continue
        label, unit = PROPERTY_INFO[key]
        records.append(
            {
                "instruction": rng.choice(PROPERTY_QUESTIONS).format(label=label),
                "input": smiles,
                "output": f"The {label} for the input molecule is {value:.2f}{unit}.",
                "task": task,
            }
        )
    for question, answer in rng.sample(_descriptive_qa(facts), k=descriptive):
        records.append({"instruction": question, "input": smiles, "output": answer, "task": "Descriptive QA"})
    records.append(
        {"instruction": "Describe this molecule.", "input": smiles, "output": description, "task": "Description"}
    )
    return records
