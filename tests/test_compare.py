"""``bench compare`` over runs logged straight to a temporary MLflow store (no training needed)."""

import csv
import io
import json

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from molbridge.core.cli import main
from molbridge.core.compare import RunRow, differing_params, gather_runs, render
from molbridge.core.errors import MolbridgeError
from molbridge.core.tracking import default_uri

EXPERIMENT = "retrieval-molbridge-mini"


def _log(client, experiment_id, encoder, *, lr, acc, seed="0"):
    tags = {
        "task": "retrieval",
        "dataset": "molbridge-mini",
        "encoder": encoder,
        "projector": "qformer",
        "llm": "none",
        "seed": seed,
        "recipe": "stage1",
    }
    run = client.create_run(experiment_id, run_name=f"{encoder}-qformer-none-s{seed}", tags=tags)
    metrics = [
        Metric("test/m2t_acc", acc, 0, 0),
        Metric("best/valid/m2t_acc", acc + 0.01, 0, 0),
        Metric("train/loss", 1.0, 0, 0),
    ]
    client.log_batch(run.info.run_id, metrics=metrics, params=[Param("train.lr", lr)])
    client.set_terminated(run.info.run_id)
    return run.info.run_id


@pytest.fixture
def store(tmp_cwd):
    """Three runs: an old and a new unimol run with the same name, and one schnet run."""
    client = MlflowClient(default_uri())
    experiment_id = client.create_experiment(EXPERIMENT)
    old = _log(client, experiment_id, "unimol", lr="0.001", acc=0.5)
    new = _log(client, experiment_id, "unimol", lr="0.0001", acc=0.9)
    _log(client, experiment_id, "schnet", lr="0.0001", acc=0.7)
    return {"old": old, "new": new}


def test_latest_keeps_the_newest_run_of_each_name(store):
    rows = gather_runs(experiments=[EXPERIMENT])
    assert [r.name for r in rows] == ["schnet-qformer-none-s0", "unimol-qformer-none-s0"]
    assert rows[1].run_id == store["new"] and rows[1].metrics["test/m2t_acc"] == 0.9
    assert len(gather_runs(experiments=[EXPERIMENT], latest=False)) == 3


def test_default_metrics_are_test_and_best_and_globs_select(store):
    (row, _) = gather_runs(task="retrieval", dataset="molbridge-mini")
    assert set(row.metrics) == {"test/m2t_acc", "best/valid/m2t_acc"}
    (row, _) = gather_runs(task="retrieval", metrics=("train/*",))
    assert set(row.metrics) == {"train/loss"}


def test_filters_match_tags_and_params(store):
    assert [r.name for r in gather_runs(task="retrieval", filters={"encoder": "schnet"})] == ["schnet-qformer-none-s0"]
    old = gather_runs(task="retrieval", filters={"train.lr": "0.001"}, latest=False)
    assert [r.run_id for r in old] == [store["old"]]
    with pytest.raises(MolbridgeError, match="matches the filters"):
        gather_runs(task="retrieval", filters={"encoder": "egnn"})


def test_markdown_puts_runs_side_by_side(store):
    table = render(gather_runs(task="retrieval")).splitlines()
    assert table[0] == "|  | schnet-qformer-none-s0 | unimol-qformer-none-s0 |"
    assert "| encoder | schnet | unimol |" in table
    assert "| test/m2t_acc | 0.7 | 0.9 |" in table


def test_cli_renders_csv_and_json(store, capsys):
    assert main(["compare", "--task", "retrieval", "--format", "csv"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == ["", "schnet-qformer-none-s0", "unimol-qformer-none-s0"]
    assert ["projector", "qformer", "qformer"] in rows

    assert main(["compare", "--experiment", EXPERIMENT, "encoder=unimol", "--no-latest", "--format", "json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert {r["run_id"] for r in runs} == {store["old"], store["new"]}
    assert all(r["identity"]["encoder"] == "unimol" for r in runs)


def test_cli_reports_bad_filters_and_missing_experiments(store, capsys):
    assert main(["compare", "--task", "retrieval", "encoder"]) == 2
    assert "not key=value" in capsys.readouterr().err
    assert main(["compare", "--task", "captioning"]) == 2
    assert EXPERIMENT in capsys.readouterr().err


def test_gather_runs_pages_through_every_run(tmp_path, monkeypatch):
    """No 1,000-run ceiling: search_runs is followed page by page (here with pages of 2)."""
    from mlflow import MlflowClient

    from molbridge.core import compare

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("toy-regression-paged")
    for seed in range(5):
        run = client.create_run(
            experiment,
            run_name=f"none-none-none-s{seed}-abcdef",
            tags={"seed": str(seed), "molbridge.config": "abcdef"},
        )
        client.log_metric(run.info.run_id, "test/mse", float(seed))
    monkeypatch.setattr(compare, "PAGE", 2)
    rows = compare.gather_runs(experiments=["toy-regression-paged"], uri=uri)
    assert sorted(r.identity["seed"] for r in rows) == ["0", "1", "2", "3", "4"]
    (group,) = compare.group_runs(rows)  # one configuration hash: one group of five seeds
    assert len(group.runs) == 5


def test_filters_go_before_and_after_options(store, capsys):
    assert main(["compare", "encoder=unimol", "--no-latest", "train.lr=0.001", "--format", "json"]) == 0
    assert [r["run_id"] for r in json.loads(capsys.readouterr().out)] == [store["old"]]


def test_how_often_a_run_saves_or_logs_is_not_a_difference_between_runs():
    params = [
        {"train.lr": "0.1", "train.checkpoint_every": "0", "seed": "0"},
        {"train.lr": "0.2", "train.checkpoint_every": "200", "seed": "1", "tracking.uri": "sqlite:///elsewhere.db"},
    ]
    rows = [RunRow(f"run{i}", f"id{i}", EXPERIMENT, "FINISHED", 0, {}, params=p) for i, p in enumerate(params)]
    assert differing_params(rows) == ["train.lr"]
