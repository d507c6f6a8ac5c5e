"""Conformer QA: per-conformer values, and a score that a model blind to coordinates cannot move off zero."""

import json

import numpy as np
import pytest
import torch
from rdkit import Chem
from rdkit.Chem import AllChem, rdMolDescriptors, rdMolTransforms

from molbridge.core.cli import main
from molbridge.core.data import MoleculeDataset, conformer_facts
from molbridge.core.errors import MolbridgeError
from molbridge.plugins.tasks.conformer_qa import (
    DEFAULT_PROPERTIES,
    EV_TO_KCAL_PER_MOL,
    ConformerQAConfig,
    ConformerQATask,
    conformer_values,
)
from molbridge.plugins.tasks.llm_stage import Example, ExampleDataset, spread


def test_values_of_real_conformers():
    mol = Chem.AddHs(Chem.MolFromSmiles("CCCCCCOc1ccccc1"))  # a flexible chain: conformers differ
    ids = list(AllChem.EmbedMultipleConfs(mol, numConfs=3, randomSeed=11))
    energies = np.array([e for _, e in AllChem.MMFFOptimizeMoleculeConfs(mol)])
    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    conformers = np.stack([mol.GetConformer(i).GetPositions() for i in ids])
    values = conformer_values(z, conformers, energies)
    for i, entry in zip(ids, values, strict=True):
        assert entry["radius_of_gyration"] == pytest.approx(rdMolDescriptors.CalcRadiusOfGyration(mol, confId=i))
        assert entry["relative_energy"] == pytest.approx(energies[i] - energies.min())
    assert min(v["relative_energy"] for v in values) == 0.0
    assert len({round(v["radius_of_gyration"], 3) for v in values}) > 1
    energies[1] = np.nan  # a conformer without an MMFF energy is not asked about its energy
    assert "relative_energy" not in conformer_values(z, conformers, energies)[1]


def test_surface_area_of_isolated_atoms_is_the_probe_sphere():
    """One atom alone: the sphere of its van der Waals radius plus the probe; two far apart: the sum; touching:
    less (each buries part of the other)."""
    radius = {6: 1.7, 8: 1.52}  # Bondi's, as RDKit's periodic table gives them
    sphere = {z: 4 * np.pi * (r + conformer_facts.PROBE_RADIUS) ** 2 for z, r in radius.items()}
    one = conformer_facts.surface_area(np.array([6]), np.zeros((1, 3)))
    assert one == pytest.approx(sphere[6], rel=1e-2)
    apart = conformer_facts.surface_area(np.array([6, 8]), np.array([[0.0, 0, 0], [20.0, 0, 0]]))
    assert apart == pytest.approx(sphere[6] + sphere[8], rel=1e-2)
    bonded = conformer_facts.surface_area(np.array([6, 8]), np.array([[0.0, 0, 0], [1.4, 0, 0]]))
    assert bonded < 0.8 * apart


def test_intramolecular_hbond_counts_follow_the_hydroxyl():
    """Salicylaldehyde: with its O-H turned to the carbonyl O it makes one hydrogen bond within itself, turned
    away none; the coordinates alone decide (same atoms, same SMILES)."""
    mol = Chem.AddHs(Chem.MolFromSmiles("O=Cc1ccccc1O"))
    AllChem.EmbedMolecule(mol, randomSeed=7)
    AllChem.MMFFOptimizeMolecule(mol)
    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    hydroxyl_o = next(
        a for a in mol.GetAtoms() if a.GetAtomicNum() == 8 and a.GetTotalNumHs(includeNeighbors=True) == 1
    )
    hydrogen = next(n.GetIdx() for n in hydroxyl_o.GetNeighbors() if n.GetAtomicNum() == 1)
    ring_c = next(n.GetIdx() for n in hydroxyl_o.GetNeighbors() if n.GetAtomicNum() == 6)
    towards = next(  # the ring carbon that carries the aldehyde
        n.GetIdx()
        for n in mol.GetAtomWithIdx(ring_c).GetNeighbors()
        if n.GetIdx() != hydroxyl_o.GetIdx()
        and any(m.GetAtomicNum() == 6 and not m.GetIsAromatic() for m in n.GetNeighbors())
    )
    conformer = mol.GetConformer()
    counts = {}
    for dihedral in (0.0, 180.0):  # H-O-C-C(aldehyde): 0 points the H at the carbonyl (the aldehyde's C=O
        # points the same way in MMFF's minimum), 180 away from it
        rdMolTransforms.SetDihedralDeg(conformer, hydrogen, hydroxyl_o.GetIdx(), ring_c, towards, dihedral)
        aldehyde = next(n for n in mol.GetAtomWithIdx(towards).GetNeighbors() if not n.GetIsAromatic())
        carbonyl = next(n.GetIdx() for n in aldehyde.GetNeighbors() if n.GetAtomicNum() == 8)
        rdMolTransforms.SetDihedralDeg(conformer, carbonyl, aldehyde.GetIdx(), towards, ring_c, 0.0)
        counts[dihedral] = conformer_facts.intramolecular_hbonds(z, conformer.GetPositions())
    assert counts == {0.0: 1, 180.0: 0}


