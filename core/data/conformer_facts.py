"""Facts of one conformer, computed from its coordinates alone, and captions that tell a molecule's conformers apart.

Every fact of a molecule (anything its SMILES fixes) is the same for all its conformers, so a model that reads
only the SMILES cannot tell them apart: on a conformer-level task it is at chance by construction, and whatever a
3D encoder scores above chance it read from the coordinates. The facts here are those geometry fixes:

- ``radius_of_gyration`` (angstrom, mass-weighted over all atoms, as RDKit's ``CalcRadiusOfGyration``),
- ``max_distance`` (angstrom, the largest distance between two heavy atoms: how stretched the molecule is),
- ``npr`` (the normalised principal moments of inertia, mass-weighted, as RDKit's ``CalcNPR1``/``CalcNPR2``) and
  the ``shape`` class they are nearest to;
- on request (each costs about a millisecond, so they are not part of :class:`ConformerFacts`):
  :func:`surface_area`, the solvent-accessible surface area, and :func:`intramolecular_hbonds`, the hydrogen bonds
  a conformer makes within itself: both change as a chain folds onto itself.

A caption names the conformer's place among the molecule's conformers ordered by radius of gyration ("the most
compact of 3") next to its values: the relative statement is what one conformer's text can say that another's
cannot, whatever the molecule's size. Under the text field ``conformer_energy`` it also states the conformer's
MMFF94 energy above the molecule's lowest stored conformer (the dataset's force-field energies): the one fact here
that depends on the hydrogens' places and on no single distance, which an encoder learns only when taught it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from rdkit import Chem
from rdkit.Chem import rdDetermineBonds, rdFreeSASA

from molbridge.core.data.describe import shape_class

if TYPE_CHECKING:
    from molbridge.core.data.store import Molecule

_TABLE = Chem.GetPeriodicTable()

#: Text fields whose captions are computed per conformer, and whether they state its relative energy.
CONFORMER_TEXT_FIELDS = {"conformer": False, "conformer_energy": True}


@dataclass(frozen=True)
class ConformerFacts:
    radius_of_gyration: float
    max_distance: float
    npr: tuple[float, float]
    shape: str


def conformer_facts(atomic_numbers: np.ndarray, positions: np.ndarray) -> ConformerFacts:
    """The facts of one conformer: ``atomic_numbers`` (N,) with hydrogens, ``positions`` (N, 3) angstrom."""
    z = np.asarray(atomic_numbers)
    xyz = np.asarray(positions, dtype=np.float64)
    masses = np.array([_TABLE.GetAtomicWeight(int(a)) for a in z])
    centred = xyz - (masses[:, None] * xyz).sum(0) / masses.sum()
    radius = float(np.sqrt((masses * (centred**2).sum(1)).sum() / masses.sum()))
    heavy = xyz[z > 1]
    gaps = heavy[:, None, :] - heavy[None, :, :]
    max_distance = float(np.sqrt((gaps**2).sum(-1)).max()) if len(heavy) > 1 else 0.0
    if len(z) < 3:
        return ConformerFacts(radius, max_distance, (0.0, 1.0), "linear")
    inertia = np.einsum("n,ni,nj->ij", masses, centred, centred)  # second moments; the principal moments are
    moments = np.sort(np.trace(inertia) - np.linalg.eigvalsh(inertia))  # trace minus their eigenvalues
    npr = (float(moments[0] / moments[2]), float(moments[1] / moments[2]))
    return ConformerFacts(radius, max_distance, npr, shape_class(*npr))


def _molecule(atomic_numbers: np.ndarray, positions: np.ndarray) -> Chem.RWMol:
    """An editable RDKit molecule of the atoms alone, at these positions (no bonds: the facts below need none,
    or find them from the distances)."""
    mol = Chem.RWMol()
    conformer = Chem.Conformer(len(atomic_numbers))
    for i, (z, xyz) in enumerate(zip(atomic_numbers, np.asarray(positions, dtype=np.float64), strict=True)):
        mol.AddAtom(Chem.Atom(int(z)))
        conformer.SetAtomPosition(i, xyz.tolist())
    mol.AddConformer(conformer, assignId=True)
    return mol


#: The probe of solvent-accessible surfaces: a water molecule's radius (angstrom).
PROBE_RADIUS = 1.4


def surface_area(atomic_numbers: np.ndarray, positions: np.ndarray) -> float:
    """Solvent-accessible surface area (square angstrom) of one conformer, hydrogens included: FreeSASA's
    Lee-Richards algorithm (RDKit's ``rdFreeSASA``) over Bondi's van der Waals radii with a 1.4 A probe."""
    mol = _molecule(atomic_numbers, positions)
    radii = [_TABLE.GetRvdw(int(z)) for z in atomic_numbers]
    options = rdFreeSASA.SASAOpts(rdFreeSASA.LeeRichards, rdFreeSASA.Protor, PROBE_RADIUS)  # radii given: the
    # classifier is not used
    return float(rdFreeSASA.CalcSASA(mol, radii, confIdx=-1, query=None, opts=options))


#: Geometric criteria of a hydrogen bond D-H...A (D, A: N or O): the H...A distance at most 2.5 A and the
#: D-H...A angle at least 120 degrees; intramolecular only when A is at least 3 bonds from D (a 6-membered or
#: larger ring closes through the hydrogen), so that a bent O-H next to an O is not counted.
HBOND_MAX_DISTANCE, HBOND_MIN_ANGLE, HBOND_MIN_BONDS = 2.5, 120.0, 3
_POLAR = (7, 8)


def intramolecular_hbonds(atomic_numbers: np.ndarray, positions: np.ndarray) -> int:
    """Hydrogen bonds within one conformer, by the geometric criteria above; its bonds are found from the
    distances (RDKit's ``DetermineConnectivity``), so the count needs nothing but the atoms and coordinates."""
    z = np.asarray(atomic_numbers)
    xyz = np.asarray(positions, dtype=np.float64)
    mol = _molecule(z, xyz)
    rdDetermineBonds.DetermineConnectivity(mol)
    bonds = Chem.GetDistanceMatrix(mol)  # in bonds; unconnected fragments are far apart
    count = 0
    for h in np.flatnonzero(z == 1):
        donors = [n.GetIdx() for n in mol.GetAtomWithIdx(int(h)).GetNeighbors() if n.GetAtomicNum() in _POLAR]
        if not donors:
            continue
        d = donors[0]
        for a in np.flatnonzero(np.isin(z, _POLAR)):
            if a == d or bonds[d, a] < HBOND_MIN_BONDS or np.linalg.norm(xyz[a] - xyz[h]) > HBOND_MAX_DISTANCE:
                continue
            u, v = xyz[d] - xyz[h], xyz[a] - xyz[h]
            angle = np.degrees(np.arccos(np.clip(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)), -1.0, 1.0)))
            count += angle >= HBOND_MIN_ANGLE
    return int(count)


