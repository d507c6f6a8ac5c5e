"""MLflow tracking written by a run and read back; ``bench compare`` over the logged runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from molbridge.core.cli import main
from molbridge.core.compare import gather_runs, render
from molbridge.core.errors import MolbridgeError
from molbridge.core.identity import identify
from molbridge.core.recipe import find_recipe, load_recipe
from molbridge.core.tracking import CONFIG_TAG, CONTINUES_TAG, RUN_ID_FILE, NullTracker, default_uri, start_run


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


def _start(recipe, registry, out, **options):
    return start_run(recipe, registry, out, identify(recipe, registry), **options)


def test_run_is_logged_and_read_back(toy_registry, tmp_cwd, recipe_file):
    recipe = _recipe(recipe_file, toy_registry, "seed=3", "train.lr=0.01")
    tracker = _start(recipe, toy_registry, tmp_cwd / "out", resume=False)
    tracker.log_metrics({"train/loss": 0.5, "train/bad": float("nan")}, step=2)
    tracker.log_summary({"test/mse": 0.25, "best/valid/mse": 0.2})
    tracker.finish()

    client = MlflowClient(default_uri())
    run = client.get_run(tracker.run_id)
    identity = identify(recipe, toy_registry)
    assert run.info.run_name == f"none-none-none-s3-{identity.hash}" and run.info.status == "FINISHED"
    assert run.data.tags[CONFIG_TAG] == identity.hash
    assert client.get_experiment(run.info.experiment_id).name == "toy-regression-molbridge-mini"
    assert run.data.params["train.lr"] == "0.01" and run.data.params["data.batch_size"] == "8"
    assert run.data.tags["task"] == "toy-regression" and run.data.tags["seed"] == "3"
    assert run.data.tags["plugin.task"] == "toy_plugin"
    assert run.data.metrics == {"train/loss": 0.5, "test/mse": 0.25, "best/valid/mse": 0.2}
    assert [a.path for a in client.list_artifacts(tracker.run_id)] == ["recipe.yaml"]
    assert (tmp_cwd / "out" / RUN_ID_FILE).read_text().strip() == tracker.run_id


def test_a_table_of_glob_keys_is_one_param_as_it_is_overridden(toy_registry, tmp_cwd, recipe_file):
    recipe = _recipe(recipe_file, toy_registry, "train.lr_scale={head.*: 0.1, encoder.0.*: 0.5}")
    tracker = _start(recipe, toy_registry, tmp_cwd / "out", resume=False)
    tracker.finish()
    params = MlflowClient(default_uri()).get_run(tracker.run_id).data.params
    assert params["train.lr_scale"] == str({"head.*": 0.1, "encoder.0.*": 0.5})
    assert not [key for key in params if key.startswith("train.lr_scale.")]
    assert identify(recipe, toy_registry).hash != identify(_recipe(recipe_file, toy_registry), toy_registry).hash


def test_resume_reopens_the_same_run(toy_registry, tmp_cwd, recipe_file):
    recipe = _recipe(recipe_file, toy_registry)
    first = _start(recipe, toy_registry, tmp_cwd / "out", resume=False)
    first.finish("KILLED")
    again = _start(recipe, toy_registry, tmp_cwd / "out", resume=True)
    assert again.run_id == first.run_id
    assert MlflowClient(default_uri()).get_run(again.run_id).info.status == "RUNNING"


def test_a_finished_run_is_never_reopened_a_continuation_points_back(toy_registry, tmp_cwd, recipe_file):
    recipe = _recipe(recipe_file, toy_registry)
    first = _start(recipe, toy_registry, tmp_cwd / "out", resume=False)
    first.finish("FINISHED")
    later = _start(recipe, toy_registry, tmp_cwd / "out", resume=True, continued={"train.max_steps": [4, 8]})
    client = MlflowClient(default_uri())
    assert later.run_id != first.run_id and client.get_run(first.run_id).info.status == "FINISHED"
    tags = client.get_run(later.run_id).data.tags
    assert tags[CONTINUES_TAG] == first.run_id and json.loads(tags["molbridge.resume_changes"]) == {
        "train.max_steps": [4, 8]
    }


def test_disabled_tracking_is_a_null_tracker(toy_registry, tmp_cwd, recipe_file):
    tracker = _start(
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
    digest = identify(_recipe(recipe_file, toy_registry), toy_registry).hash  # the seeds share the configuration
    s1, s0 = f"none-none-none-s1-{digest}", f"none-none-none-s0-{digest}"
    assert [r.name for r in rows] == [s1, s0]
    assert all(any(k.startswith("test/") for k in r.metrics) for r in rows)
    table = render(rows)
    assert table.splitlines()[0] == f"|  | {s1} | {s0} |"
    assert "| seed | 1 | 0 |" in table

    assert main(["compare", "--task", "toy-regression", "seed=1", "--format", "json"]) == 0
    (only,) = json.loads(capsys.readouterr().out)
    assert only["name"] == s1 and only["identity"]["seed"] == "1"
    assert main(["compare", "--task", "toy-regression", "--format", "csv"]) == 0
    assert capsys.readouterr().out.startswith(f",{s1},{s0}")


def test_compare_names_the_experiments_that_exist(toy_registry, tmp_cwd, recipe_file):
    _start(_recipe(recipe_file, toy_registry), toy_registry, tmp_cwd / "out", resume=False).finish()
    with pytest.raises(MolbridgeError, match="no MLflow experiment retrieval-x.*toy-regression-molbridge-mini"):
        gather_runs(experiments=["retrieval-x"])


@pytest.mark.slow
def test_four_runs_started_at_once_in_a_fresh_directory_all_finish(tmp_path):
    """The first runs in a new directory create and migrate mlflow.db concurrently: under the store's lock
    they all finish, and bench compare sees every one."""
    helper = Path(__file__).resolve().parent / "ddp_run.py"  # one run of the toy task per process
    processes = []
    for seed in range(4):
        recipe = tmp_path / f"toy{seed}.yaml"
        recipe.write_text(
            f"recipe: toy\nseed: {seed}\ntask:\n  name: toy-regression\n  size: 16\ndata:\n  batch_size: 8\n"
            "train:\n  max_steps: 2\n  accelerator: cpu\n"
        )
        processes.append(
            subprocess.Popen(
                [sys.executable, str(helper), str(recipe), f"out{seed}"],
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
        )
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0 and "finished: completed" in out, err[-2000:]
    rows = gather_runs(task="toy-regression", uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert sorted(r.identity["seed"] for r in rows) == ["0", "1", "2", "3"]
    assert {r.status for r in rows} == {"FINISHED"}
