"""The ``conformer_order`` task: pair labels from the dataset's facts, seeded pairs, the ordering metric, chance
for a model blind to coordinates by construction, the loss falling through the one loop, and a later stage
starting from its encoder by ``train.init_from``."""

import json

import numpy as np
import pytest
import torch

from molbridge.core import batch as keys
from molbridge.core import checkpoint
from molbridge.core.cli import main
from molbridge.core.errors import RecipeError
from molbridge.core.plugins import get_registry
from molbridge.core.recipe import load_recipe
from molbridge.core.registry import build_components
from molbridge.core.runner import run
from molbridge.core.testing import TASK_CHECK_OVERRIDES, check_task
from molbridge.plugins.tasks.conformer_order import KNOWN, LARGER, pairs_ordered_right
from molbridge.plugins.tasks.conformer_qa import value_table

SMALL = [
    "data.limit=48",
    "data.eval_limit=40",
    "data.batch_size=8",
    "data.eval_batch_size=16",
    "tracking.enabled=false",
]


def build(encoder="unimol", overrides=()):
    registry = get_registry()
    recipe = load_recipe("conformer_order", [*SMALL, *overrides], registry, {"encoder": encoder})
    task = registry.build("task", recipe.task, recipe=recipe, registry=registry)
    return task, task.build_model(build_components(recipe, registry))


def test_task_passes_its_contract_checks():
    check_task("conformer_order", overrides=[*TASK_CHECK_OVERRIDES, "data.limit=16"])


def test_pairs_are_scored_by_agreement_with_ties_half_and_equal_values_skipped():
    scores, values = np.array([1.0, 2.0, 3.0]), np.array([10.0, 30.0, 20.0])
    assert pairs_ordered_right(scores, values).tolist() == [1.0, 1.0, 0.0]  # (0,1), (0,2) right; (1,2) wrong
    assert pairs_ordered_right(np.array([5.0, 5.0]), np.array([1.0, 2.0])).tolist() == [0.5]  # tied scores
    assert len(pairs_ordered_right(np.array([1.0, 2.0]), np.array([4.0, 4.0]))) == 0  # nothing to order
    assert pairs_ordered_right(np.array([1.0, 2.0, 3.0]), np.array([1.0, np.nan, 3.0])).tolist() == [1.0]


def test_training_pairs_are_two_conformers_labelled_by_the_datasets_facts_and_seeded():
    task, _ = build(overrides=["task.facts=[relative_energy,radius_of_gyration]"])
    data = task.datasets()["train"]
    assert len(data) > 0
    for i in range(len(data)):
        first, second = data[i]
        assert first[keys.MOL_ID] == second[keys.MOL_ID] and first["conformer"] != second["conformer"]
        row = int(data.molecules.indices[data.kept[i]])
        table = value_table(data.molecules.store, row, ["relative_energy", "radius_of_gyration"])
        a, b = table[first["conformer"]], table[second["conformer"]]
        expected = np.where(a == b, 0.5, (a > b).astype(float))
        known = first[KNOWN]
        assert known.tolist() == (np.isfinite(a) & np.isfinite(b)).tolist()
        assert np.allclose(first[LARGER][known], expected[known])
    again = task.datasets()["train"][0]
    assert [c["conformer"] for c in again] == [c["conformer"] for c in data[0]]  # a seeded draw, not a random one
    draws = set()
    for epoch in range(6):
        data.set_epoch(epoch)
        draws.add(tuple(sorted(c["conformer"] for c in data[0])))
    assert len(draws) > 1 or len(data.values[0]) == 2  # a molecule of three conformers gets other pairs


def test_a_model_blind_to_coordinates_orders_no_pair_and_scores_exactly_chance(tmp_path):
    from lightning_fabric import Fabric

    task, model = build("smiles")
    metrics = task.evaluate(model, Fabric(accelerator="cpu", devices=1), "test")
    assert metrics["order_molecules/relative_energy"] > 0
    assert metrics["order_acc"] == 0.5  # one representation per molecule: every pair a tie, half credit
    (path,) = task.write_outputs(tmp_path)
    items = json.loads(path.read_text())
    values = [v for v in items["values"]["order_acc/relative_energy"] if v is not None]
    assert (
        values
        and all(v == 0.5 for v in values)
        and len(items["ids"]) == len(items["values"]["order_acc/relative_energy"])
    )


def test_a_3d_encoder_gives_the_conformers_of_one_molecule_different_scores():
    task, model = build("unimol")
    data = task.datasets()["test"]
    model.eval()
    with torch.no_grad():
        scores = model(task._inputs(data.conformers(0)))
    assert scores.shape == (len(data.values[0]), 1) and len(set(scores[:, 0].tolist())) == len(scores)


def test_recipe_rejects_an_unknown_fact_by_name():
    with pytest.raises(RecipeError, match="unknown \\['energy'\\]"):
        load_recipe("conformer_order", ["task.facts=[energy]"], get_registry())


def test_loss_falls_on_the_radius_of_gyration_through_the_one_loop(tmp_cwd):
    overrides = [
        *SMALL,
        "data.limit=128",
        "data.batch_size=16",
        "train.max_steps=60",
        "train.warmup_steps=0",
        "train.lr=1e-3",
        "train.eval_every=0",
        "task.facts=[radius_of_gyration]",
        "encoder.hydrogens=no_h",  # the heavy atoms carry the radius; fewer atoms learn it in few steps
    ]
    recipe = load_recipe("conformer_order", overrides, get_registry())
    losses: list[float] = []
    result = run(recipe, get_registry(), output=tmp_cwd / "out", callbacks=[Losses(losses)])
    assert result["status"] == "completed"
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) < 0.8, losses
    assert 0.5 < result["metrics"]["test/order_acc/radius_of_gyration"] <= 1.0


class Losses:
    def __init__(self, values):
        self.values = values

    def on_step_end(self, loop, step, logs):
        self.values.append(float(logs["loss"]))


@pytest.mark.slow
def test_conformer_qa_starts_from_its_encoder(tmp_cwd):
    common = [*SMALL, "train.max_steps=2", "train.warmup_steps=0", "encoder.hydrogens=all_h"]
    assert main(["run", "conformer_order", "--encoder", "unimol", *common]) == 0
    (order_run,) = [p.parent for p in (tmp_cwd / "runs").glob("conformer_order-*/*/metrics.json")]
    trained = torch.load(
        checkpoint.latest_checkpoint(order_run / "checkpoints") / checkpoint.STATE_FILE, weights_only=True
    )
    qa = [
        *common,
        "projector.num_layers=1",
        "train.init_from=stage:conformer_order",
        "task.properties=[relative_energy]",
    ]
    assert main(["run", "conformer_qa", "--encoder", "unimol", "--output", "qa", *qa]) == 0
    report = json.loads((tmp_cwd / "qa" / "metrics.json").read_text())["provenance"]["init_from"]
    assert report["loaded"] == sum(1 for name in trained["model"] if name.startswith("encoder."))
    assert set(report["unused"]) == {"order_head.weight", "order_head.bias"}
