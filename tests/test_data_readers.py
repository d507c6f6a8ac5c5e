"""Readers for the real release formats, on small fixtures written here in those exact formats."""

import json
import pickle

import numpy as np
import pytest

from molbridge.core.data.conformers import MoleculeRecord, make_record
from molbridge.core.data.readers import InputFormatError, read_inputs

ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"


def test_smi(tmp_path):
    path = tmp_path / "in.smi"
    path.write_text(f"{ASPIRIN} 2244\n# comment\n\nCCO\n")
    items = read_inputs(path)
    assert [(i.index, i.id, i.smiles) for i in items] == [(0, "2244", ASPIRIN), (1, "in.smi:4", "CCO")]


def test_chebi20_tsv(tmp_path):
    path = tmp_path / "train.txt"  # ChEBI-20 ships .txt files that are tab-separated
    path.write_text(
        "CID\tSMILES\tdescription\n2244\tCC(=O)Oc1ccccc1C(=O)O\tThe molecule is aspirin.\n"
        "702\tCCO\tThe molecule is ethanol.\n"
    )
    items = read_inputs(path)
    assert [(i.id, i.smiles, i.texts["description"]) for i in items] == [
        ("2244", ASPIRIN, "The molecule is aspirin."),
        ("702", "CCO", "The molecule is ethanol."),
    ]


def test_csv_and_jsonl(tmp_path):
    csv_path, jsonl_path = tmp_path / "m.csv", tmp_path / "m.jsonl"
    csv_path.write_text('smiles,text\nCCO,"ethanol, a solvent"\n')
    jsonl_path.write_text(json.dumps({"smiles": "CCO", "text": "ethanol", "id": "e1"}) + "\n\n")
    assert read_inputs(csv_path)[0].texts == {"description": "ethanol, a solvent"}
    item = read_inputs(jsonl_path)[0]
    assert (item.id, item.smiles, item.texts["description"]) == ("e1", "CCO", "ethanol")


def test_table_without_smiles_column_names_file_and_columns(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("name,text\nethanol,x\n")
    with pytest.raises(InputFormatError, match=r"m.csv row 2: no SMILES column.*columns: name, text"):
        read_inputs(path)


def test_sdf_keeps_unparsable_blocks(tmp_path):
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles("CCO"))
    AllChem.EmbedMolecule(mol, randomSeed=1)
    mol.SetProp("_Name", "ethanol")
    mol.SetProp("description", "A two-carbon alcohol.")
    writer_path = tmp_path / "m.sdf"
    good = Chem.MolToMolBlock(mol) + "> <description>\nA two-carbon alcohol.\n\n$$$$\n"
    writer_path.write_text(good + "garbage\n\n\n  0  0\nM  END\n$$$$\n")
    items = read_inputs(writer_path)
    assert len(items) == 2 and items[0].id == "ethanol"
    assert items[0].texts == {"description": "A two-carbon alcohol."}
    assert isinstance(make_record(items[0]), MoleculeRecord)
    assert make_record(items[1]).reason == "invalid_input"


def test_moit_json_groups_records_per_molecule(tmp_path):
    records = [
        {
            "instruction": "What is the HOMO of this molecule?",
            "input": ASPIRIN,
            "output": "The HOMO for the input molecule is -7.12 eV.",
            "task": "HOMO",
        },
        {"instruction": "Describe this molecule.", "input": ASPIRIN, "output": "Aspirin is ...", "task": "Description"},
        {"instruction": "What is the LogP?", "input": "CCO", "output": "-0.31", "task": "LogP"},
    ]
    path = tmp_path / "moit.json"
    path.write_text(json.dumps(records))
    items = read_inputs(path)
    assert [(i.smiles, len(i.instructions)) for i in items] == [(ASPIRIN, 2), ("CCO", 1)]
    assert items[0].texts == {"description": "Aspirin is ..."}
    path.write_text(json.dumps([{"instruction": "x", "input": "CCO", "task": "LogP"}]))
    with pytest.raises(InputFormatError, match="record 0: missing key"):
        read_inputs(path)


def _write_molm_lmdb(path):
    lmdb = pytest.importorskip("lmdb")
    env = lmdb.open(str(path), map_size=1 << 24)
    water = {
        "atoms": ["O", "H", "H"],
        "coordinates": [np.array([[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])],
        "smiles": "O",
        "description": "Water is an oxygen hydride.",
        "enriched_description": "Water ...",
        "cid": "962",
    }
    with env.begin(write=True) as txn:
        txn.put(b"962", pickle.dumps(water))
    env.close()


def test_3dmolm_lmdb_needs_trust_and_keeps_given_coordinates(tmp_path):
    path = tmp_path / "pubchem.lmdb"
    _write_molm_lmdb(path)
    with pytest.raises(InputFormatError, match="arbitrary code"):
        read_inputs(path)
    (item,) = read_inputs(path, trust_pickle=True)
    assert item.id == "962" and item.texts["enriched_description"] == "Water ..."
    record = make_record(item)
    assert record.embedding == "given" and record.atomic_numbers.tolist() == [8, 1, 1]
    assert np.allclose(record.conformers[0, 1], [0.96, 0, 0])


def test_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(InputFormatError, match="no such file"):
        read_inputs(tmp_path / "nope.smi")
    (tmp_path / "x.xyz").write_text("")
    with pytest.raises(InputFormatError, match="unknown input format '.xyz'"):
        read_inputs(tmp_path / "x.xyz")
