"""Preparation (shards, resume, --shard), the Parquet store, splits, the torch adaptor, the feature cache."""

import hashlib
import json

import numpy as np
import pytest
import torch

from molbridge.core import batch
from molbridge.core.data import open_dataset
from molbridge.core.data.conformers import ConformerConfig
from molbridge.core.data.features import FeatureCache
from molbridge.core.data.prepare import parse_shard, prepare
from molbridge.core.data.readers import read_inputs
from molbridge.core.data.splits import random_split, scaffold, scaffold_split
from molbridge.core.data.store import DatasetError
from molbridge.core.data.torch_dataset import MoleculeDataset
from molbridge.core.errors import MolbridgeError, UnknownComponentError

MIXED = """\
CC(=O)Oc1ccccc1C(=O)O aspirin
C1CC broken
c1ccccc1CCN phenethylamine
[U]=O uranium
C12C3C4C1C5C2C3C45 cubane
CCCCCCOc1ccc(CCN)cc1 hexyloxy
Oc1ccccc1 phenol
c1ccc2ccccc2c1 naphthalene
CC(C)Cc1ccc(cc1)C(C)C(=O)O ibuprofen
CCO ethanol
"""
CONFIG = ConformerConfig(num_conformers=3, seed=3)


def digest(root):
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    path = tmp_path_factory.mktemp("in") / "mixed.smi"
    path.write_text(MIXED)
    return read_inputs(path)


