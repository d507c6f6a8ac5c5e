"""From a SMILES string, MOL block or given coordinates to a 3D molecule record, or to a failure.

Each molecule walks a chain of fallbacks, and the record says which step produced it:

- **Fragments**: a salt or mixture keeps its largest organic fragment by default (``fragments="largest"``,
  as molbridge-mini); ``all`` embeds every fragment together, kept apart.
- **Embedding** (``embedding``): RDKit ETKDGv3 (seeded, single-threaded so the result does not depend
  on the machine), then random-coordinate embedding, then the named failure ``embedding_failed`` (or
  ``timeout``). Every conformer id the embedder returns is checked: RDKit 2026.09 returns ``[-1]``, not
  an empty list, when it fails or times out. A molecule of several fragments starts with random
  coordinates, because ETKDG's eigenvector start fails on disconnected molecules (27 of 28 in the
  1,000-molecule real sample of :mod:`~molbridge.core.data.samples`), and would otherwise spend its
  whole time limit retrying.
- **Force field** (``forcefield``, per conformer): MMFF94 when it types every atom, else UFF (boron,
  arsenic, tin, many metals, ...), else the named failure (``no_forcefield_params``; ``mmff_missing_params``
  when MMFF94 is the only force field allowed), or the unoptimised geometry (``none``) with
  ``keep_untyped``. A conformer whose optimisation fails or ends with overlapping atoms falls back to its
  unoptimised embedding (``none``) when that has no overlap. Enough iterations to converge; convergence
  is recorded per conformer.
- **Time**: the limit grows with the molecule (``timeout_s + timeout_per_atom_s * atoms``); the first
  strategy gets :data:`FIRST_STRATEGY_SHARE` of it so the fallback still has time; running out is the named
  failure ``timeout`` (RDKit's failure counts in its detail). An embedder that fails for a structural reason
  says so after its attempts, long before the limit (a trans-fused bicyclobutane: 0.1 s). Optimisation is
  bounded by ``max_iters`` rather than by time; a worker stuck past a generous hard limit is killed by the
  preparation pool (:mod:`~molbridge.core.data.pool`).
- **Size**: molecules are no longer rejected at 256 atoms: encoders crop (Uni-Mol: hydrogens removed,
  atoms nearest the centroid kept, as the reference); ``max_atoms`` is only a sanity limit.

Conformers are ordered by force-field energy, so conformer 0 is the lowest-energy one. Nothing raises: an
unusable molecule becomes a :class:`Failure` naming the stage and the reason.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from rdkit import Chem, rdBase
from rdkit.Chem import rdDistGeom, rdForceFieldHelpers, rdMolAlign
from rdkit.Chem.MolStandardize import rdMolStandardize

rdBase.DisableLog("rdApp.*")  # parse errors are reported as Failures instead of printed

#: Failure reasons, one per way a molecule can be unusable (stable strings: they are stored).
REASONS = {
    "invalid_input": "the SMILES or MOL block could not be parsed or sanitised",
    "empty_text": "a required text field is empty",
    "unknown_element": "an atom is a dummy/query atom or an element outside the allowed range",
    "too_many_atoms": "more atoms (hydrogens included) than the sanity limit",
    "embedding_failed": "ETKDG and the random-coordinate fallback both failed to embed",
    "mmff_missing_params": "MMFF94 has no parameters for an atom type of this molecule (MMFF94 the only force field)",
    "no_forcefield_params": "neither MMFF94 nor UFF has parameters for an atom of this molecule (e.g. a metal)",
    "timeout": "the per-molecule time limit (it grows with the molecule) was exceeded",
    "bad_coordinates": "given coordinates do not match the atoms or are not finite",
    "atom_clash": "two atoms of an optimised conformer are closer than 0.5 angstrom",
    "rdkit_error": "RDKit raised an unexpected error on this molecule (detail has the message)",
    "worker_crashed": "the worker process died on this molecule (a crash inside RDKit); the build went on",
    "missing_conformer": "the record names a molecule (a CID or PubChemQC index) whose conformer is not in the input",
}

#: Force fields, in the order they are tried; ``none`` marks an unoptimised (or given) conformer.
FORCEFIELDS = ("mmff", "uff")
ORGANIC = ("H", "C", "N", "O", "F", "P", "S", "Cl", "Br", "I")
#: Share of a molecule's time limit the first embedding strategy may use; the fallback gets the rest.
FIRST_STRATEGY_SHARE = 0.6


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
    fragments: Literal["all", "largest"] = "largest"
    """``largest``: keep the largest organic fragment of a salt or mixture (RDKit LargestFragmentChooser), as
    molbridge-mini; ``all``: keep every fragment (embedded together, so they never overlap, but possibly far
    apart)."""
    max_atoms: int = 1000
    """Sanity limit, hydrogens included. Not the encoder's limit: encoders crop large molecules (Uni-Mol keeps
    the 256 heavy atoms nearest the centroid, as the reference), and ``bench data info`` counts them."""
    max_atomic_number: int = 86
    """Heaviest element accepted (86 = radon); dummy atoms (0) are always rejected."""
    timeout_s: float = 10.0
    """Time limit per molecule for embedding: this many seconds plus ``timeout_per_atom_s`` per atom."""
    timeout_per_atom_s: float = 0.1
    """Seconds added to the time limit per atom (hydrogens included): 15 s for 50 atoms, 40 s for 300."""
    forcefields: tuple[str, ...] = FORCEFIELDS
    """Force fields to try, in order (``mmff``, ``uff``); the first that types every atom optimises."""
    keep_untyped: bool = False
    """Keep a molecule no force field types with its unoptimised embedding (``forcefield`` ``none``) instead
    of rejecting it as ``no_forcefield_params``."""
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
    instructions: list[dict[str, str]] = field(default_factory=list)  # {instruction, input, output, task[, subset]}
    split: str | None = None  # the input's own split (a split column, its file, the release's folder)
    failure: tuple[str, str, str] | None = None  # (stage, reason, detail) when the reader already rejected it

    def source_text(self) -> str:
        """The input as a short string for failure reports."""
        if self.smiles is not None:
            return self.smiles
        if self.molblock is not None:
            return self.molblock[:200]
        if self.atoms is None and self.instructions:
            return str(self.instructions[0].get("input", ""))[:200]
        return " ".join(self.atoms or [])[:200]


@dataclass
class MoleculeRecord:
    """A molecule ready for an encoder: atoms incl. H and conformers (C, N, 3) float32 angstrom."""

    index: int
    id: str
    smiles: str
    atomic_numbers: np.ndarray  # int64 (N,)
    conformers: np.ndarray  # float32 (C, N, 3)
    energies: np.ndarray  # float64 (C,) kcal/mol under each conformer's force field (NaN: none/given)
    converged: np.ndarray  # bool (C,)
    texts: dict[str, str] = field(default_factory=dict)
    properties: dict[str, float] = field(default_factory=dict)
    instructions: list[dict[str, str]] = field(default_factory=list)
    embedding: str = "etkdg"  # etkdg | random_coords | given
    mol: Any = None  # the RDKit molecule with conformers (not stored; used by property calculators)
    forcefield: list[str] = field(default_factory=list)  # per conformer: mmff | uff | none ([] = all mmff)
    split: str | None = None  # the input's own split label, if it had one

    def forcefields(self) -> list[str]:
        """The force field of every conformer (records built before it was recorded: MMFF94)."""
        default = "none" if self.embedding == "given" else "mmff"
        return self.forcefield or [default] * len(self.conformers)


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
        raise _Fail("check", "too_many_atoms", f"{total} atoms with hydrogens > sanity limit {config.max_atoms}")


def time_limit(atoms: int, config: ConformerConfig) -> float:
    """Seconds a molecule of ``atoms`` atoms (hydrogens included) may spend embedding."""
    return config.timeout_s + config.timeout_per_atom_s * atoms


def _embed_once(mol: Chem.Mol, config: ConformerConfig, strategy: str, seconds: float) -> tuple[list[int], Counter]:
    params = rdDistGeom.ETKDGv3()
    params.randomSeed = config.seed  # type: ignore[assignment]  # rdkit stub: property typed as a method
    params.numThreads = 1  # type: ignore[assignment]  # rdkit stub: property typed as a method
    params.pruneRmsThresh = config.prune_rms  # type: ignore[assignment]  # rdkit stub: property typed as a method
    # RDKit's default embeds each fragment of a salt around the origin, on top of the others
    # (overlapping atoms, absurd xTB energies); one embedding keeps fragments apart.
    params.embedFragmentsSeparately = False  # type: ignore[assignment]  # rdkit stub: property typed as a method
    params.timeout = max(1, round(seconds))  # type: ignore[assignment]  # rdkit stub: property typed as a method
    params.trackFailures = True  # type: ignore[assignment]  # rdkit stub: property typed as a method
    if strategy == "random_coords":
        params.useRandomCoords = True  # type: ignore[assignment]  # rdkit stub: property typed as a method
        params.maxIterations = 1000  # type: ignore[assignment]  # rdkit stub: property typed as a method
    ids = list(rdDistGeom.EmbedMultipleConfs(mol, numConfs=config.num_conformers, params=params))
    # RDKit 2026.09 reports a failed or timed-out embedding as [-1]: only ids of existing conformers count
    existing = {conf.GetId() for conf in mol.GetConformers()}
    causes = Counter(
        {n: c for n, c in zip(rdDistGeom.EmbedFailureCauses.names, params.GetFailureCounts(), strict=False) if c}
    )
    return [i for i in ids if i >= 0 and i in existing], causes


def _embed(mol: Chem.Mol, config: ConformerConfig, limit: float) -> tuple[list[int], str]:
    """Conformer ids and the strategy that produced them within ``limit`` seconds (order: module docstring)."""
    deadline = time.monotonic() + limit
    strategies = ["etkdg", "random_coords"]
    if len(Chem.GetMolFrags(mol)) > 1:
        strategies.reverse()  # ETKDG's start fails on disconnected molecules: do not spend the limit on it
    causes: Counter = Counter()
    for position, strategy in enumerate(strategies):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        seconds = remaining * FIRST_STRATEGY_SHARE if position == 0 else remaining
        ids, why = _embed_once(mol, config, strategy, seconds)
        if ids:
            return ids, strategy
        causes += why
        mol.RemoveAllConformers()
    detail = ", ".join(f"{name.lower()} {count}" for name, count in causes.most_common(4)) or "no detail"
    if causes.get("EXCEEDED_TIMEOUT") or time.monotonic() >= deadline:
        raise _Fail("embed", "timeout", f"no conformer within the {limit:.0f} s limit ({detail})")
    raise _Fail("embed", "embedding_failed", f"ETKDGv3 and random coordinates returned no conformer ({detail})")


def _choose_forcefield(mol: Chem.Mol, config: ConformerConfig) -> tuple[str, Any]:
    """The first force field of ``config.forcefields`` that types every atom (typing needs no conformer), and
    its MMFF94 properties when it is MMFF94 (typed once, reused by the optimisation)."""
    for name in config.forcefields:
        # MMFFGetMoleculeProperties first: it sets MMFF aromaticity flags on the molecule, which ETKDG's
        # torsion rules then see; keeping that order keeps every conformer built before the fallbacks the same
        if name == "mmff":
            props = rdForceFieldHelpers.MMFFGetMoleculeProperties(mol)
            if props is not None and rdForceFieldHelpers.MMFFHasAllMoleculeParams(mol):
                return "mmff", props
        if name == "uff" and rdForceFieldHelpers.UFFHasAllMoleculeParams(mol):
            return "uff", None
        if name not in FORCEFIELDS:
            raise _Fail("forcefield", "invalid_input", f"unknown force field '{name}' (known: {FORCEFIELDS})")
    if config.keep_untyped:
        return "none", None
    if tuple(config.forcefields) == ("mmff",):
        raise _Fail("forcefield", "mmff_missing_params", "MMFF94 lacks parameters for at least one atom")
    unusual = sorted({a.GetSymbol() for a in mol.GetAtoms()} - set(ORGANIC))
    where = f" (unusual elements: {', '.join(unusual)})" if unusual else ""
    tried = ", ".join(config.forcefields)
    raise _Fail("forcefield", "no_forcefield_params", f"none of {tried} types every atom{where}")


def _forcefield_for(mol: Chem.Mol, name: str, conf_id: int, mmff_props):
    if name == "mmff":
        return rdForceFieldHelpers.MMFFGetMoleculeForceField(mol, mmff_props, confId=conf_id)
    return rdForceFieldHelpers.UFFGetMoleculeForceField(mol, confId=conf_id)


def _optimize(
    mol: Chem.Mol, ids: list[int], name: str, props: Any, config: ConformerConfig
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Optimise every conformer in place with force field ``name``: (energies kcal/mol, converged, force field).

    A conformer whose optimisation fails (no force field object, an exception, a non-finite energy) keeps its
    embedded geometry and is marked ``none`` with a NaN energy.
    """
    energies = np.full(len(ids), np.nan)
    converged = np.zeros(len(ids), dtype=bool)
    used = ["none"] * len(ids)
    if name == "none":
        return energies, converged, used
    for k, conf_id in enumerate(ids):
        before = mol.GetConformer(conf_id).GetPositions()
        try:
            ff = _forcefield_for(mol, name, conf_id, props)
            ff.Initialize()
            not_converged = ff.Minimize(maxIts=config.max_iters)
            energy = ff.CalcEnergy()
        except Exception:  # noqa: BLE001 - a force-field failure on one conformer falls back to its embedding
            ff, energy = None, float("nan")
        if ff is None or not np.isfinite(energy):
            _set_positions(mol, conf_id, before)
            continue
        energies[k], converged[k], used[k] = energy, not_converged == 0, name
    return energies, converged, used


