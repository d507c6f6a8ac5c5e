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
        ("c1ccccc1[Te]c1ccccc1", {"forcefields": ("mmff",)}, "mmff_missing_params", "forcefield"),
        ("[se]1cccc1", {}, "no_forcefield_params", "forcefield"),  # neither MMFF94 nor UFF types aromatic Se
        ("[C@H]12C[C@@H]1C2", {}, "embedding_failed", "embed"),  # trans-fused bicyclobutane: no geometry
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
    record = build("CC(=O)[O-].[Na+]")  # the default, as molbridge-mini
    assert record.smiles == "CC(=O)[O-]" and record.atomic_numbers.tolist().count(11) == 0
    assert build("CC(=O)[O-].[Na+]", fragments="all").atomic_numbers.tolist().count(11) == 1


def test_hydrochloride_salt_keeps_the_base_or_falls_back_to_uff():
    procaine_hcl = "CCN(CC)CCOC(=O)c1ccc(N)cc1.Cl"
    record = build(procaine_hcl)
    assert record.smiles == "CCN(CC)CCOC(=O)c1ccc(N)cc1" and record.forcefield == ["mmff"]
    assert record.embedding == "etkdg"
    whole = build(procaine_hcl, fragments="all")  # MMFF94 cannot type H-Cl: UFF, and random coordinates first
    assert whole.forcefield == ["uff"] and whole.embedding == "random_coords" and 17 in whole.atomic_numbers
    assert whole.converged.all() and np.isnan(whole.energies).sum() == 0


def test_barium_sulfate_keeps_the_sulfate_or_is_a_named_failure():
    record = build("[Ba+2].[O-]S(=O)(=O)[O-]")
    assert record.smiles == "O=S(=O)([O-])[O-]" and record.forcefield == ["mmff"]
    failure = build("[Ba+2].[O-]S(=O)(=O)[O-]", fragments="all")
    assert failure.reason == "no_forcefield_params" and "Ba" in failure.detail
    kept = build("[Ba+2].[O-]S(=O)(=O)[O-]", fragments="all", keep_untyped=True)
    assert kept.forcefield == ["none"] and np.isnan(kept.energies).all() and not kept.converged.any()


def test_uff_optimises_what_mmff_cannot_type():
    record = build("CCCCOB(OCCCC)OCCCC")  # a borate ester: boron has no MMFF94 type
    assert record.forcefield == ["uff"] and record.converged.all() and np.isfinite(record.energies).all()


def test_failed_embedding_returning_minus_one_falls_back_to_random_coordinates(monkeypatch):
    """RDKit 2026.09 returns [-1] (not []) when ETKDG fails or times out; that must not count as a conformer."""
    from rdkit.Chem import rdDistGeom

    real = rdDistGeom.EmbedMultipleConfs
    calls = []

    def etkdg_fails(mol, numConfs, params):  # noqa: N803 - RDKit's keyword names
        calls.append(params.useRandomCoords)
        return [-1] if not params.useRandomCoords else real(mol, numConfs=numConfs, params=params)

    monkeypatch.setattr(rdDistGeom, "EmbedMultipleConfs", etkdg_fails)
    record = build("CC(=O)Oc1ccccc1C(=O)O")
    assert isinstance(record, MoleculeRecord), record
    assert record.embedding == "random_coords" and calls == [False, True] and record.forcefield == ["mmff"]


def test_timeout_is_a_named_failure_and_the_limit_grows_with_size(monkeypatch):
    import time

    from rdkit.Chem import rdDistGeom

    from molbridge.core.data.conformers import time_limit

    config = ConformerConfig()
    assert time_limit(300, config) > time_limit(50, config) >= config.timeout_s
    seen = []

    def slow_and_fails(mol, numConfs, params):  # noqa: N803
        seen.append(params.timeout)
        time.sleep(0.15)
        return [-1]

    monkeypatch.setattr(rdDistGeom, "EmbedMultipleConfs", slow_and_fails)
    start = time.monotonic()
    failure = build("CCO", timeout_s=0.2, timeout_per_atom_s=0.0)
    assert failure.reason == "timeout" and failure.stage == "embed" and "limit" in failure.detail
    assert time.monotonic() - start < 1.0 and seen == [1, 1]


def test_300_atom_lipid_is_kept_for_the_encoders_to_crop():
    """Over 256 atoms is no longer a rejection: Uni-Mol crops at featurisation; SchNet takes all atoms."""
    import torch

    from molbridge.plugins.encoders.schnet import SchNetConfig, SchNetEncoder
    from molbridge.plugins.encoders.unimol import UniMolConfig, UniMolEncoder

    acyl = "C" * 32 + "C(=O)"
    record = build(f"{acyl}OCC(O{acyl})CO{acyl}", max_iters=200)  # tri-C33 glyceride, 308 atoms with H
    assert isinstance(record, MoleculeRecord) and len(record.atomic_numbers) == 308
    assert record.forcefield == ["mmff"] and record.embedding in ("etkdg", "random_coords")
    for model, atoms in [
        (UniMolEncoder(UniMolConfig(preset="small", hydrogens="all_h")), 256 + 2),  # 256 nearest the centroid, CLS, SEP
        (UniMolEncoder(UniMolConfig(preset="small", hydrogens="no_h")), int((record.atomic_numbers > 1).sum()) + 2),
        (SchNetEncoder(SchNetConfig(preset="small")), 308),
    ]:
        features = model.featurize(record.atomic_numbers, record.conformers[0])
        with torch.no_grad():
            out = model(model.collate([features]))
        assert int((~out.padding_mask).sum()) == atoms and torch.isfinite(out.pooled).all()


def _real_sample_failures(molecules):
    results = [make_record(MoleculeInput(i, m.id, smiles=m.smiles)) for i, m in enumerate(molecules)]
    failures = [r for r in results if isinstance(r, Failure)]
    unexpected = [(f.id, f.reason, f.detail) for f in failures if f.reason not in REASONS or f.reason == "rdkit_error"]
    return results, failures, unexpected


def test_real_molecules_subset_has_no_unexpected_failure():
    """Every multi-fragment molecule and a spread of sizes from the 1,000-molecule real sample (see the slow test)."""
    from molbridge.core.data.samples import real_sample

    sample = real_sample()
    subset = [m for m in sample if "." in m.smiles][::7] + sample[250::250]
    results, failures, unexpected = _real_sample_failures(subset)
    assert not unexpected
    assert {f.reason for f in failures} <= {"no_forcefield_params"}  # metal complexes no force field types
    kept = [r for r in results if not isinstance(r, Failure)]
    assert kept and all(r.forcefield and r.embedding in ("etkdg", "random_coords") for r in kept)


@pytest.mark.slow
def test_real_molecules_1000_have_no_rdkit_error_and_only_named_failures():
    from molbridge.core.data.samples import real_sample

    sample = real_sample()
    assert len(sample) == 1000 and 20 <= min(m.atoms for m in sample) and max(m.atoms for m in sample) <= 200
    results, failures, unexpected = _real_sample_failures(sample)
    assert not unexpected, unexpected
    assert len(failures) <= 20, [(f.id, f.reason) for f in failures]  # metal complexes MMFF and UFF cannot type