def _ordinal(n: int) -> str:
    return {1: "", 2: "second ", 3: "third "}.get(n, f"{n}th ")


def _energy(above_lowest: float | None) -> str:
    """A caption's energy clause; empty where the energy is not known."""
    if above_lowest is None or not np.isfinite(above_lowest):
        return ""
    return f", {above_lowest:.1f} kcal/mol above the lowest conformer (MMFF94)"


def conformer_captions(facts: list[ConformerFacts], energies: Sequence[float] | np.ndarray | None = None) -> list[str]:
    """One caption per conformer of a molecule (in the order given): its rank by radius of gyration among them
    and its values; with ``energies`` (kcal/mol above the lowest, NaN where unknown) also its energy. Ties in
    radius keep the given order."""
    order = sorted(range(len(facts)), key=lambda k: facts[k].radius_of_gyration)
    count = len(facts)
    captions = [""] * count
    for place, k in enumerate(order):
        f = facts[k]
        if count == 1:
            where = "The only conformer"
        elif place < count / 2:
            where = f"The {_ordinal(place + 1)}most compact of {count} conformers"
        else:
            where = f"The {_ordinal(count - place)}most extended of {count} conformers"
        captions[k] = (
            f"{where}: radius of gyration {f.radius_of_gyration:.2f} A, largest heavy-atom distance "
            f"{f.max_distance:.1f} A, {f.shape} (normalised principal moments {f.npr[0]:.2f}, {f.npr[1]:.2f})"
            f"{_energy(None if energies is None else energies[k])}."
        )
    return captions


def molecule_captions(
    atomic_numbers: np.ndarray, conformers: Sequence[np.ndarray] | np.ndarray, energies: np.ndarray | None = None
) -> list[str]:
    """The caption of each conformer of one molecule (:func:`conformer_captions` of their facts); with
    ``energies`` (kcal/mol, NaN where unknown) each also states its energy above the lowest."""
    relative = None if energies is None else relative_energies(energies)
    return conformer_captions([conformer_facts(atomic_numbers, positions) for positions in conformers], relative)


def relative_energies(energies: Sequence[float] | np.ndarray) -> np.ndarray:
    """Each conformer's energy above the molecule's lowest (NaN stays NaN; all NaN when none is known)."""
    energies = np.asarray(energies, dtype=float)
    return energies - np.nanmin(energies) if np.isfinite(energies).any() else energies


def captions_of(molecule: Molecule, text_field: str) -> list[str]:
    """The captions of a stored molecule's conformers under a text field of :data:`CONFORMER_TEXT_FIELDS`."""
    energies = molecule.mmff_energy if CONFORMER_TEXT_FIELDS[text_field] else None
    return molecule_captions(molecule.atomic_numbers, molecule.conformers, energies)


class CaptionFacts(NamedTuple):
    """What a caption states of its conformer, each None where it does not."""

    place: str | None
    """Its place among the molecule's conformers, lower-cased: "most compact of 3 conformers"."""
    conformers: int | None
    """How many conformers the place counts (1 for "the only conformer")."""
    radius: float | None
    """Its radius of gyration (A)."""


_PLACE = re.compile(r"The (only conformer|(?:\w+ )?most (?:compact|extended) of (\d+) conformers)", re.IGNORECASE)
_CAPTION_RADIUS = re.compile(r"radius of gyration (\d+(?:\.\d+)?) A")


def read_caption(text: str) -> CaptionFacts:
    """What a text states as :func:`conformer_captions` phrases it: how a generated caption is checked against
    its conformer's."""
    place, radius = _PLACE.search(text), _CAPTION_RADIUS.search(text)
    return CaptionFacts(
        place.group(1).lower() if place else None,
        (int(place.group(2)) if place.group(2) else 1) if place else None,
        float(radius.group(1)) if radius else None,
    )