def _set_positions(mol: Chem.Mol, conf_id: int, positions: np.ndarray) -> None:
    conf = mol.GetConformer(conf_id)
    for i, xyz in enumerate(positions):
        conf.SetAtomPosition(i, xyz.tolist())


def _from_given(
    item: MoleculeInput, atoms: list[str], coordinates: list[np.ndarray], config: ConformerConfig
) -> MoleculeRecord:
    """A record from coordinates that came with the input (``item.atoms``, ``item.coordinates``; e.g. the
    3D-MoLM LMDB): no embedding."""
    table = Chem.GetPeriodicTable()
    try:
        numbers = np.array([table.GetAtomicNumber(s.capitalize()) for s in atoms], dtype=np.int64)
    except RuntimeError as exc:
        raise _Fail("check", "unknown_element", str(exc)) from None
    conformers = np.asarray(coordinates, dtype=np.float32)
    if conformers.ndim != 3 or conformers.shape[1:] != (len(numbers), 3) or not np.isfinite(conformers).all():
        raise _Fail("check", "bad_coordinates", f"coordinates {conformers.shape} for {len(numbers)} atoms")
    if (numbers == 0).any() or numbers.max() > config.max_atomic_number:
        raise _Fail("check", "unknown_element", "dummy atom or element beyond the allowed range")
    if len(numbers) > config.max_atoms:
        raise _Fail("check", "too_many_atoms", f"{len(numbers)} atoms > sanity limit {config.max_atoms}")
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
        forcefield=["none"] * count,
        split=item.split,
    )


