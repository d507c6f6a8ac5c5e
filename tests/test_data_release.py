"""Real dataset layouts, on miniatures written here in their exact formats (nothing copied from a release).

- the 3D-MoLM release (3D-MoIT): its folder layout, single-file LMDBs of pickled dicts with its keys, 3D-MoIT
  JSON lists whose ``input`` is a PubChem CID or a PubChemQC row index, one record whose conformer is missing;
- ChEBI-20: three tab-separated files (CID, SMILES, description) whose splits are the files;
- a table with a split column.
"""

import json
import pickle

import numpy as np
import pytest

from molbridge.core import batch
from molbridge.core.cli import main
from molbridge.core.data import open_dataset
from molbridge.core.data.readers import InputFormatError, read_inputs, select
from molbridge.core.data.release import CAPTION_TASK, read_release
from molbridge.core.data.torch_dataset import MoleculeDataset
from molbridge.core.errors import UnknownComponentError

lmdb = pytest.importorskip("lmdb")

# CID -> (SMILES, atoms with H); coordinates are made up here (the join keeps whatever it is given)
PUBCHEM = {
    "962": ("O", ["O", "H", "H"]),
    "702": ("CCO", ["C", "C", "O", "H", "H", "H", "H", "H", "H"]),
    "241": ("c1ccccc1", ["C"] * 6 + ["H"] * 6),
    "6342": ("C#N", ["C", "N", "H"]),
    "280": ("O=C=O", ["O", "C", "O"]),
    "297": ("C", ["C", "H", "H", "H", "H"]),
    "750": ("NCC(=O)O", ["N", "C", "C", "O", "O", "H", "H", "H", "H", "H"]),
}
# the release's split LMDBs: which captioned molecules each split holds
SPLIT_LMDB = {"pretrain": ["962", "702"], "train": ["241", "6342"], "valid": ["280"], "test": ["297"]}
# PubChemQC row index -> (SMILES, atoms); index 99 is named by a record but absent from the database
PUBCHEMQC = {"0": ("N", ["N", "H", "H", "H"]), "1": ("C=O", ["C", "O", "H", "H"])}


def coords(atoms, seed):
    return np.random.default_rng(seed).normal(scale=1.5, size=(len(atoms), 3))


def write_lmdb(path, values):
    path.parent.mkdir(parents=True, exist_ok=True)
    env = lmdb.open(str(path), subdir=False, map_size=1 << 24)  # a single file, as the release's
    with env.begin(write=True) as txn:
        for key, value in values.items():
            txn.put(key.encode(), pickle.dumps(value, protocol=-1))
    env.close()


def pubchem_value(cid):
    smiles, atoms = PUBCHEM[cid]
    return {
        "atoms": atoms,
        "coordinates": [coords(atoms, int(cid))],
        "smiles": smiles,
        "description": f"The molecule {cid} is a test compound.\n",  # the release's texts end with a newline
        "enriched_description": f"Compound {cid}, rewritten at length.\n",
        "cid": cid,
    }


def record(key, task, output, instruction=None):
    instruction = instruction or f"What is the {task} of this molecule? Respond with the numerical value only."
    return {"instruction": instruction, "input": key, "output": output, "task": task}


def write_release(root):
    """A miniature 3D-MoIT release under root/3d-mol-dataset; returns that folder."""
    data = root / "3d-mol-dataset"
    write_lmdb(data / "pubchem" / "3d-pubchem-all.lmdb", {cid: pubchem_value(cid) for cid in PUBCHEM})
    for split, cids in SPLIT_LMDB.items():
        write_lmdb(data / "pubchem" / split / "3d-pubchem.lmdb", {cid: pubchem_value(cid) for cid in cids})
    computed = {
        "pretrain": [record("962", "Molecular Weight", "The Molecular Weight for the input molecule is 18.02 g/mol.")],
        "train": [
            record("241", "Molecular Weight", "The Molecular Weight for the input molecule is 78.11 g/mol."),
            record("241", "LogP", "The LogP for the input molecule is 1.69."),
            record("750", "Molecular Weight", "The Molecular Weight for the input molecule is 75.07 g/mol."),
        ],
        "valid": [record("280", "Complexity", "The Complexity for the input molecule is 18.00.")],
        "test": [record("297", "Topological Polar Surface Area", "The ... is 0.00 Å².")],
    }
    descriptive = {
        "train": [record("6342", "Description", "It is a toxic gas.", "What is the hazard of this molecule?")],
        "test": [record("297", "Description", "It is the simplest alkane.", "What kind of molecule is this?")],
    }
    qc = {
        "train": [record("0", "HOMO", "The HOMO for the input molecule is -6.50 eV."), record("99", "LUMO", "-1")],
        "valid": [record("1", "HOMO-LUMO Gap", "The HOMO-LUMO Gap for the input molecule is 5.10 eV.")],
        "test": [record("0", "SCF Energy", "The SCF Energy for the input molecule is -1536.45 eV.")],
    }
    for name, by_split in (("2d_computed_properties.json", computed), ("2d_descriptive_properties.json", descriptive)):
        for split, records in by_split.items():
            (data / "pubchem" / split / name).write_text(json.dumps(records, indent=4, ensure_ascii=False))
    write_lmdb(
        data / "pubchemqc" / "pubchemqc_database.lmdb",
        {i: {"atoms": a, "coordinates_list": [coords(a, 1000 + int(i))], "smi": s} for i, (s, a) in PUBCHEMQC.items()},
    )
    for split, records in qc.items():
        path = data / "pubchemqc" / split / "3d_computed_properties_unit.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(records, indent=4))
    return data


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return write_release(tmp_path_factory.mktemp("release"))