def test_on_request_properties_are_asked_only_when_named():
    mol = Chem.AddHs(Chem.MolFromSmiles("CCCCCCOc1ccccc1"))
    ids = list(AllChem.EmbedMultipleConfs(mol, numConfs=2, randomSeed=11))
    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    conformers = np.stack([mol.GetConformer(i).GetPositions() for i in ids])
    plain = conformer_values(z, conformers, np.zeros(2))
    assert not {"surface_area", "intramolecular_hbonds"} & set(plain[0])
    asked = conformer_values(z, conformers, np.zeros(2), ["surface_area", "intramolecular_hbonds"])
    for entry, positions in zip(asked, conformers, strict=True):
        assert entry["surface_area"] == conformer_facts.surface_area(z, positions) > 0
        assert entry["intramolecular_hbonds"] == 0  # no donor
    assert ConformerQATask(ConformerQAConfig(), recipe=None).properties() == list(DEFAULT_PROPERTIES)
    assert not ConformerQAConfig(properties=["surface_area", "intramolecular_hbonds"]).problems()
    assert "unknown ['volume']" in ConformerQAConfig(properties=["volume"]).problems()[0]


def test_xtb_properties_come_from_the_datasets_per_conformer_values():
    z, conformers = np.array([8, 1, 1]), np.zeros((3, 3, 3))
    xtb = {
        "xtb_energy": np.array([-10.0, -10.5, np.nan]),  # eV; the third conformer's SCF failed
        "xtb_dipole": np.array([1.0, 2.0, np.nan]),
        "xtb_gap": np.array([5.0, 5.5, np.nan]),
    }
    values = conformer_values(z, conformers, np.zeros(3), ["xtb_relative_energy", "xtb_dipole"], xtb)
    assert [v.get("xtb_relative_energy") for v in values] == pytest.approx([0.5 * EV_TO_KCAL_PER_MOL, 0.0, None])
    assert [v.get("xtb_dipole") for v in values] == [1.0, 2.0, None]  # NaN: not asked
    assert "xtb_gap" not in values[0]  # not named
    with pytest.raises(MolbridgeError, match="per-conformer xTB values"):
        conformer_values(z, conformers, np.zeros(3), ["xtb_gap"])


def _task_scoring(examples):
    task = ConformerQATask(ConformerQAConfig(), recipe=None)
    task._means = {p: float(np.mean([float(e.response) for e in examples if e.task == p])) for p in {"rg"}}
    return task


def test_one_answer_per_molecule_scores_zero_and_exact_answers_one():
    # two molecules, 3 and 2 conformers, references differing within each
    references = {0: [4.0, 4.5, 5.5], 1: [3.0, 3.2]}
    examples = [
        Example(m, "q", f"{v:.2f}", "rg", conformer=k) for m, vs in references.items() for k, v in enumerate(vs)
    ]
    task = _task_scoring(examples)
    blind = ["4.1", "4.1", "4.1", "9.0", "9.0"]  # one answer per molecule, whatever it is
    metrics = task.score("test", examples, blind)
    # spread: |4 - 14/3|, |4.5 - 14/3|, |5.5 - 14/3|, 0.1, 0.1
    spread = np.mean([2 / 3, 1 / 6, 5 / 6, 0.1, 0.1])
    assert metrics["rg/molecule_mean_mae"] == pytest.approx(spread)
    assert metrics["rg/within_mae"] == metrics["rg/molecule_mean_mae"]
    assert metrics["conformer_skill"] == 0.0
    exact = task.score("test", examples, [e.response for e in examples])
    assert exact["rg/within_mae"] == pytest.approx(0.0, abs=1e-12) and exact["conformer_skill"] == pytest.approx(1.0)
    shifted = task.score("test", examples, [f"{float(e.response) + 7:.2f}" for e in examples])
    assert shifted["conformer_skill"] == pytest.approx(1.0)  # a molecule-level offset is not a conformer's error
    assert shifted["rg/mae"] == pytest.approx(7.0)