def _build(item: MoleculeInput, config: ConformerConfig) -> MoleculeRecord:
    if item.failure is not None:
        raise _Fail(*item.failure)
    for name in config.require_text:
        if not item.texts.get(name, "").strip():
            raise _Fail("check", "empty_text", f"text field '{name}' is empty")
    if item.atoms is not None and item.coordinates is not None:
        return _from_given(item, item.atoms, item.coordinates, config)
    mol = parse(item)
    if config.fragments == "largest" and len(Chem.GetMolFrags(mol)) > 1:
        mol = rdMolStandardize.LargestFragmentChooser(preferOrganic=True).choose(mol)
    _check_atoms(mol, config)
    smiles = Chem.MolToSmiles(mol)
    mol = Chem.AddHs(mol)
    # before embedding: a certain failure must not depend on how long embedding takes
    forcefield, props = _choose_forcefield(mol, config)
    ids, strategy = _embed(mol, config, time_limit(mol.GetNumAtoms(), config))
    embedded = {conf_id: mol.GetConformer(conf_id).GetPositions() for conf_id in ids}
    energies, converged, used = _optimize(mol, ids, forcefield, props, config)
    usable = set(_without_clashes(mol, ids, raise_if_none=False))
    for k, conf_id in enumerate(ids):  # an optimisation that made atoms overlap: keep the embedding instead
        if conf_id not in usable and used[k] != "none" and _min_distance(embedded[conf_id]) >= MIN_DISTANCE:
            _set_positions(mol, conf_id, embedded[conf_id])
            energies[k], converged[k], used[k] = np.nan, False, "none"
            usable.add(conf_id)
    if not usable:
        _without_clashes(mol, ids)  # raises atom_clash with the closest distance
    rank = {name: r for r, name in enumerate((*FORCEFIELDS, "none"))}
    by_energy = sorted(
        (k for k in range(len(ids)) if ids[k] in usable),
        key=lambda k: (rank[used[k]], energies[k] if np.isfinite(energies[k]) else np.inf, k),
    )
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
        forcefield=[used[i] for i in order],
        split=item.split,
    )


MIN_DISTANCE = 0.5  # angstrom: closer atoms mean an unusable conformer


def _min_distance(positions: np.ndarray) -> float:
    distances = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    return float(distances.min()) if len(positions) > 1 else np.inf


def _without_clashes(mol: Chem.Mol, ids: list[int], raise_if_none: bool = True) -> list[int]:
    """Conformer ids without overlapping atoms (no force field or encoder result on those means anything)."""
    kept, closest = [], np.inf
    for conf_id in ids:
        distance = _min_distance(mol.GetConformer(conf_id).GetPositions())
        closest = min(closest, distance)
        if distance >= MIN_DISTANCE:
            kept.append(conf_id)
    if not kept and raise_if_none:
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
