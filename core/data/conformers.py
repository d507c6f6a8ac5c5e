"""From a SMILES string, MOL block or given coordinates to a 3D molecule record, or to a failure.

Conformers: RDKit ETKDGv3 (seeded, single-threaded so the result does not depend on the machine),
falling back to random-coordinate embedding when ETKDG fails, then MMFF94 optimisation with enough
iterations to converge (convergence is recorded per conformer). Conformers are ordered by MMFF energy,
so conformer 0 is the lowest-energy one. Nothing raises: an unusable molecule becomes a :class:`Failure`
naming the stage and the reason.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from rdkit import Chem, RDLogger
from rdkit.Chem import AllChem, rdDistGeom, rdMolAlign
from rdkit.Chem.MolStandardize import rdMolStandardize

RDLogger.DisableLog("rdApp.*")  # parse errors are reported as Failures instead of printed

#: Failure reasons, one per way a molecule can be unusable (stable strings: they are stored).
REASONS = {
    "invalid_input": "the SMILES or MOL block could not be parsed or sanitised",
    "empty_text": "a required text field is empty",
    "unknown_element": "an atom is a dummy/query atom or an element outside the allowed range",
    "too_many_atoms": "more atoms (hydrogens included) than the limit",
    "embedding_failed": "ETKDG and the random-coordinate fallback both failed to embed",
    "mmff_missing_params": "MMFF94 has no parameters for an atom type of this molecule",
    "timeout": "the per-molecule time limit was exceeded",
    "bad_coordinates": "given coordinates do not match the atoms or are not finite",
    "atom_clash": "two atoms of an optimised conformer are closer than 0.5 angstrom",
    "rdkit_error": "RDKit raised an unexpected error on this molecule (detail has the message)",
}


@dataclass(frozen=True)
class ConformerConfig:
    """How molecules become 3D records."""

    num_conformers: int = 1
    """Conformers per molecule (0 is the lowest-energy one; pruned near-duplicates may leave fewer)."""
    seed: int = 42
    """RDKit ``randomSeed``: the same seed gives the same coordinates."""
    max_iters: int = 2000
    """MMFF iterations; RDKit's default 200 leaves most drug-like molecules unconverged."""
    prune_rms: float = 0.5
    """Drop conformers closer than this heavy-atom RMSD (angstrom) to one already kept."""
    hydrogens: Literal["all", "heavy"] = "all"
    """``all``: records keep explicit hydrogens (as 3D-MoLM's data); ``heavy``: drop them after MMFF."""
    fragments: Literal["all", "largest"] = "all"
    """``all``: keep every fragment of a salt or mixture (embedded together, so they never overlap, but
    possibly far apart); ``largest``: keep the largest organic fragment (RDKit LargestFragmentChooser)."""
    max_atoms: int = 256
    """Largest molecule accepted, hydrogens included."""
    max_atomic_number: int = 86
    """Heaviest element accepted (86 = radon); dummy atoms (0) are always rejected."""
    timeout_s: float = 60.0
    """Time limit per molecule (embedding and optimisation)."""
    require_text: tuple[str, ...] = ()
    """Text fields that must be present and non-empty (e.g. ``("description",)``)."""


@dataclass
class MoleculeInput:
    """One input molecule as a reader yields it. Exactly one of smiles / molblock / (atoms, coordinates)."""

    index: int
    id: str
    smiles: str | None = None
    molblock: str | None = None
    atoms: list[str] | None = None
    coordinates: list[np.ndarray] | None = None  # given conformers (N, 3) angstrom: no embedding
    texts: dict[str, str] = field(default_factory=dict)
    properties: dict[str, float] = field(default_factory=dict)
    instructions: list[dict[str, str]] = field(default_factory=list)

    def source_text(self) -> str:
        """The input as a short string for failure reports."""
        if self.smiles is not None:
            return self.smiles
        if self.molblock is not None:
            return self.molblock[:200]
        return " ".join(self.atoms or [])[:200]


@dataclass
class MoleculeRecord:
    """A molecule ready for an encoder: atoms incl. H and conformers (C, N, 3) float32 angstrom."""

    index: int
    id: str
    smiles: str
    atomic_numbers: np.ndarray  # int64 (N,)
    conformers: np.ndarray  # float32 (C, N, 3)
    energies: np.ndarray  # float64 (C,) MMFF94 kcal/mol (NaN for given coordinates)
    converged: np.ndarray  # bool (C,)
    texts: dict[str, str] = field(default_factory=dict)
    properties: dict[str, float] = field(default_factory=dict)
    instructions: list[dict[str, str]] = field(default_factory=list)
    embedding: str = "etkdg"  # etkdg | random_coords | given
    mol: Any = None  # the RDKit molecule with conformers (not stored; used by property calculators)


@dataclass
class Failure:
    """An input molecule that could not be used, with the stage and reason (never silently dropped)."""

    index: int
    id: str
    input: str
    stage: str
    reason: str
    detail: str = ""


