"""molbridge-mini: the deterministic build (on a subset), its texts and instructions, and the shipped copy."""

import hashlib
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from rdkit import Chem
from rdkit.Chem import Descriptors

from molbridge.core.cli import main
from molbridge.core.data import describe, open_dataset
from molbridge.core.data.conformers import MoleculeInput, make_record
from molbridge.core.data.info import dataset_info
from molbridge.core.data.mini import build_mini
from molbridge.core.data.properties import xtb_properties
from molbridge.core.data.store import DatasetError

PROPERTY_FIELDS = {"molecular_weight", "logp", "tpsa", "bertz_ct", "xtb_homo", "xtb_lumo", "xtb_gap", "xtb_energy"}


def digest(root):
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def subset(tmp_path_factory):
    out = tmp_path_factory.mktemp("mini")
    build_mini(out, limit=20, workers=1, progress=False)
    return out


def test_subset_build_is_byte_identical(subset, tmp_path):
    build_mini(tmp_path, limit=20, workers=1, progress=False)
    assert digest(tmp_path) == digest(subset)


def test_subset_records_have_properties_texts_and_instructions(subset):
    store = open_dataset(subset)
    assert len(store) + store.meta["failed"] == 20
    for mol in store:
        assert PROPERTY_FIELDS <= set(mol.properties)
        assert mol.properties["xtb_lumo"] > mol.properties["xtb_homo"]
        props = mol.properties
        assert props["xtb_gap"] == pytest.approx(props["xtb_lumo"] - props["xtb_homo"], abs=1e-5)
        assert mol.description.startswith(("The molecule", "It is a molecule", "This compound"))
        assert {r["task"] for r in mol.instructions} >= {"Molecular Weight", "HOMO (GFN2-xTB)", "Description"}
        assert all(set(r) == {"instruction", "input", "output", "task"} for r in mol.instructions)
        weight = mol.properties["molecular_weight"]
        assert weight == pytest.approx(Descriptors.MolWt(Chem.MolFromSmiles(mol.smiles)), abs=1e-5)
        mw = next(r for r in mol.instructions if r["task"] == "Molecular Weight")
        assert mw["output"] == f"The molecular weight for the input molecule is {weight:.2f} g/mol."
    texts = [m.description.split(".")[0] for m in store]
    assert len(set(t.split()[0] for t in texts)) > 1  # several templates in use


def test_subset_has_the_xtb_values_of_every_conformer(subset, tmp_path):
    """The build computes GFN2-xTB on every stored conformer; conformer 0's are the molecule's own xTB properties
    (computed on unrounded coordinates: stored ones are rounded to 0.5 milli-angstrom; over the shipped set the
    dipoles differ by 0.023 D at most)."""
    store = open_dataset(subset)
    assert store.meta["conformer_properties"]["file"] == "conformer_properties.parquet"
    differ = 0
    for i, mol in enumerate(store):
        values = store.conformer_properties(i)
        assert {len(v) for v in values.values()} == {len(mol.conformers)}
        assert values["xtb_dipole"][0] == pytest.approx(mol.properties["xtb_dipole_debye"], abs=0.05)
        assert values["xtb_energy"][0] == pytest.approx(mol.properties["xtb_energy"], abs=0.01)
        assert values["xtb_gap"][0] == pytest.approx(mol.properties["xtb_gap"], abs=0.01)
        differ += len(mol.conformers) > 1 and np.ptp(values["xtb_dipole"]) > 0.01
    assert differ > 0  # conformers of one molecule have their own values
    bare = tmp_path / "bare"
    shutil.copytree(subset, bare)
    (bare / "conformer_properties.parquet").unlink()
    with pytest.raises(DatasetError, match="bench data conformer-properties"):
        open_dataset(bare).conformer_properties(0)


def test_descriptions_state_computed_facts():
    record = make_record(MoleculeInput(0, "x", smiles="C[C@H](N)c1ccc(O)cc1C(=O)OC"))
    facts = describe.structure_facts(record.mol, dipole=2.0)
    assert (facts.rings, facts.aromatic_rings, facts.stereocentres, facts.charge) == (1, 1, 1, 0)
    assert {"phenol", "ester", "primary amine"} <= set(facts.groups)
    assert facts.scaffold == "c1ccccc1" and facts.formula == "C10H13NO3"
    texts = {describe.describe(facts, seed) for seed in range(20)}
    assert len(texts) > 5
    assert all("C10H13NO3" in t and "1 stereocentre" in t and "phenol" in t for t in texts)


