"""``bench compare --aggregate / --plots``: seeds aggregated, figures drawn, the report logged to a sweep's parent.

The MLflow store is filled directly with MlflowClient (no training): a retrieval sweep of 2 configurations x
2 seeds with metric histories and ranks artifacts, a run outside the sweep, and a qa configuration with
answers artifacts. The slow test at the end runs real retrieval training and compares it.
"""

import csv
import io
import json
import os
import statistics

import numpy as np
import pytest
from matplotlib.collections import PathCollection
from mlflow import MlflowClient
from mlflow.entities import Metric

from molbridge.core import plots
from molbridge.core.cli import main
from molbridge.core.compare import DEFAULT_METRICS, RunRow, gather_runs, group_runs, render_aggregate
from molbridge.core.compare_report import baseline_metric, parse_answers, sweep_parent, write_report
from molbridge.core.errors import MolbridgeError
from molbridge.plugins.tasks.numbers import parse_number

RETRIEVAL, QA = "retrieval-molbridge-mini", "qa-molbridge-mini"
CONFIGS = ("unimol-qformer-none", "schnet-linear-none")
# (configuration, seed) -> (test/full_m2t_acc, test/full_t2m_acc)
FINAL = {
    ("unimol-qformer-none", 0): (0.50, 0.40),
    ("unimol-qformer-none", 1): (0.70, 0.45),
    ("schnet-linear-none", 0): (0.20, 0.25),
    ("schnet-linear-none", 1): (0.30, 0.10),
}
N_MOLECULES = 10


def _parsed(task, reference, answer):
    """The numbers the qa task writes beside a numeric answer (plugins/tasks/qa.py QATask.parsed)."""
    if task == "Description":
        return {}
    return {"value": parse_number(answer), "target": parse_number(reference)}


ANSWERS = [  # (property, reference, answer of seed 0, answer of seed 1)
    ("LogP", "The LogP for the input molecule is 1.20.", "The LogP is 1.5.", "It is 0.9"),
    ("LogP", "The LogP for the input molecule is -0.40.", "I cannot tell.", "The LogP is -0.2."),
    (
        "Molecular Weight",
        "The Molecular Weight for the input molecule is 180.16 g/mol.",
        "About 170 g/mol.",
        "The value is 1.9e2",
    ),
    ("Description", "It is an acid with 2 rings.", "A molecule with 3 rings.", "An acid."),
]


def _log_run(client, experiment_id, name, tags, *, final=(), history=(), artifacts=(), folder=None):
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    run_id = run.info.run_id
    metrics = [Metric(key, value, 1000 + step, step) for key, step, value in history]
    metrics += [Metric(key, value, 10_000, 0) for key, value in final]  # final values: no step, logged last
    client.log_batch(run_id, metrics=metrics)
    for file_name, text in artifacts:
        path = folder / run_id / file_name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id)
    return run_id


def _ranks(seed: int, shift: int) -> str:
    rng = np.random.default_rng(seed + 10 * shift)

    def ranks(p):  # a good model has many small ranks; ranks may repeat between molecules
        return {d: np.minimum(rng.geometric(p, N_MOLECULES) - 1, N_MOLECULES - 1).tolist() for d in ("m2t", "t2m")}

    model, baseline = ranks(0.5 / (1 + shift)), ranks(0.15)
    return json.dumps(
        {"split": "test", "ids": [f"m{i}" for i in range(N_MOLECULES)], "model": model, "baseline": baseline}
    )