class _Fail(Exception):
    def __init__(self, stage: str, reason: str, detail: str = ""):
        super().__init__(detail)
        self.stage, self.reason, self.detail = stage, reason, detail


def parse(item: MoleculeInput) -> Chem.Mol:
    """The sanitised RDKit molecule (no hydrogens added) for a SMILES or MOL block input.

    Parsing and sanitising are separate steps so a failure says which one failed and why.
    """
    if item.smiles is not None:
        mol = Chem.MolFromSmiles(item.smiles, sanitize=False) if item.smiles.strip() else None
        what = "SMILES syntax"
    else:
        mol = Chem.MolFromMolBlock(item.molblock or "", sanitize=False, removeHs=False)
        what = "MOL block"
    if mol is None or mol.GetNumAtoms() == 0:
        raise _Fail("parse", "invalid_input", f"not a valid {what} (or no atoms)")
    try:
        Chem.SanitizeMol(mol)
        mol = Chem.RemoveHs(mol)
    except Exception as exc:  # noqa: BLE001 - RDKit raises several sanitisation exception types
        raise _Fail("parse", "invalid_input", f"sanitisation failed: {exc}") from None
    return mol


def _check_atoms(mol: Chem.Mol, config: ConformerConfig) -> None:
    for atom in mol.GetAtoms():
        z = atom.GetAtomicNum()
        if z == 0 or z > config.max_atomic_number:
            raise _Fail("check", "unknown_element", f"atom {atom.GetIdx()} is '{atom.GetSymbol()}' (Z={z})")
    total = mol.GetNumAtoms() + sum(a.GetTotalNumHs() for a in mol.GetAtoms())
    if total > config.max_atoms:
        raise _Fail("check", "too_many_atoms", f"{total} atoms with hydrogens > {config.max_atoms}")


def _embed(mol: Chem.Mol, config: ConformerConfig, deadline: float) -> tuple[list[int], str]:
    """Conformer ids and the strategy that produced them: ETKDGv3 first, random coordinates second."""
    for strategy in ("etkdg", "random_coords"):
        params = rdDistGeom.ETKDGv3()
        params.randomSeed = config.seed
        params.numThreads = 1
        params.pruneRmsThresh = config.prune_rms
        # RDKit's default embeds each fragment of a salt around the origin, on top of the others
        # (overlapping atoms, absurd xTB energies); one embedding keeps fragments apart.
        params.embedFragmentsSeparately = False
        params.timeout = max(1, int(deadline - time.monotonic()))
        if strategy == "random_coords":
            params.useRandomCoords = True
            params.maxIterations = 1000
        ids = list(rdDistGeom.EmbedMultipleConfs(mol, numConfs=config.num_conformers, params=params))
        if ids:
            return ids, strategy
        if time.monotonic() > deadline:
            raise _Fail("embed", "timeout", f"embedding exceeded {config.timeout_s:g} s")
    raise _Fail("embed", "embedding_failed", "ETKDGv3 and random-coordinate embedding returned no conformer")


def _check_forcefield(mol: Chem.Mol) -> None:
    """MMFF94 typing needs no conformer, so a molecule it cannot type fails before any embedding."""
    if AllChem.MMFFGetMoleculeProperties(mol) is None or not AllChem.MMFFHasAllMoleculeParams(mol):
        raise _Fail("forcefield", "mmff_missing_params", "MMFF94 lacks parameters for at least one atom")


def _optimize(mol: Chem.Mol, config: ConformerConfig) -> tuple[np.ndarray, np.ndarray]:
    """MMFF94-optimise every conformer in place; (energies kcal/mol, converged flags)."""
    results = AllChem.MMFFOptimizeMoleculeConfs(mol, numThreads=1, maxIters=config.max_iters)
    converged = np.array([not_conv == 0 for not_conv, _ in results], dtype=bool)
    energies = np.array([energy for _, energy in results], dtype=np.float64)
    return energies, converged


def _from_given(item: MoleculeInput, config: ConformerConfig) -> MoleculeRecord:
    """A record from coordinates that came with the input (e.g. the 3D-MoLM LMDB): no embedding."""
    table = Chem.GetPeriodicTable()
    try:
        numbers = np.array([table.GetAtomicNumber(s.capitalize()) for s in item.atoms], dtype=np.int64)
    except RuntimeError as exc:
        raise _Fail("check", "unknown_element", str(exc)) from None
    conformers = np.asarray(item.coordinates, dtype=np.float32)
    if conformers.ndim != 3 or conformers.shape[1:] != (len(numbers), 3) or not np.isfinite(conformers).all():
        raise _Fail("check", "bad_coordinates", f"coordinates {conformers.shape} for {len(numbers)} atoms")
    if (numbers == 0).any() or numbers.max() > config.max_atomic_number:
        raise _Fail("check", "unknown_element", "dummy atom or element beyond the allowed range")
    if len(numbers) > config.max_atoms:
        raise _Fail("check", "too_many_atoms", f"{len(numbers)} atoms > {config.max_atoms}")
    if config.hydrogens == "heavy":
        keep = numbers != 1
        numbers, conformers = numbers[keep], conformers[:, keep]
    smiles = item.smiles or ""
    mol = Chem.MolFromSmiles(smiles) if smiles else None
    canonical = Chem.MolToSmiles(mol) if mol is not None else smiles
    count = len(conformers)
    return MoleculeRecord(
        item.index,
        item.id,
        canonical,
        numbers,
        conformers,
        np.full(count, np.nan),
        np.ones(count, dtype=bool),
        dict(item.texts),
        dict(item.properties),
        list(item.instructions),
        "given",
    )


