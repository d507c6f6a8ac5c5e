"""Conformer captions for stage 2: one caption per conformer, and a place score a blind model cannot beat."""

import json

import numpy as np
import pytest

from molbridge.core.cli import main
from molbridge.core.data import MoleculeDataset
from molbridge.core.data.conformer_facts import conformer_captions, conformer_facts, read_caption
from molbridge.plugins.tasks.captioning import CaptioningConfig, CaptioningTask, conformer_caption_metrics


def _captions(radii):
    z = np.array([6, 6, 6])
    return conformer_captions([conformer_facts(z, np.array([[0, 0, 0], [d, 0, 0], [0, d, 0]])) for d in radii])


def test_a_caption_reads_back():
    caption = _captions([2.0, 1.0, 3.0])[0]
    place, conformers, radius = read_caption(caption)
    assert place == "second most compact of 3 conformers" and conformers == 3
    assert radius == pytest.approx(float(caption.split("radius of gyration ")[1].split(" A")[0]))
    assert read_caption(_captions([1.0])[0])[:2] == ("only conformer", 1)
    assert read_caption("A molecule with two rings.") == (None, None, None)


def test_one_caption_for_every_conformer_is_right_once():
    references = _captions([2.0, 1.0, 3.0]) + _captions([1.5, 1.0])
    blind = [references[1]] * 3 + [references[3]] * 2  # the same caption for all conformers of a molecule
    metrics = conformer_caption_metrics(blind, references)
    assert metrics["place_chance"] == pytest.approx(np.mean([1 / 3] * 3 + [1 / 2] * 2))
    assert metrics["place_acc"] == pytest.approx(2 / 5)  # right for one conformer per molecule
    exact = conformer_caption_metrics(references, references)
    assert exact["place_acc"] == 1.0 and exact["conformer_rg_mae"] == 0.0 and exact["conformer_rg_valid"] == 1.0
    assert conformer_caption_metrics(["no facts here"] * 5, references)["place_acc"] == 0.0


def test_examples_caption_every_conformer_of_the_same_molecule():
    task = CaptioningTask(CaptioningConfig(text_field="conformer"), recipe=None)
    task._molecule_splits = {"test": MoleculeDataset.from_split("molbridge-mini", "test", "scaffold", limit=30)}
    examples = task.examples("test")
    by_molecule = {}
    for e in examples:
        by_molecule.setdefault(e.molecule, []).append(e)
    assert len(by_molecule) > 5 and task.every_conformer
    for asked in by_molecule.values():
        assert [e.conformer for e in asked] == list(range(len(asked))) and len(asked) > 1
        assert len({e.response for e in asked}) == len(asked)  # every conformer's caption differs
        # one prompt for all of them, which gives the count their captions state and nothing per conformer
        assert {e.instruction for e in asked} == {f"Describe this molecule. It has {len(asked)} conformers."}
        assert {read_caption(e.response).conformers for e in asked} == {len(asked)}
    task.config.conformer_count = False
    assert {e.instruction for e in task.examples("test")} == {"Describe this molecule."}


def test_a_run_scores_places(tmp_cwd, capsys, monkeypatch):
    monkeypatch.setenv("MOLBRIDGE_CACHE", str(tmp_cwd / "cache"))
    args = ["run", "captioning", "--encoder", "smiles", "task.text_field=conformer", "train.max_steps=2"]
    args += ["train.warmup_steps=0", "train.init_from=null", "data.limit=24", "data.eval_limit=12"]
    assert main([*args, "task.max_new_tokens=8", "train.eval_every=0"]) == 0
    (run,) = (tmp_cwd / "runs" / "captioning-molbridge-mini").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    answers = (run / "answers-test.jsonl").read_text().splitlines()
    assert 0 < metrics["test/place_chance"] < 1 and 0 <= metrics["test/place_acc"] <= 1
    assert "test/baseline_place_acc" in metrics
    assert len(answers) > 12  # every conformer of the molecules with several
