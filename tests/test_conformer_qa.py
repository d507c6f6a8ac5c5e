"""Conformer QA: per-conformer values, and a score that a model blind to coordinates cannot move off zero."""

import json

import numpy as np
import pytest
import torch
from rdkit import Chem
from rdkit.Chem import AllChem, rdMolDescriptors

from molbridge.core.cli import main
from molbridge.core.data import MoleculeDataset
from molbridge.plugins.tasks.conformer_qa import ConformerQAConfig, ConformerQATask, conformer_values
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