@pytest.mark.parametrize("dipole", [None, 2.0])
def test_every_description_template_reads_back_its_shape_facts(dipole):
    record = make_record(MoleculeInput(0, "x", smiles="CCCCCCCC(=O)O"))
    facts = describe.structure_facts(record.mol, dipole=dipole)
    texts = {describe.describe(facts, seed) for seed in range(40)}
    read = {describe.read_shape_facts(text) for text in texts}
    assert len(texts) > 10 and read == {(facts.shape, round(facts.radius_of_gyration, 1))}


def test_shape_facts_absent_or_inside_other_words_read_as_none():
    assert describe.read_shape_facts("A nonlinear, discotic molecule.") == (None, None)
    assert describe.read_shape_facts("It is Sphere-like; radius of gyration of 12 \u00c5.") == ("sphere-like", 12.0)


def test_shape_classes():
    shapes = {}
    examples = {
        "rod": "CC#CC#CC#CC",
        "disc": "c1cc2ccc3ccc4ccc5ccc6ccc1c1c2c3c4c5c61",  # coronene
        "sphere": "C1C2CC3CC1CC(C2)C3",
    }  # adamantane
    for name, smiles in examples.items():
        shapes[name] = describe.structure_facts(make_record(MoleculeInput(0, name, smiles=smiles)).mol).shape
    assert shapes == {"rod": "rod-like", "disc": "disc-like", "sphere": "sphere-like"}


def test_xtb_values_are_physical():
    water = make_record(MoleculeInput(0, "w", smiles="O"))
    values = xtb_properties(water.atomic_numbers, water.conformers[0], charge=0)
    assert values["xtb_homo"] < 0 < values["xtb_gap"]
    assert values["xtb_energy"] == pytest.approx(-5.07 * 27.2114, rel=0.01)  # GFN2-xTB water, about -5.07 Eh
    assert 1.0 < values["xtb_dipole"] < 3.0  # debye


def test_shipped_dataset_meets_acceptance():
    store = open_dataset("molbridge-mini")
    info = dataset_info(store)
    assert info["molecules"] >= 4000 and info["unexplained_drops"] == 0
    assert info["molecules"] + info["failed"] == info["inputs"]
    assert set(info["splits"]) == {"random", "scaffold"}
    assert PROPERTY_FIELDS <= set(info["properties"])
    assert info["conformers"]["converged_fraction"] > 0.99
    mol = store[int(store.split("test", "scaffold")[0])]
    assert mol.conformers.ndim == 3 and np.isfinite(mol.conformers).all()
    rows = sum(len(store[i].conformers) for i in range(len(store)))
    assert len(pq.read_table(store.root / "conformer_properties.parquet")) == rows  # xTB on every conformer
    size = sum(p.stat().st_size for p in store.root.rglob("*") if p.is_file())
    assert size <= 15 * 2**20


def test_more_conformers_keep_the_molecules_and_splits_under_their_own_name(subset, tmp_path, capsys):
    """``--conformers 10``: the same molecules in the same splits, more conformers per flexible molecule,
    conformer 0 the lowest in energy, and a name of its own so runs never share an identity with the shipped
    copy's; fewer than one conformer is refused by name."""
    build_mini(tmp_path, limit=20, workers=1, progress=False, conformers=10)
    shipped, more = open_dataset(subset), open_dataset(tmp_path)
    assert (shipped.meta["name"], more.meta["name"]) == ("molbridge-mini", "molbridge-mini-c10")
    assert more.meta["build"]["command"].endswith("--conformers 10")
    assert [m.id for m in more] == [m.id for m in shipped]
    for kind in ("random", "scaffold"):
        for split in ("train", "valid", "test"):
            assert list(more.split(split, kind)) == list(shipped.split(split, kind))
    counts = [(len(a.conformers), len(b.conformers)) for a, b in zip(shipped, more, strict=True)]
    assert max(n for _, n in counts) > 3
    assert sum(n for _, n in counts) > sum(n for n, _ in counts)
    for mol in more:
        assert list(mol.mmff_energy) == sorted(mol.mmff_energy)
    assert main(["data", "build-mini", "--out", str(tmp_path / "none"), "--conformers", "0"]) == 2
    assert "--conformers must be at least 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()