def _identity(task, config, seed, **extra):
    encoder, projector, llm = config.split("-")
    return {
        "task": task,
        "dataset": "molbridge-mini",
        "encoder": encoder,
        "projector": projector,
        "llm": llm,
        "seed": str(seed),
        "recipe": task,
        **extra,
    }


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The MLflow store (module scope: creating a sqlite store takes seconds); returns its URI and run ids."""
    root = tmp_path_factory.mktemp("compare-plots")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    retrieval = client.create_experiment(RETRIEVAL, artifact_location=str(root / "artifacts-r"))
    parent = client.create_run(
        retrieval, run_name="sweep-arch", tags={"sweep.name": "arch", "sweep.children": "4", "task": "retrieval"}
    ).info.run_id
    ids = {"parent": parent}
    for (config, seed), (m2t, t2m) in FINAL.items():
        shift = CONFIGS.index(config)
        final = [("test/full_m2t_acc", m2t), ("test/full_t2m_acc", t2m), ("best/valid/full_acc", (m2t + t2m) / 2)]
        final += [("test/only_seed0", 1.0 + shift)] if seed == 0 else []
        history = [("train/loss", step, 2.0 / step + shift + 0.1 * seed) for step in range(1, 6)]
        history += [("valid/full_acc", step, 0.1 * step + 0.05 * seed) for step in (2, 4)]
        tags = _identity("retrieval", config, seed, **{"mlflow.parentRunId": parent, "sweep.name": "arch"})
        ids[config, seed] = _log_run(
            client,
            retrieval,
            f"{config}-s{seed}",
            tags,
            final=final,
            history=history,
            artifacts=[("ranks-test.json", _ranks(seed, shift))],
            folder=root,
        )
    ids["outside"] = _log_run(
        client,
        retrieval,
        "egnn-qformer-none-s0",
        _identity("retrieval", "egnn-qformer-none", 0),
        final=[("test/full_m2t_acc", 0.1), ("test/full_t2m_acc", 0.1)],
    )
    qa = client.create_experiment(QA, artifact_location=str(root / "artifacts-q"))
    for seed in (0, 1):
        lines = [
            json.dumps(
                {
                    "id": f"m{i}",
                    "smiles": "C",
                    "task": prop,
                    "instruction": "?",
                    "reference": ref,
                    "answer": answers[seed],
                }
                | _parsed(prop, ref, answers[seed])
            )
            for i, (prop, ref, *answers) in enumerate(ANSWERS)
        ]
        final = [("test/LogP/mae", 0.3 + seed), ("test/Molecular Weight/mae", 10.0 - seed)]
        ids["qa", seed] = _log_run(
            client,
            qa,
            f"unimol-qformer-vicuna-s{seed}",
            _identity("qa", "unimol-qformer-vicuna", seed),
            final=final,
            artifacts=[("answers-test.jsonl", "\n".join(lines) + "\n")],
            folder=root,
        )
    return {"uri": uri, "ids": ids, "root": root}


def _sweep_rows(store):
    return gather_runs(experiments=[RETRIEVAL], filters={"sweep.name": "arch"}, metrics=("*",), uri=store["uri"])


# --- aggregation -------------------------------------------------------------------------------------------


def test_aggregate_is_mean_and_sample_std_over_seeds(store):
    groups = group_runs(_sweep_rows(store))
    assert [(g.config, g.seeds) for g in groups] == [
        ("schnet-linear-none", ["0", "1"]),
        ("unimol-qformer-none", ["0", "1"]),
    ]
    table = list(csv.DictReader(io.StringIO(render_aggregate(groups, "csv"))))
    for row in table:
        for i, metric in enumerate(("test/full_m2t_acc", "test/full_t2m_acc")):
            values = [FINAL[row["configuration"], seed][i] for seed in (0, 1)]
            assert float(row[f"{metric} mean"]) == pytest.approx(np.mean(values))
            assert float(row[f"{metric} std"]) == pytest.approx(np.std(values, ddof=1))
            assert row[f"{metric} n"] == "2"
        assert row["test/only_seed0 n"] == "1" and row["test/only_seed0 std"] == ""  # no std of one value
        assert (row["experiment"], row["seeds"], row["n"]) == (RETRIEVAL, "0 1", "2")


def test_aggregate_csv_columns_and_markdown_rows(store):
    groups = group_runs(_sweep_rows(store))
    header = next(csv.reader(io.StringIO(render_aggregate(groups, "csv"))))
    metrics = [
        "best/valid/full_acc",
        "test/full_m2t_acc",
        "test/full_t2m_acc",
        "test/only_seed0",
        "train/loss",
        "valid/full_acc",
    ]
    assert header == [
        "configuration",
        "experiment",
        "seeds",
        "n",
        *(f"{m} {part}" for m in metrics for part in ("mean", "std", "n")),
    ]
    markdown = render_aggregate(groups).splitlines()
    assert markdown[0].startswith("| configuration | seeds | n | best/valid/full_acc |")
    unimol = next(line for line in markdown if line.startswith("| unimol-qformer-none |"))
    std = statistics.stdev([0.5, 0.7])
    assert f"| 0.6 ± {std:.2g} |" in unimol and "| 1 (n=1) |" in unimol


def test_two_runs_of_one_name_are_not_two_seeds():
    row = RunRow("a-b-c-s0", "id1", "exp", "FINISHED", 0, {"seed": "0"}, {"test/x": 1.0})
    again = RunRow("a-b-c-s0", "id2", "exp", "FINISHED", 1, {"seed": "0"}, {"test/x": 2.0})
    with pytest.raises(MolbridgeError, match="a-b-c-s0 appears twice.*--no-latest"):
        group_runs([row, again])


# --- figures on synthetic data -------------------------------------------------------------------------


def test_bars_show_the_mean_per_configuration_and_a_point_per_seed():
    fig = plots.metric_bars({"a": [("0", 1.0), ("1", 2.0)], "b": [("0", 3.0)], "c": []}, "test/x", "caption x")
    (ax,) = fig.axes
    assert [p.get_height() for p in ax.patches] == [1.5, 3.0]  # no bar for c, which has no value
    points = [c for c in ax.collections if isinstance(c, PathCollection)]  # scatter, not error bars
    assert [len(c.get_offsets()) for c in points] == [2, 1]
    assert ax.get_title() and ax.get_xlabel() == "configuration" and ax.get_ylabel() == "test/x"
    assert ax.get_legend() is not None and plots.caption_of(fig) == "caption x"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]


def test_bars_draw_the_baseline_dashed_where_the_runs_logged_one():
    fig = plots.metric_bars({"a": [("0", 1.0)], "b": [("0", 3.0)]}, "test/x", "caption", baseline=2.5)
    (ax,) = fig.axes
    (line,) = ax.lines
    assert line.get_linestyle() == "--" and list(line.get_ydata()) == [2.5, 2.5]
    assert "baseline (2.5)" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert not plots.metric_bars({"a": [("0", 1.0)]}, "test/x", "caption").axes[0].lines


def test_a_metric_names_its_baseline_in_the_last_component():
    assert baseline_metric("test/bleu4") == "test/baseline_bleu4"
    assert baseline_metric("test/LogP/mae") == "test/LogP/baseline_mae"


def test_recall_at_k_counts_ranks_below_k():
    ranks = np.random.default_rng(0).integers(0, 30, size=25)
    assert np.allclose(plots.recall_at_k(ranks), [(ranks < k).mean() for k in range(1, 26)])


def test_recall_curves_draw_a_line_per_configuration_and_the_baseline():
    rng = np.random.default_rng(1)

    def run():
        return {"m2t": rng.permutation(8).tolist(), "t2m": rng.permutation(8).tolist()}

    a, b = [run(), run()], [run()]
    fig = plots.recall_curves({"a": a, "b": b}, "caption", baseline=[run(), run(), run()])
    assert len(fig.axes) == 2
    for ax, direction in zip(fig.axes, ("m2t", "t2m"), strict=True):
        assert [line.get_label() for line in ax.get_lines()] == ["a (n=2)", "b (n=1)", "fingerprint baseline (n=3)"]
        mean = np.mean([plots.recall_at_k(r[direction]) for r in a], axis=0)
        assert np.allclose(ax.get_lines()[0].get_ydata(), mean)
        assert ax.get_xscale() == "log" and ax.get_xlabel() and ax.get_title()
    assert fig.axes[0].get_legend() is not None


def test_training_curves_colour_runs_by_configuration():
    curves = [plots.Curve(c, f"{c} s{s}", [1, 2, 3], [3.0, 2.0, 1.0 + s]) for c in ("a", "b") for s in (0, 1)]
    fig = plots.training_curves(curves, "train/loss", "caption", ["a", "b"])
    lines = fig.axes[0].get_lines()
    assert len(lines) == 4
    assert lines[0].get_color() == lines[1].get_color() != lines[2].get_color() == lines[3].get_color()
    assert lines[0].get_linestyle() != lines[1].get_linestyle()


def test_parity_panels_have_the_identity_line_and_mae():
    data = {
        "LogP": plots.Parity([1.0, 2.0], [1.5, 2.0], ["0", "1"], unparsed=1),
        "Weight": plots.Parity([100.0], [90.0], ["0"]),
    }
    fig = plots.parity_plot(data, "title", "caption")
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 2
    assert "MAE 0.25 (n=2, 1 unparsed)" in visible[0].get_title()
    assert any(line.get_label() == "y = x" for line in visible[0].get_lines())


# --- the report and the CLI --------------------------------------------------------------------------------


def test_plots_for_a_sweep_are_written_and_logged_to_its_parent(store, tmp_path, capsys):
    out = tmp_path / "plots"
    assert main(["compare", "--uri", store["uri"], "--sweep", "arch", "--aggregate", "--plots", str(out)]) == 0
    printed = capsys.readouterr()
    assert printed.out.startswith("| configuration | seeds | n |") and "egnn" not in printed.out
    figures = {
        "bars-test_full_m2t_acc.png",
        "bars-test_full_t2m_acc.png",
        "recall-test.png",
        "curve-train_loss.png",
        "curve-valid_full_acc.png",
    }
    tables = {"runs.md", "runs.csv", "aggregate.md", "aggregate.csv"}
    assert {p.name for p in out.iterdir()} == figures | tables | {"README.md"}
    for name in figures:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / name).stat().st_size > 10_000
    index = (out / "README.md").read_text()
    assert all(f"![{name[:-4]}]({name})" in index for name in figures)
    assert "unimol-qformer-none (seeds 0, 1)" in index
    logged = MlflowClient(store["uri"]).list_artifacts(store["ids"]["parent"], "compare")
    assert {a.path for a in logged} == {f"compare/{n}" for n in figures | tables | {"README.md"}}
    assert f"sweep's parent run {store['ids']['parent']}" in printed.err


def test_runs_from_outside_a_sweep_are_logged_only_where_asked(store, tmp_path, capsys):
    rows = gather_runs(experiments=[RETRIEVAL], uri=store["uri"])
    assert sweep_parent(rows) is None  # the egnn run has no parent: nowhere to log by default
    assert sweep_parent([r for r in rows if r.parent_run_id]) == store["ids"]["parent"]
    target = store["ids"]["outside"]
    assert (
        main(
            [
                "compare",
                "--uri",
                store["uri"],
                "--experiment",
                RETRIEVAL,
                "--plots",
                str(tmp_path),
                "--plot-metrics",
                "test/full_m2t_acc",
                "--log-to",
                target,
            ]
        )
        == 0
    )
    assert "compare/README.md" in {a.path for a in MlflowClient(store["uri"]).list_artifacts(target, "compare")}
    assert "note: no Recall@k curve for egnn-qformer-none-s0" in capsys.readouterr().err


def test_parity_plots_leave_out_answers_without_a_number(store, tmp_path):
    rows = gather_runs(experiments=[QA], metrics=("*",), uri=store["uri"])
    report = write_report(rows, tmp_path, table_metrics=DEFAULT_METRICS, uri=store["uri"])
    captions = {path.name: caption for path, caption in report.figures}
    assert set(captions) == {
        "bars-test_LogP_mae.png",
        "bars-test_Molecular_Weight_mae.png",
        "parity-unimol-qformer-vicuna-test.png",
    }
    # 3 numeric answers per seed; seed 0's second LogP answer has no number; descriptions are not numeric
    assert "1 of 6 answers held no number and are left out" in captions["parity-unimol-qformer-vicuna-test.png"]

    properties = {}
    path = tmp_path / "answers.jsonl"
    path.write_text(
        "\n".join(json.dumps({"task": p, "reference": r, "answer": a} | _parsed(p, r, a)) for p, r, a, _ in ANSWERS)
    )
    parse_answers(path, rows[0], properties)
    assert set(properties) == {"LogP", "Molecular Weight"}
    assert (properties["LogP"].true, properties["LogP"].predicted, properties["LogP"].unparsed) == ([1.2], [1.5], 1)
    assert properties["Molecular Weight"].predicted == [170.0]


def test_unreadable_inputs_and_unmatched_patterns_are_named(store, tmp_path, capsys):
    uri = ["--uri", store["uri"]]
    assert main(["compare", *uri, "--sweep", "nope"]) == 2
    assert "'sweep.name': 'nope'" in capsys.readouterr().err
    assert main(["compare", *uri, "--sweep", "arch", "--plots", str(tmp_path), "--plot-metrics", "test/nope*"]) == 2
    err = capsys.readouterr().err
    assert "--plot-metrics test/nope*: no metric of the selected runs matches" in err and "test/full_m2t_acc" in err
    assert main(["compare", *uri, "--task", "retrieval", "--metrics", "valid/zzz", "test/*"]) == 2
    assert "--metrics valid/zzz:" in capsys.readouterr().err
    assert main(["compare", *uri, "--task", "retrieval", "--log-to", "x"]) == 2
    assert "go with --plots" in capsys.readouterr().err

    bad = tmp_path / "answers-test.jsonl"
    bad.write_text(
        json.dumps({"task": "LogP", "reference": "unknown", "answer": "1", "value": 1.0, "target": None}) + "\n"
    )
    run = RunRow("r-s0", "id0", QA, "FINISHED", 0, {"seed": "0"})
    with pytest.raises(MolbridgeError, match=r"answers-test.jsonl of run r-s0 \(id0\), line 1: the reference"):
        parse_answers(bad, run, {})


def test_a_malformed_ranks_artifact_names_the_run(store, tmp_path):
    client = MlflowClient(store["uri"])
    experiment = client.create_experiment("retrieval-broken", artifact_location=str(tmp_path / "artifacts"))
    ranks = json.dumps({"model": {"m2t": [0, 1], "t2m": "no"}})
    _log_run(
        client,
        experiment,
        "unimol-qformer-none-s0",
        _identity("retrieval", "unimol-qformer-none", 0),
        final=[("test/full_m2t_acc", 0.5)],
        artifacts=[("ranks-test.json", ranks)],
        folder=tmp_path,
    )
    rows = gather_runs(experiments=["retrieval-broken"], metrics=("*",), uri=store["uri"])
    with pytest.raises(MolbridgeError, match=r"ranks-test.json of run unimol-qformer-none-s0 .*'model' needs"):
        write_report(rows, tmp_path / "out", table_metrics=DEFAULT_METRICS, uri=store["uri"])


# --- end to end --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_real_retrieval_sweep_compares_with_ranks_and_curves(tmp_cwd, capsys):
    """Tiny retrieval training, 2 encoders x 2 seeds; the ranks artifact agrees with the logged metrics."""
    small = [
        "encoder.preset=small",
        "projector.num_layers=1",
        "projector.max_text_length=32",
        "data.batch_size=4",
        "data.limit=24",
        "data.eval_limit=12",
        "data.eval_batch_size=8",
        "train.max_steps=4",
        "train.eval_every=2",
        "train.log_every=1",
        "train.warmup_steps=0",
    ]
    assert main(["sweep", "retrieval", "--encoder", "unimol,schnet", "--seeds", "2", *small]) == 0
    assert main(["compare", "--task", "retrieval", "--aggregate", "--plots", "plots"]) == 0
    names = set(os.listdir(tmp_cwd / "plots"))
    assert {"recall-test.png", "curve-train_loss.png", "curve-valid_full_acc.png", "aggregate.csv"} <= names
    client = MlflowClient(f"sqlite:///{tmp_cwd / 'mlflow.db'}")
    for row in gather_runs(task="retrieval", metrics=("*",)):
        ranks = json.loads(open(client.download_artifacts(row.run_id, "ranks-test.json", str(tmp_cwd))).read())
        for direction in ("m2t", "t2m"):
            assert np.mean(np.array(ranks["model"][direction]) == 0) == pytest.approx(
                row.metrics[f"test/full_{direction}_acc"]
            )
            assert np.mean(np.array(ranks["baseline"][direction]) < 20) == pytest.approx(
                row.metrics[f"test/baseline_full_{direction}_r20"]
            )