@pytest.fixture(scope="module")
def prepared(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("ds")
    prepare(inputs, out, name="mixed", config=CONFIG, shard_size=4, workers=1, progress=False)
    return out


def test_every_input_is_a_molecule_or_a_reported_failure(prepared):
    store = open_dataset(prepared)
    assert len(store) == 8 and store.meta["failed"] == 2
    assert [(f["id"], f["reason"]) for f in store.failures()] == [
        ("broken", "invalid_input"),
        ("uranium", "unknown_element"),
    ]
    assert [m.id for m in store] == [
        "aspirin",
        "phenethylamine",
        "cubane",
        "hexyloxy",
        "phenol",
        "naphthalene",
        "ibuprofen",
        "ethanol",
    ]
    assert [s["molecules"] for s in store.meta["shards"]] == [2, 4, 2]  # 3 shards of 4 inputs, less failures


def test_round_trip_precision(prepared, inputs):
    from molbridge.core.data.conformers import make_record

    mol = open_dataset(prepared)[0]
    record = make_record(inputs[0], CONFIG)
    assert mol.smiles == record.smiles and np.array_equal(mol.atomic_numbers, record.atomic_numbers)
    assert mol.conformers.dtype == np.float32 and mol.conformers.shape == record.conformers.shape
    assert np.abs(mol.conformers - record.conformers).max() <= 0.0005 + 1e-6  # milli-angstrom storage
    assert mol.converged.all()


def test_output_bytes_do_not_depend_on_process_count(inputs, prepared, tmp_path):
    prepare(inputs, tmp_path, name="mixed", config=CONFIG, shard_size=4, workers=2, progress=False)
    assert digest(tmp_path) == digest(prepared)


def test_resume_skips_finished_shards_and_split_jobs_finish(inputs, prepared, tmp_path):
    assert (
        prepare(inputs, tmp_path, name="mixed", config=CONFIG, shard_size=4, workers=1, shard=(1, 2), progress=False)
        is None
    )  # shard 1 of 3 only: not finished yet
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["part-00001.parquet"]
    stamp = (tmp_path / "shards" / "part-00001.parquet").stat().st_mtime_ns
    meta = prepare(inputs, tmp_path, name="mixed", config=CONFIG, shard_size=4, workers=1, shard=(0, 2), progress=False)
    assert meta["molecules"] == 8
    assert (tmp_path / "shards" / "part-00001.parquet").stat().st_mtime_ns == stamp  # skipped, not redone
    assert digest(tmp_path) == digest(prepared)


def test_shard_argument():
    assert parse_shard("3/16") == (3, 16)
    for bad in ("16/16", "x", "1/0"):
        with pytest.raises(MolbridgeError, match="--shard"):
            parse_shard(bad)


def test_splits_stored_and_scaffold_groups_kept_together(prepared):
    store = open_dataset(prepared)
    assert store.split_kinds() == ["random", "scaffold"]
    for kind in ("random", "scaffold"):
        parts = [set(store.split(name, kind).tolist()) for name in ("train", "valid", "test")]
        assert set().union(*parts) == set(range(len(store))) and sum(map(len, parts)) == len(store)
    with pytest.raises(UnknownComponentError, match="did you mean 'scaffold'"):
        store.split("train", "scafold")


def test_split_functions_are_seeded():
    assert (random_split(100, 1) == random_split(100, 1)).all()
    assert not (random_split(100, 1) == random_split(100, 2)).all()
    smiles = ["c1ccccc1C", "c1ccccc1CC", "C1CCCCC1O", "CCO", "CCN", "c1ccncc1C"] * 5
    labels = scaffold_split(smiles, seed=0)
    by_scaffold = {}
    for s, label in zip(smiles, labels, strict=True):
        by_scaffold.setdefault(scaffold(s), set()).add(label)
    assert all(len(v) == 1 for v in by_scaffold.values())


def test_torch_dataset_items_and_conformer_choice(prepared):
    store = open_dataset(prepared)
    hexyl = [m.id for m in store].index("hexyloxy")
    evaluation = MoleculeDataset(store, [hexyl])
    item = evaluation[0]
    assert {batch.MOL_ID, batch.SMILES, batch.ATOMIC_NUMBERS, batch.POSITIONS, batch.TEXT} <= set(item)
    assert item[batch.ATOMIC_NUMBERS].dtype == np.int64 and item[batch.POSITIONS].dtype == np.float32
    assert item[batch.POSITIONS].shape == (len(item[batch.ATOMIC_NUMBERS]), 3) and item["conformer"] == 0
    train = MoleculeDataset(store, [hexyl], augment=True, seed=5)
    count = len(store[hexyl].conformers)
    assert count > 1
    draws = []
    for epoch in range(12):
        train.set_epoch(epoch)
        draws.append(train[0]["conformer"])
    again = MoleculeDataset(store, [hexyl], augment=True, seed=5)
    again.set_epoch(3)
    assert again[0]["conformer"] == draws[3]  # seeded, not scheduling dependent
    assert len(set(draws)) > 1 and max(draws) < count


def test_feature_cache_written_next_to_dataset(prepared):
    store = open_dataset(prepared)
    calls = []

    def featurize(numbers, positions):
        calls.append(1)
        positions = torch.as_tensor(positions)
        return {"z": torch.as_tensor(numbers), "d": torch.cdist(positions, positions)}

    cache = FeatureCache(store, "test-encoder-v1", featurize)
    first = cache[4]
    assert (prepared / "features" / "test-encoder-v1" / "part-00001.pt").is_file()
    assert len(calls) == 4  # the whole of shard 1
    again = FeatureCache(store, "test-encoder-v1", featurize)[4]
    assert len(calls) == 4 and torch.equal(first["d"], again["d"])
    item = MoleculeDataset(store, features=cache)[4]
    assert torch.equal(item["features"]["z"], torch.as_tensor(item[batch.ATOMIC_NUMBERS]))


def test_missing_or_incomplete_dataset_is_a_clear_error(tmp_path, prepared):
    with pytest.raises(DatasetError, match="neither a packaged dataset"):
        open_dataset(tmp_path)
    meta = json.loads((prepared / "dataset.json").read_text())
    assert meta["inputs"] == 10 and "/" not in meta.get("source", "")


def test_format_1_datasets_read_with_the_new_fields_defaulted():
    store = open_dataset("molbridge-mini")  # written in format 1, before force fields and given splits
    assert store.meta["format_version"] == 1 and store.split_kinds() == ["random", "scaffold"]
    mol = store[0]
    assert mol.forcefield == ["mmff"] * len(mol.conformers) and mol.given_split is None
    assert all(set(r) == {"instruction", "input", "output", "task"} for r in mol.instructions)


def test_new_shards_record_force_fields_and_mmff_energy_only_for_mmff(tmp_path):
    items = read_inputs_from_smiles(tmp_path, ["CCO ethanol", "CCCCOB(OCCCC)OCCCC borate"])
    meta = prepare(items, tmp_path / "ds", name="ff", config=CONFIG, workers=1, progress=False)
    store = open_dataset(tmp_path / "ds")
    assert meta["format_version"] == 2 and [m.id for m in store] == ["ethanol", "borate"]
    ethanol, borate = store[0], store[1]
    assert set(ethanol.forcefield) == {"mmff"} and np.isfinite(ethanol.mmff_energy).all()
    assert set(borate.forcefield) == {"uff"} and np.isnan(borate.mmff_energy).all()


def read_inputs_from_smiles(tmp_path, lines):
    path = tmp_path / "in.smi"
    path.write_text("\n".join(lines) + "\n")
    return read_inputs(path)