@pytest.fixture(scope="module")
def prepared(release, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "3dmolm"
    argv = ["data", "prepare", str(release.parent), "--trust-pickle", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    return out


def test_release_needs_the_pickle_opt_in(release, capsys):
    assert main(["data", "prepare", str(release), "--out", str(release.parent / "x")]) == 2
    assert "--trust-pickle" in capsys.readouterr().err


def test_release_joins_every_record_and_keeps_its_splits(prepared, capsys):
    store = open_dataset(prepared)
    assert store.split_kinds() == ["random", "scaffold", "given", "given-described", "given-pretrain"]
    by_id = {m.id: (i, m) for i, m in enumerate(store)}
    # PubChem molecules (captioned, and 750 named only by a train record) and PubChemQC geometries by index
    assert set(by_id) == set(PUBCHEM) | {"pubchemqc:0", "pubchemqc:1"}
    labels = {m.id: label for label in ("pretrain", "train", "valid", "test") for m in store if m.given_split == label}
    for split, cids in SPLIT_LMDB.items():
        assert all(labels[cid] == split for cid in cids)
    assert labels["750"] == "train" and labels["pubchemqc:1"] == "valid"
    # pubchemqc:0 is named by train and by test records: one molecule per split, as the release's loaders see it
    assert sorted(m.given_split for m in store if m.id == "pubchemqc:0") == ["test", "train"]
    for kind, name in (("given", "pretrain"), ("given-pretrain", "train")):  # the pretraining phase's split
        assert {store[int(i)].id for i in store.split(name, kind)} == {"962", "702"}
    # the text stages' kinds leave out PubChemQC molecules (no description), as the reference's stages 1 and 2
    assert {store[int(i)].id for i in store.split("finetune", "given-pretrain")} == {"241", "6342", "750"}
    assert {store[int(i)].id for i in store.split("test", "given")} == {"297", "pubchemqc:0"}
    assert {store[int(i)].id for i in store.split("test", "given-described")} == {"297"}
    undescribed = {store[int(i)].id for i in store.split("undescribed", "given-described")}
    assert undescribed == {"pubchemqc:0", "pubchemqc:1"}


def test_release_records_keep_coordinates_texts_and_instructions(prepared):
    store = open_dataset(prepared)
    benzene = next(m for m in store if m.id == "241")
    assert benzene.embedding == "given" and benzene.forcefield == ["none"]
    assert np.abs(benzene.conformers[0] - coords(PUBCHEM["241"][1], 241)).max() <= 0.0005 + 1e-6
    assert benzene.atomic_numbers.tolist() == [6] * 6 + [1] * 6
    assert benzene.texts == {
        "description": "The molecule 241 is a test compound.",
        "enriched_description": "Compound 241, rewritten at length.",
    }
    assert [(r["task"], r["subset"]) for r in benzene.instructions] == [
        ("Molecular Weight", "pubchem_properties"),
        ("LogP", "pubchem_properties"),
        (CAPTION_TASK, "pubchem_caption"),
    ]
    assert all(set(r) == {"instruction", "input", "output", "task", "subset"} for r in benzene.instructions)
    assert benzene.instructions[-1]["output"] == benzene.description
    water = next(m for m in store if m.id == "962")  # pretraining molecules get no stage-3 caption record
    assert [r["task"] for r in water.instructions] == ["Molecular Weight"]
    for m in store:
        key = m.id.removeprefix("pubchemqc:")
        assert all(r["input"] == key for r in m.instructions)  # each record joined to its own molecule
    qc = [m for m in store if m.id == "pubchemqc:0" and m.given_split == "train"][0]
    assert qc.instructions == [
        {
            "instruction": "What is the HOMO of this molecule? Respond with the numerical value only.",
            "input": "0",
            "output": "The HOMO for the input molecule is -6.50 eV.",
            "task": "HOMO",
            "subset": "pubchemqc_properties",
        }
    ]
    assert np.abs(qc.conformers[0] - coords(PUBCHEMQC["0"][1], 1000)).max() <= 0.0005 + 1e-6
    cyanide = next(m for m in store if m.id == "6342")
    assert {r["subset"] for r in cyanide.instructions} == {"pubchem_descriptive", "pubchem_caption"}


def test_release_reports_the_record_without_conformer(prepared, capsys):
    store = open_dataset(prepared)
    assert [(f["id"], f["reason"], f["stage"]) for f in store.failures()] == [
        ("pubchemqc:99", "missing_conformer", "join")
    ]
    assert "pubchemqc_database.lmdb" in store.failures()[0]["detail"]
    assert store.meta["release"]["missing_conformers"] == 1
    assert main(["data", "info", str(prepared)]) == 0
    shown = capsys.readouterr().out
    assert "missing_conformer: 1" in shown and "split given:" in shown and "pubchemqc_properties" in shown
    assert "force field {'none': " in shown


def test_release_splits_feed_the_torch_dataset(prepared):
    train = MoleculeDataset.from_split(str(prepared), "train", "given-pretrain", text_field="enriched_description")
    assert sorted(item[batch.MOL_ID] for item in train) == ["702", "962"]
    assert all(item[batch.TEXT].startswith("Compound") for item in train)
    with pytest.raises(UnknownComponentError, match=r"dataset 'molbridge-mini' .* split kinds: random, scaffold"):
        MoleculeDataset.from_split("molbridge-mini", "train", "given")


def test_release_read_lazily_and_subsets(release):
    inputs = read_release(release, trust_pickle=True)
    assert len(inputs) == 11 and inputs.summary["records"]["train"]["pubchemqc_properties"] == 2
    sample = select(inputs, sample=4, seed=1)
    assert len(sample) == 4 and [item.index for item in sample[:]] == [0, 1, 2, 3]
    assert [item.id for item in select(inputs, limit=2)[:]] == ["702", "962"]  # LMDB key order


def test_moit_json_with_cids_alone_is_a_missing_conformer(release, tmp_path):
    (item,) = read_inputs(release / "pubchem" / "valid" / "2d_computed_properties.json")
    assert item.failure[1] == "missing_conformer" and "release" in item.failure[2]


CHEBI = {
    "train.txt": [("2244", "CC(=O)Oc1ccccc1C(=O)O", "The molecule is aspirin."), ("702", "CCO", "Ethanol.")],
    "validation.txt": [("241", "c1ccccc1", "The molecule is benzene.")],
    "test.txt": [("962", "O", "Water."), ("11105", "CC1=CC2=NC3=CC(N)=CC=C3N=C2C=C1N.Cl", "A hydrochloride.")],
}


def test_chebi20_three_files_are_one_dataset_with_their_splits(tmp_path, capsys):
    folder = tmp_path / "ChEBI-20_data"
    folder.mkdir()
    for name, rows in CHEBI.items():
        (folder / name).write_text("CID\tSMILES\tdescription\n" + "".join("\t".join(r) + "\n" for r in rows))
    out = tmp_path / "chebi"
    assert main(["data", "prepare", str(folder), "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    assert "split given: test 2, train 2, valid 1" in capsys.readouterr().out
    store = open_dataset(out)
    assert store.name == "ChEBI-20_data" and store.meta["failed"] == 0
    assert {store[int(i)].id for i in store.split("valid", "given")} == {"241"}
    salt = next(m for m in store if m.id == "11105")
    assert salt.given_split == "test" and 17 not in salt.atomic_numbers  # largest fragment by default
    assert salt.forcefield == ["mmff"] and salt.description == "A hydrochloride."
    # several files at once read the same way; --limit takes the first inputs (train first)
    files = [str(folder / n) for n in ("test.txt", "train.txt")]
    assert [i.split for i in read_inputs(files)] == ["train", "train", "test", "test"]
    out2 = tmp_path / "chebi-limit"
    assert main(["data", "prepare", str(folder), "--out", str(out2), "--limit", "3", "--no-progress"]) == 0
    assert open_dataset(out2).meta["subset"] == {"of": 5, "limit": 3, "sample": None, "seed": 42}
    with pytest.raises(InputFormatError, match="cannot tell the split"):
        read_inputs([folder / "train.txt", tmp_path / "chebi" / "dataset.json"])


def test_split_column_becomes_the_given_split(tmp_path):
    path = tmp_path / "mols.csv"
    path.write_text("smiles,split\nCCO,train\nCCN,Validation\nCCC,test\nCCCl,train\n")
    items = read_inputs(path)
    assert [i.split for i in items] == ["train", "valid", "test", "train"]