def _build(item: MoleculeInput, config: ConformerConfig) -> MoleculeRecord:
    for name in config.require_text:
        if not item.texts.get(name, "").strip():
            raise _Fail("check", "empty_text", f"text field '{name}' is empty")
    if item.atoms is not None and item.coordinates is not None:
        return _from_given(item, config)
    deadline = time.monotonic() + config.timeout_s
    mol = parse(item)
    if config.fragments == "largest" and len(Chem.GetMolFrags(mol)) > 1:
        mol = rdMolStandardize.LargestFragmentChooser(preferOrganic=True).choose(mol)
    _check_atoms(mol, config)
    smiles = Chem.MolToSmiles(mol)
    mol = Chem.AddHs(mol)
    _check_forcefield(mol)  # before embedding: a certain failure must not depend on how long embedding takes
    ids, strategy = _embed(mol, config, deadline)
    energies, converged = _optimize(mol, config)
    if time.monotonic() > deadline:
        raise _Fail("optimize", "timeout", f"embedding and MMFF exceeded {config.timeout_s:g} s")
    usable = set(_without_clashes(mol, ids))
    by_energy = [i for i in np.argsort(energies, kind="stable") if ids[i] in usable]
    order = _distinct(mol, ids, by_energy, config.prune_rms)  # conformer 0 = lowest energy
    coords = np.stack([mol.GetConformer(ids[i]).GetPositions() for i in order]).astype(np.float32)
    numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=np.int64)
    if config.hydrogens == "heavy":
        keep = numbers != 1
        numbers, coords = numbers[keep], coords[:, keep]
    return MoleculeRecord(
        item.index,
        item.id,
        smiles,
        numbers,
        coords,
        energies[order],
        converged[order],
        dict(item.texts),
        dict(item.properties),
        list(item.instructions),
        strategy,
        mol=_reorder_conformers(mol, [ids[i] for i in order]),
    )


def _without_clashes(mol: Chem.Mol, ids: list[int], min_distance: float = 0.5) -> list[int]:
    """Conformer ids without overlapping atoms (no force field or encoder result on those means anything)."""
    kept, closest = [], np.inf
    for conf_id in ids:
        positions = mol.GetConformer(conf_id).GetPositions()
        distances = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
        np.fill_diagonal(distances, np.inf)
        closest = min(closest, distances.min())
        if distances.min() >= min_distance:
            kept.append(conf_id)
    if not kept:
        raise _Fail("optimize", "atom_clash", f"every conformer has atoms {closest:.2f} A apart")
    return kept


def _distinct(mol: Chem.Mol, ids: list[int], order: list[int], threshold: float) -> list[int]:
    """Positions in ``order`` of conformers still distinct after MMFF (minimisation merges some).

    Symmetry-aware heavy-atom RMSD, so a flipped carboxylate is recognised as the same conformer.
    """
    reference = Chem.RemoveHs(mol)
    probe = Chem.Mol(reference)  # GetBestRMS moves the probe conformer; the reference stays untouched
    kept: list[int] = []
    for i in order:
        if all(rdMolAlign.GetBestRMS(probe, reference, ids[i], ids[k], maxMatches=1000) >= threshold for k in kept):
            kept.append(int(i))
    return kept


def _reorder_conformers(mol: Chem.Mol, ids: list[int]) -> Chem.Mol:
    """A copy whose conformer k is the k-th lowest in energy (ids renumbered 0..C-1)."""
    out = Chem.Mol(mol)
    out.RemoveAllConformers()
    for new_id, old_id in enumerate(ids):
        conf = Chem.Conformer(mol.GetConformer(old_id))
        conf.SetId(new_id)
        out.AddConformer(conf, assignId=False)
    return out


def make_record(item: MoleculeInput, config: ConformerConfig = ConformerConfig()) -> MoleculeRecord | Failure:
    """The 3D record for one input, or a :class:`Failure` with its stage and reason; never raises."""
    try:
        return _build(item, config)
    except _Fail as fail:
        return Failure(item.index, item.id, item.source_text(), fail.stage, fail.reason, fail.detail)
    except Exception as exc:  # noqa: BLE001 - an RDKit error on one molecule must not stop a dataset build
        return Failure(
            item.index, item.id, item.source_text(), "unexpected", "rdkit_error", f"{type(exc).__name__}: {exc}"
        )
