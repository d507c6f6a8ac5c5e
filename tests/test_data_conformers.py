"""Molecules to 3D records: conformers, determinism, policies and every failure reason."""

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

from molbridge.core.data.conformers import (
    REASONS,
    ConformerConfig,
    Failure,
    MoleculeInput,
    MoleculeRecord,
    make_record,
)


def build(smiles, **options):
    return make_record(MoleculeInput(0, "m", smiles=smiles), ConformerConfig(**options))


def test_aspirin_gets_converged_mmff_conformers_sorted_by_energy():
    record = build("CC(=O)Oc1ccccc1C(=O)O", num_conformers=4)
    assert isinstance(record, MoleculeRecord)
    assert record.atomic_numbers.tolist().count(1) == 8  # hydrogens kept by default
    c, n, _ = record.conformers.shape
    assert n == 21 and 1 <= c <= 4 and record.conformers.dtype == np.float32
    assert record.converged.all()
    assert np.all(np.diff(record.energies) >= 0)
    # the stored geometry really is an MMFF minimum: re-optimising barely changes the energy
    mol = Chem.Mol(record.mol)
    props = AllChem.MMFFGetMoleculeProperties(mol)
    ff = AllChem.MMFFGetMoleculeForceField(mol, props, confId=0)
    before = ff.CalcEnergy()
    ff.Minimize(maxIts=2000)
    assert before - ff.CalcEnergy() < 0.01
    assert before == pytest.approx(record.energies[0], abs=1e-4)


def test_seeded_embedding_is_deterministic_and_seed_dependent():
    a, b = build("CCCCOc1ccc(CCN)cc1", seed=7), build("CCCCOc1ccc(CCN)cc1", seed=7)
    c = build("CCCCOc1ccc(CCN)cc1", seed=8)
    assert np.array_equal(a.conformers, b.conformers)
    assert not np.array_equal(a.conformers, c.conformers)


def test_heavy_atom_policy_drops_hydrogens():
    record = build("CCO", hydrogens="heavy")
    assert record.atomic_numbers.tolist() == [6, 6, 8]
    assert record.conformers.shape == (1, 3, 3)


def test_cage_molecules_embed():
    for cage in ("C12C3C4C1C5C2C3C45", "C1C2CC3CC1CC(C2)C3"):  # cubane, adamantane
        assert isinstance(build(cage), MoleculeRecord)


@pytest.mark.parametrize(
    ("smiles", "options", "reason", "stage"),
    [
        ("C1CC", {}, "invalid_input", "parse"),
        ("C(C)(C)(C)(C)C", {}, "invalid_input", "parse"),
        ("", {}, "invalid_input", "parse"),
        ("[U]=O", {}, "unknown_element", "check"),
        ("*c1ccccc1", {}, "unknown_element", "check"),
        ("CCCCCCCCCCCCCCCCCCCC", {"max_atoms": 20}, "too_many_atoms", "check"),
        ("c1ccccc1[Te]c1ccccc1", {}, "mmff_missing_params", "forcefield"),
    ],
)
def test_unusable_molecules_become_failures_with_reasons(smiles, options, reason, stage):
    failure = build(smiles, **options)
    assert isinstance(failure, Failure)
    assert (failure.reason, failure.stage, failure.input) == (reason, stage, smiles)
    assert failure.reason in REASONS and failure.detail


def test_empty_required_text_is_a_failure():
    item = MoleculeInput(3, "cid3", smiles="CCO", texts={"description": "  "})
    failure = make_record(item, ConformerConfig(require_text=("description",)))
    assert isinstance(failure, Failure) and failure.reason == "empty_text" and failure.index == 3


def test_invalid_mol_block_is_reported():
    failure = make_record(MoleculeInput(0, "bad", molblock="not a mol block\n\n\n  1  0\nM  END\n"))
    assert isinstance(failure, Failure) and failure.reason == "invalid_input"


def test_given_coordinates_are_kept_without_embedding():
    coords = np.random.default_rng(0).normal(size=(1, 3, 3)).astype(np.float32)
    record = make_record(MoleculeInput(0, "w", smiles="O", atoms=["O", "H", "H"], coordinates=list(coords)))
    assert record.embedding == "given" and np.array_equal(record.conformers, coords)
    bad = make_record(MoleculeInput(0, "w", smiles="O", atoms=["O", "H"], coordinates=list(coords)))
    assert isinstance(bad, Failure) and bad.reason == "bad_coordinates"


def test_fragments_of_a_salt_are_embedded_apart():
    # RDKit's default embeds each fragment around the origin, on top of the others
    record = build("CC(C)C1CCC(O)CC1.CC(C)C1CCC(O)CC1", num_conformers=3)
    for positions in record.conformers:
        distances = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
        np.fill_diagonal(distances, np.inf)
        assert distances.min() > 0.8


def test_largest_fragment_policy_strips_counter_ions():
    record = build("CC(=O)[O-].[Na+]", fragments="largest")
    assert record.smiles == "CC(=O)[O-]" and record.atomic_numbers.tolist().count(11) == 0
    assert build("CC(=O)[O-].[Na+]").atomic_numbers.tolist().count(11) == 1  # default keeps every fragment
