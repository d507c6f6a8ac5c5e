"""Conformer retrieval: facts read from coordinates, captions that tell conformers apart, and a 1D model at chance."""

import json

import numpy as np
import pytest
import torch
from rdkit import Chem
from rdkit.Chem import AllChem, rdMolDescriptors

from molbridge.core.cli import main
from molbridge.core.data.conformer_facts import conformer_captions, conformer_facts
from molbridge.core.errors import MolbridgeError
from molbridge.core.recipe import load_recipe
from molbridge.plugins.tasks.conformer_retrieval import ConformerCaptions, ConformerRetrievalTask, caption_credit


def test_facts_match_rdkit_on_a_real_conformer():
    mol = Chem.AddHs(Chem.MolFromSmiles("CC(=O)Oc1ccccc1C(=O)O"))  # aspirin
    AllChem.EmbedMolecule(mol, randomSeed=7)
    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    xyz = mol.GetConformer().GetPositions()
    facts = conformer_facts(z, xyz)
    assert facts.radius_of_gyration == pytest.approx(rdMolDescriptors.CalcRadiusOfGyration(mol), abs=1e-6)
    assert facts.npr == pytest.approx((rdMolDescriptors.CalcNPR1(mol), rdMolDescriptors.CalcNPR2(mol)), abs=1e-6)
    heavy = xyz[z > 1]
    assert facts.max_distance == pytest.approx(max(np.linalg.norm(a - b) for a in heavy for b in heavy))


def test_captions_rank_conformers_by_radius():
    facts = [conformer_facts(np.array([6, 6, 6]), np.array([[0, 0, 0], [d, 0, 0], [0, d, 0]])) for d in (2.0, 1.0, 3.0)]
    captions = conformer_captions(facts)
    assert captions[1].startswith("The most compact of 3")
    assert captions[0].startswith("The second most compact of 3")
    assert captions[2].startswith("The most extended of 3")


def test_the_construction_same_smiles_different_targets():
    """Every molecule with several conformers: one SMILES, one caption per conformer, all different."""
    data = ConformerCaptions.from_split("molbridge-mini", "test", "scaffold", augment=False, limit=60)
    several = [i for i, count in enumerate(data.conformer_counts()) if count > 1]
    assert len(several) > 10
    for i in several:
        items = [data.item(i, k) for k in range(data.conformer_counts()[i])]
        assert len({item["smiles"] for item in items}) == 1
        assert len({item["text"] for item in items}) == len(items)
    training = ConformerCaptions.from_split("molbridge-mini", "train", "scaffold", augment=True, limit=8)
    group = training[0]  # a training sample: every conformer of the molecule, captioned
    assert isinstance(group, list) and [item["conformer"] for item in group] == list(range(len(group)))


def test_energy_captions_state_each_conformers_energy_above_the_lowest():
    data = ConformerCaptions.from_split(
        "molbridge-mini", "test", "scaffold", augment=False, limit=60, text_field="conformer_energy"
    )
    plain = ConformerCaptions.from_split("molbridge-mini", "test", "scaffold", augment=False, limit=60)
    several = [i for i, count in enumerate(data.conformer_counts()) if count > 1]
    for i in several:
        mol = data.store[int(data.indices[i])]
        for k in range(len(mol.conformers)):
            text, without = data.item(i, k)["text"], plain.item(i, k)["text"]
            above = mol.mmff_energy[k] - np.nanmin(mol.mmff_energy)
            # the same caption, its energy clause added before the full stop
            assert text == without[:-1] + f", {above:.1f} kcal/mol above the lowest conformer (MMFF94)."
    lowest = [data.item(i, int(np.nanargmin(data.store[int(data.indices[i])].mmff_energy)))["text"] for i in several]
    assert all(", 0.0 kcal/mol above" in text for text in lowest)
    recipe = load_recipe("conformer_retrieval", ["task.text_field=description"])
    with pytest.raises(MolbridgeError, match="one of conformer, conformer_energy"):
        ConformerRetrievalTask(recipe.task, recipe)


def test_credit_is_shared_by_conformers_tied_at_the_top():
    assert caption_credit(torch.eye(3)) == [1.0, 1.0, 1.0]
    assert caption_credit(torch.ones(3, 3)) == pytest.approx([1 / 3] * 3)
    noisy = torch.ones(2, 2) + torch.tensor([[0.0, 1e-7], [1e-7, 0.0]])  # one representation, float noise
    assert caption_credit(noisy) == [0.5, 0.5]
    assert caption_credit(torch.tensor([[0.0, 1.0], [1.0, 0.0]])) == [0.0, 0.0]


def test_a_smiles_model_is_at_chance_and_compare_gives_the_interval(tmp_cwd, capsys, monkeypatch):
    monkeypatch.setenv("MOLBRIDGE_CACHE", str(tmp_cwd / "cache"))
    args = ["run", "conformer_retrieval", "--encoder", "smiles", "train.max_steps=2", "train.warmup_steps=0"]
    assert main([*args, "train.eval_every=0", "data.limit=32", "data.eval_limit=40", "data.eval_batch_size=16"]) == 0
    capsys.readouterr()
    (run,) = (tmp_cwd / "runs" / "conformer_retrieval-molbridge-mini").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    assert metrics["test/conformer_acc"] == pytest.approx(metrics["test/conformer_chance"], abs=1e-12)
    assert metrics["test/conformer_skill"] == pytest.approx(0.0, abs=1e-9)
    items = json.loads((run / "items-test.json").read_text())
    assert len(items["ids"]) == metrics["test/conformer_captions"] == len(items["values"]["conformer_acc"])
    assert main(["compare", "--experiment", "conformer_retrieval-molbridge-mini", "--aggregate"]) == 0
    out = capsys.readouterr().out
    assert "test/conformer_acc" in out and "95%" in out