def test_a_molecule_with_a_conformer_unanswered_leaves_the_within_score():
    examples = [
        Example(m, "q", r, "rg", conformer=k)
        for m, rs in ((0, ["1.00", "2.00"]), (1, ["3.0", "5.0"]))
        for k, r in enumerate(rs)
    ]
    task = _task_scoring(examples)
    metrics = task.score("test", examples, ["1.0", "2.0", "no idea", "5.0"])
    assert metrics["rg/complete_rate"] == 0.5
    assert metrics["rg/within_mae"] == 0.0 and metrics["rg/molecule_mean_mae"] == 0.5
    assert metrics["conformer_skill"] == pytest.approx(0.5)  # exact on half the molecules: weighted by coverage


def test_the_construction_same_prompt_different_targets():
    """What the LLM reads besides the soft tokens is the same for every conformer of a molecule; the answers differ."""
    task = ConformerQATask(ConformerQAConfig(), recipe=None)
    task._molecule_splits = {"test": MoleculeDataset.from_split("molbridge-mini", "test", "scaffold", limit=40)}
    examples = task.examples("test")
    by_question = {}
    for e in examples:
        by_question.setdefault((e.molecule, e.task), []).append(e)
    assert len(by_question) > 20
    differing = 0
    for asked in by_question.values():
        assert len(asked) >= 2 and len({e.instruction for e in asked}) == 1
        assert [e.conformer for e in asked] == sorted({e.conformer for e in asked})  # each conformer once
        differing += len({e.response for e in asked}) > 1
    assert differing / len(by_question) > 0.8
    first = by_question[next(iter(by_question))]
    items = [ExampleDataset(task.molecules["test"], first).item(e) for e in first]  # what the encoder reads
    assert len({item["smiles"] for item in items}) == 1
    assert not np.allclose(items[0]["positions"], items[1]["positions"])


def test_spread_is_the_mean_distance_over_the_mean_norm():
    rows = torch.tensor([[[3.0, 0.0]], [[0.0, 4.0]], [[0.0, 4.0]]])  # (molecules, tokens, dim)
    # distances 5, 5, 0; norms 3, 4, 4
    assert spread(rows) == pytest.approx((10 / 3) / (11 / 3))
    assert spread(torch.ones(4, 8, 16)) == 0.0


def test_a_run_writes_items_that_compare_reads(tmp_cwd, capsys, monkeypatch):
    monkeypatch.setenv("MOLBRIDGE_CACHE", str(tmp_cwd / "cache"))
    args = [
        "run",
        "conformer_qa",
        "--encoder",
        "smiles",
        "train.max_steps=2",
        "train.warmup_steps=0",
        "train.init_from=null",
    ]
    assert main([*args, "data.limit=32", "data.eval_limit=30", "data.eval_batch_size=16"]) == 0
    capsys.readouterr()
    (run,) = (tmp_cwd / "runs" / "conformer_qa-molbridge-mini").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    items = json.loads((run / "items-test.json").read_text())
    answers = [json.loads(line) for line in (run / "answers-test.jsonl").read_text().splitlines()]
    assert len(items["ids"]) == len(answers) > 0
    assert {a["task"] for a in answers} == {"radius_of_gyration", "max_distance", "relative_energy"}
    assert all(isinstance(a["conformer"], int) for a in answers)
    assert "test/conformer_skill" in metrics
    # a model that reads only the SMILES finds every answer equally likely under all conformers of a molecule
    assert metrics["test/conformer_choice_acc"] == pytest.approx(metrics["test/conformer_choice_chance"], abs=1e-12)
    assert 0.2 < metrics["test/conformer_choice_chance"] <= 0.5
    # and hands the LLM the same soft tokens for them, different ones for different molecules
    assert metrics["test/spread/encoder_conformers"] == metrics["test/spread/soft_tokens_conformers"] == 0.0
    assert metrics["test/spread/encoder"] > 0.01 and metrics["test/spread/soft_tokens"] > 0.001
    assert len([v for v in items["values"]["radius_of_gyration/choice_acc"] if v is not None]) > 10
    assert main(["compare", "--experiment", "conformer_qa-molbridge-mini", "--aggregate"]) == 0
    assert "test/conformer_skill" in capsys.readouterr().out
