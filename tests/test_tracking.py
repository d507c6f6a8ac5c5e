"""MLflow tracking written by a run and read back; ``bench compare`` over the logged runs."""

import json

import pytest
from mlflow import MlflowClient

from molbridge.core.cli import main
from molbridge.core.compare import gather_runs, render
from molbridge.core.errors import MolbridgeError
from molbridge.core.recipe import find_recipe, load_recipe
from molbridge.core.tracking import RUN_ID_FILE, NullTracker, default_uri, start_run


@pytest.fixture
def recipe_file(tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text(
        "recipe: toy\ntask:\n  name: toy-regression\ndata:\n  batch_size: 8\n"
        "train:\n  max_steps: 4\n  accelerator: cpu\n"
    )
    return path


def _recipe(path, registry, *overrides):
    return load_recipe(find_recipe(path), list(overrides), registry=registry)


def test_run_is_logged_and_read_back(toy_registry, tmp_cwd, recipe_file):
    recipe = _recipe(recipe_file, toy_registry, "seed=3", "train.lr=0.01")
    tracker = start_run(recipe, toy_registry, tmp_cwd / "out", resume=False)
    tracker.log_metrics({"train/loss": 0.5, "train/bad": float("nan")}, step=2)
    tracker.log_summary({"test/mse": 0.25, "best/valid/mse": 0.2})
    tracker.finish()

    client = MlflowClient(default_uri())
    run = client.get_run(tracker.run_id)
    assert run.info.run_name == "none-none-none-s3" and run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "toy-regression-molbridge-mini"
    assert run.data.params["train.lr"] == "0.01" and run.data.params["data.batch_size"] == "8"
    assert run.data.tags["task"] == "toy-regression" and run.data.tags["seed"] == "3"
    assert run.data.tags["plugin.task"] == "toy_plugin"
    assert run.data.metrics == {"train/loss": 0.5, "test/mse": 0.25, "best/valid/mse": 0.2}
    assert [a.path for a in client.list_artifacts(tracker.run_id)] == ["recipe.yaml"]
    assert (tmp_cwd / "out" / RUN_ID_FILE).read_text().strip() == tracker.run_id


def test_resume_reopens_the_same_run(toy_registry, tmp_cwd, recipe_file):
    recipe = _recipe(recipe_file, toy_registry)
    first = start_run(recipe, toy_registry, tmp_cwd / "out", resume=False)
    first.finish("KILLED")
    again = start_run(recipe, toy_registry, tmp_cwd / "out", resume=True)
    assert again.run_id == first.run_id
    assert MlflowClient(default_uri()).get_run(again.run_id).info.status == "RUNNING"


def test_disabled_tracking_is_a_null_tracker(toy_registry, tmp_cwd, recipe_file):
    tracker = start_run(
        _recipe(recipe_file, toy_registry, "tracking.enabled=false"), toy_registry, tmp_cwd / "out", resume=False
    )
    assert type(tracker) is NullTracker and not (tmp_cwd / "mlflow.db").exists()


def test_compare_shows_runs_side_by_side_with_filters(toy_registry, tmp_cwd, recipe_file, monkeypatch, capsys):
    import molbridge.core.plugins as plugins

    monkeypatch.setattr(plugins, "default_plugins", lambda strict=None: type("L", (), {"registry": toy_registry}))
    for seed in (0, 1):
        assert main(["run", "toy-regression", "--recipe", str(recipe_file), "--seed", str(seed)]) == 0
    capsys.readouterr()

    rows = gather_runs(task="toy-regression")
    assert [r.name for r in rows] == ["none-none-none-s1", "none-none-none-s0"]
    assert all(any(k.startswith("test/") for k in r.metrics) for r in rows)
    table = render(rows)
    assert table.splitlines()[0] == "|  | none-none-none-s1 | none-none-none-s0 |"
    assert "| seed | 1 | 0 |" in table

    assert main(["compare", "--task", "toy-regression", "seed=1", "--format", "json"]) == 0
    (only,) = json.loads(capsys.readouterr().out)
    assert only["name"] == "none-none-none-s1" and only["identity"]["seed"] == "1"
    assert main(["compare", "--task", "toy-regression", "--format", "csv"]) == 0
    assert capsys.readouterr().out.startswith(",none-none-none-s1,none-none-none-s0")


def test_compare_names_the_experiments_that_exist(toy_registry, tmp_cwd, recipe_file):
    start_run(_recipe(recipe_file, toy_registry), toy_registry, tmp_cwd / "out", resume=False).finish()
    with pytest.raises(MolbridgeError, match="no MLflow experiment retrieval-x.*toy-regression-molbridge-mini"):
        gather_runs(experiments=["retrieval-x"])
