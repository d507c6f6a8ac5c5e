"""benchmarks/conformer_order_transfer.py: a finished conformer_order run, rebuilt and scored again, reproduces its
own test figure; paired with itself it differs by nothing; scored on a dataset it was not trained on it orders that
dataset's pairs."""

import json
import re

import pytest

from molbridge.core.cli import main
from molbridge.core.data.mini import build_mini
from molbridge.core.errors import CheckpointError

TINY = [
    "data.limit=24",
    "data.eval_limit=12",
    "data.batch_size=8",
    "data.eval_batch_size=16",
    "train.max_steps=3",
    "train.warmup_steps=0",
    "train.eval_every=1",  # a best checkpoint on validation besides the last, which the test figures come from
    "tracking.enabled=false",
    "task.facts=[radius_of_gyration,max_distance]",
]


@pytest.fixture(scope="module")
def order_run(tmp_path_factory):
    where = tmp_path_factory.mktemp("order")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(where)
        assert main(["run", "conformer_order", "--encoder", "schnet", *TINY]) == 0
    (run,) = (where / "runs" / "conformer_order-molbridge-mini").iterdir()
    return run


def test_rescoring_a_run_reproduces_its_test_figures(order_run, benchmark_script, tmp_path):
    transfer = benchmark_script("conformer_order_transfer")
    steps = sorted(p.name for p in (order_run / "checkpoints").glob("step-*"))
    assert transfer.evaluated_state(order_run) == order_run / "checkpoints" / steps[-1] / "state.ckpt"
    out = transfer.main([str(order_run), "--json", str(tmp_path / "t.json")])
    assert json.loads((tmp_path / "t.json").read_text()) == out
    logged = json.loads((order_run / "metrics.json").read_text())["metrics"]
    for fact in ("radius_of_gyration", "max_distance"):
        row = out["data"]["None"][f"order_acc/{fact}"]["configurations"][str(order_run)]
        assert row["mean"] == pytest.approx(logged[f"test/order_acc/{fact}"], abs=1e-12)
        assert row["per_seed"] == [row["mean"]]
        assert row["interval"][0] <= row["mean"] <= row["interval"][1]


def test_a_run_scores_another_build_of_its_molecules(order_run, benchmark_script, tmp_path):
    """The shipped copy's run on a 40-molecule build with up to 10 conformers: its own test molecules, paired with
    itself (difference exactly 0), ordered by the encoder it trained."""
    build_mini(tmp_path / "c10", limit=40, workers=1, progress=False, conformers=10)
    transfer = benchmark_script("conformer_order_transfer")
    found = transfer.score(order_run, str(tmp_path / "c10"))
    assert found["ids"] and set(found["values"]) == {"order_acc/radius_of_gyration", "order_acc/max_distance"}
    table = transfer.compare({"a": [found], "b": [found]})
    for result in table.values():
        row = result["configurations"]["b"]
        assert row["minus_first"] == [0.0, 0.0, 0.0] and row["verdict"] == "not distinguishable"
        assert 0.0 <= row["mean"] <= 1.0 and row["seeds"] == "paired by seed"
    shifted = {**found, "ids": found["ids"][1:]}
    with pytest.raises(SystemExit, match="different test molecules"):
        transfer.compare({"a": [found], "b": [shifted]})


def test_only_conformer_order_runs_are_scored(tmp_cwd, benchmark_script):
    tiny = ["data.limit=8", "data.eval_limit=4", "data.batch_size=4", "train.max_steps=1", "train.warmup_steps=0"]
    assert main(["run", "retrieval", "--encoder", "schnet", "tracking.enabled=false", *tiny]) == 0
    (run,) = (tmp_cwd / "runs" / "retrieval-molbridge-mini").iterdir()
    with pytest.raises(CheckpointError, match="a 'retrieval' run; this scores conformer_order runs"):
        benchmark_script("conformer_order_transfer").score(run, None)


def test_a_checkpoint_that_does_not_fit_its_recipe_names_the_tensors(order_run, benchmark_script):
    """The rebuild that bench ask and this script share (core.ask.rebuild_model): a recipe asking one fact of weights
    that score two fails naming the tensor and both shapes."""
    from molbridge.core.ask import checkpoint_recipe, rebuild_model
    from molbridge.core.plugins import get_registry

    registry = get_registry()
    state = benchmark_script("conformer_order_transfer").evaluated_state(order_run)
    recipe = checkpoint_recipe(state, registry)
    recipe.task.facts = ["radius_of_gyration"]
    task = registry.build("task", recipe.task, recipe=recipe, registry=registry)
    message = (
        rf"{re.escape(str(state))} does not fit the model its recipe.yaml builds:\n  size mismatch for "
        r"order_head.weight: .*torch.Size\(\[2, \d+\]\) from checkpoint.*torch.Size\(\[1, \d+\]\)"
    )
    with pytest.raises(CheckpointError, match=message):
        rebuild_model(state, recipe, task, registry)
