"""benchmarks/mini_table.py: its three sweeps plan as one chain, and its tables say what they average."""

import argparse
from pathlib import Path

import numpy as np
import pytest

from molbridge.core import stats
from molbridge.core.compare import Group, Items, RunRow
from molbridge.core.identity import identity_settings, stage_differences
from molbridge.core.plugins import get_registry
from molbridge.core.sweep import load_sweep, plan

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def table(benchmark_script):
    return benchmark_script("mini_table")


def test_the_three_sweeps_are_one_chain_of_the_same_configurations_and_seeds():
    registry = get_registry()
    stages = {
        stage: plan(load_sweep(BENCHMARKS / "mini" / f"{stage}.yaml"), registry)
        for stage in ("retrieval", "captioning", "qa")
    }
    keys = {stage: [child.key for child in children] for stage, children in stages.items()}
    assert len(keys["retrieval"]) == 18 and keys["retrieval"] == keys["captioning"] == keys["qa"]
    assert {c.recipe.encoder.name for c in stages["qa"]} == {"unimol", "schnet", "smiles"}
    for previous, stage in (("retrieval", "captioning"), ("captioning", "qa")):
        for child in stages[stage]:  # each child starts from its own: exactly one previous child matches it
            assert child.recipe.train.init_from == f"stage:{previous}@runs/sweep-mini-{previous}"
            matching = [b for b in stages[previous] if not stage_differences(child.recipe, b.recipe)]
            assert [b.key for b in matching] == [child.key]


def _group(encoder: str, projector: str, values: dict[str, list[float]]) -> Group:
    seeds = range(len(next(iter(values.values()))))
    runs = [
        RunRow(
            f"{encoder}-{projector}-none-s{s}",
            f"id{s}",
            "qa-molbridge-mini",
            "FINISHED",
            0,
            {"encoder": encoder, "projector": projector, "seed": str(s)},
            {metric: series[s] for metric, series in values.items() if s < len(series)},
        )
        for s in seeds
    ]
    return Group("qa-molbridge-mini", f"{encoder}-{projector}-none", runs)


def test_stage_table_marks_the_best_mean_the_missing_seeds_and_the_baseline(table):
    homo, base = "test/HOMO _GFN2-xTB_/medae", "test/HOMO _GFN2-xTB_/baseline_medae"
    groups = [
        _group("unimol", "qformer", {"test/skill": [0.2, 0.4, 0.3], homo: [0.5, 0.7, 0.6], base: [1.0] * 3}),
        _group("smiles", "linear", {"test/skill": [0.1, 0.3], homo: [0.9, 1.1], base: [1.0] * 2}),
    ]
    lines, rows = table.stage_table("qa", groups)
    unimol, *missing, smiles, baseline = lines[2:]  # in the sweep's grid order
    assert len(missing) == 4 and all(line.count("not run yet") == 7 for line in missing)  # 6 planned, 2 run
    assert unimol.startswith("| Uni-Mol | Q-Former | **0.300 ± 0.100** | **0.600 ± 0.100** |")  # MAE: lower wins
    assert "| SMILES (1D control) | linear | 0.200 ± 0.141 (n=2) | 1.000 ± 0.141 (n=2) |" in smiles
    assert baseline.startswith("| training mean (baseline) |  |  | 1.000 |")  # skill has no baseline
    assert rows[1][:5] == ["Uni-Mol", "Q-Former", "0.3", "0.1", "3"]


def test_update_readme_rewrites_only_the_stage_s_block(tmp_path, monkeypatch, table):
    readme = tmp_path / "README.md"
    (qa_start, qa_end), (rt_start, rt_end) = table.markers("qa"), table.markers("retrieval")
    readme.write_text(f"intro\n{rt_start}\nkept\n{rt_end}\n{qa_start}\nold table\n{qa_end}\noutro\n")
    monkeypatch.setattr(table, "README", readme)
    table.update_readme("qa", "| new |\n")
    assert readme.read_text() == f"intro\n{rt_start}\nkept\n{rt_end}\n{qa_start}\n| new |\n{qa_end}\noutro\n"
    with pytest.raises(SystemExit, match="mini-table:captioning:start"):
        table.update_readme("captioning", "| new |\n")


def test_stages_option_keeps_chain_order_and_names_an_unknown_stage(table):
    assert table._stages("qa, retrieval") == ["retrieval", "qa"]
    with pytest.raises(argparse.ArgumentTypeError, match="unknown stage .qna.; choose from retrieval, captioning, qa"):
        table._stages("qa,qna")


def _retrieval_group(encoder: str, projector: str, hits: list[list[int]]) -> tuple[Group, dict]:
    """A retrieval configuration whose seeds hit (rank 0) the molecules marked 1 in ``hits``."""
    group = _group(encoder, projector, {"test/full_m2t_acc": [sum(h) / len(h) for h in hits]})
    ids = tuple(f"mol{i}" for i in range(len(hits[0])))
    items = {
        run.run_id + encoder + projector: {"test/full_m2t_acc": Items(ids, np.array(h, dtype=float))}
        for run, h in zip(group.runs, hits, strict=True)
    }
    for run in group.runs:
        run.run_id += encoder + projector  # run ids unique across configurations, as MLflow's are
    return group, items


def test_stage_table_shows_intervals_and_bolds_configurations_tied_with_the_best(table):
    rng = np.random.default_rng(0)
    good = (rng.random((3, 60)) < 0.5).astype(int).tolist()
    close = [[min(1, h + (i % 20 == 0)) for i, h in enumerate(seed)] for seed in good]  # 3 more hits of 60
    poor = (rng.random((3, 60)) < 0.1).astype(int).tolist()
    groups, items = [], {}
    for encoder, projector, hits in (
        ("unimol", "qformer", good),
        ("schnet", "linear", close),
        ("smiles", "linear", poor),
    ):
        group, found = _retrieval_group(encoder, projector, hits)
        groups.append(group)
        items |= found
    lines, rows = table.stage_table("retrieval", groups, items)
    unimol, unrun, _, schnet, _, smiles = lines[2:8]  # the grid's order, unrun configurations in their place
    expected = stats.configuration(np.array(close, dtype=float))
    mean = np.mean(close)
    assert f"| SchNet | linear | **{mean:.3f} [{expected.interval.lo:.3f}, {expected.interval.hi:.3f}]** |" in schnet
    assert unimol.startswith("| Uni-Mol | Q-Former | **")  # not distinguishable from the best: bold too
    assert smiles.startswith("| SMILES (1D control) | linear | 0.") and "**" not in smiles.split(" | ")[2]
    assert "| not run yet |" in unrun and unimol.endswith("| not run | not run | not run |")  # planned, unrun
    assert rows[0][2:7] == [f"M2T acc {part}" for part in ("mean", "std", "n", "lo", "hi")]
    assert float(rows[4][5]) == pytest.approx(expected.interval.lo, rel=1e-5)
    legend = table.legend("retrieval", groups, items)
    assert "except M2T acc: mean [95% percentile bootstrap interval" in legend and "paired bootstrap" in legend
    assert table.legend("qa", groups, {}) == "Cells: mean ± sample std over seeds; bold: the best mean."


def test_render_reads_intervals_from_any_mlflow_store(table, tmp_path, monkeypatch):
    """No sweep is run: two finished children of sweep mini-retrieval with ranks artifacts are enough."""
    import json

    from mlflow import MlflowClient
    from mlflow.entities import Metric

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("retrieval-molbridge-mini", artifact_location=str(tmp_path / "artifacts"))
    for encoder, first in (("unimol", 30), ("smiles", 10)):
        ranks = [0 if i < first else 7 for i in range(40)]
        tags = {"task": "retrieval", "encoder": encoder, "projector": "qformer", "seed": "0"}
        run_id = client.create_run(
            experiment, run_name=f"{encoder}-qformer-none-s0", tags=tags | {"sweep.name": "mini-retrieval"}
        ).info.run_id
        client.log_batch(run_id, metrics=[Metric("test/full_m2t_acc", first / 40, 0, 0)])
        path = tmp_path / run_id / "ranks-test.json"
        path.parent.mkdir()
        path.write_text(json.dumps({"ids": [f"m{i}" for i in range(40)], "model": {"m2t": ranks, "t2m": ranks}}))
        client.log_artifact(run_id, str(path))
        client.set_terminated(run_id)
    monkeypatch.setattr(table, "OUT", tmp_path / "results")
    text = table.render("retrieval", uri, plots=False)
    unimol = next(line for line in text.splitlines() if line.startswith("| Uni-Mol | Q-Former |"))
    assert unimol.startswith("| Uni-Mol | Q-Former | **0.750 [") and "(n=1)" in unimol
    assert "| SMILES (1D control) | Q-Former | 0.250 [" in text and "except M2T acc: mean [95%" in text
    assert (tmp_path / "results" / "mini" / "retrieval" / "table.md").read_text() == text


def test_the_conformer_sweeps_are_two_chains_each_child_starting_from_its_own_previous_run():
    registry = get_registry()
    children = {
        name: plan(load_sweep(BENCHMARKS / "mini" / f"{name}.yaml"), registry)
        for name in (
            "pretrain",
            "conformer_retrieval",
            "conformer_retrieval_pretrained",
            "conformer_qa",
            "conformer_qa_pretrained",
        )
    }
    scratch = [f"{e}-s{s}" for e in ("unimol", "schnet", "smiles") for s in range(3)]
    assert [c.key for c in children["conformer_retrieval"]] == [c.key for c in children["conformer_qa"]] == scratch
    every = [child for group in children.values() for child in group]
    assert all(c.recipe.encoder.cutoff == 10.0 for c in every if c.recipe.encoder.name == "schnet")
    for previous, name, folder in (
        ("pretrain", "conformer_retrieval_pretrained", "stage:pretrain@runs/sweep-mini-pretrain"),
        ("conformer_retrieval", "conformer_qa", "stage:conformer_retrieval@runs/sweep-mini-conformer_retrieval"),
        (
            "conformer_retrieval_pretrained",
            "conformer_qa_pretrained",
            "stage:conformer_retrieval@runs/sweep-mini-conformer_retrieval-pretrained",
        ),
    ):
        for child in children[name]:  # exactly one child of the previous sweep matches (same encoder and seed)
            assert child.recipe.train.init_from == folder
            matching = [b for b in children[previous] if not stage_differences(child.recipe, b.recipe)]
            assert [b.key for b in matching] == [child.key]


def test_the_conformer_table_has_a_row_per_sweep_and_the_paired_difference_against_the_control(
    table, tmp_path, monkeypatch
):
    """Children of both conformer sweeps with items-test.json artifacts as the task writes them."""
    import json

    from mlflow import MlflowClient
    from mlflow.entities import Metric

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment(
        "conformer_retrieval-molbridge-mini", artifact_location=str(tmp_path / "artifacts")
    )
    ids = [f"m{i // 2}#{i % 2}" for i in range(40)]  # 20 molecules of 2 conformers
    for sweep, encoder, hits, config in (
        ("mini-conformer_retrieval", "unimol", 30, "aaaaaa"),
        ("mini-conformer_retrieval", "smiles", 20, "bbbbbb"),
        ("mini-conformer_retrieval-pretrained", "unimol", 36, "cccccc"),
    ):
        credit = [1.0 if i < hits else 0.0 for i in range(40)]
        tags = {"task": "conformer_retrieval", "encoder": encoder, "projector": "qformer", "seed": "0"}
        run_id = client.create_run(
            experiment, run_name=f"{encoder}-qformer-none-s0-{config}", tags=tags | {"sweep.name": sweep}
        ).info.run_id
        metrics = {"test/conformer_acc": hits / 40, "test/conformer_chance": 0.5}
        client.log_batch(run_id, metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()])
        path = tmp_path / run_id / "items-test.json"
        path.parent.mkdir()
        values = {"conformer_acc": credit, "conformer_chance": [0.5] * 40}
        path.write_text(json.dumps({"split": "test", "ids": ids, "values": values}))
        client.log_artifact(run_id, str(path))
        client.set_terminated(run_id)
    monkeypatch.setattr(table, "OUT", tmp_path / "results")
    text = table.render("conformer_retrieval", uri, plots=False)
    lines = text.splitlines()
    assert "`benchmarks/mini/pretrain.yaml`, `benchmarks/mini/conformer_retrieval.yaml`" in lines[0]
    assert lines[2] == "| encoder | projector | conformer acc | vs SMILES (1D control) |"
    unimol, schnet, smiles, pretrained, schnet_pretrained, chance = lines[4:10]  # the sweep files' order
    assert unimol.startswith("| Uni-Mol | Q-Former | 0.750 [") and "| **better (+0.250 [" in unimol
    assert schnet == "| SchNet | Q-Former | not run yet | not run yet |"  # planned in the sweep, not run
    assert smiles.startswith("| SMILES (1D control) | Q-Former | 0.500 [") and smiles.endswith("| control |")
    assert pretrained.startswith("| Uni-Mol, from `pretrain` | Q-Former | **0.900 [") and "+0.400" in pretrained
    assert schnet_pretrained.startswith("| SchNet, from `pretrain` |")
    assert chance == "| chance (any 1D model) (baseline) |  | 0.500 |  |"
    assert "Last column: the row minus the SMILES (1D control) row on the same test items" in text
    csv_rows = (tmp_path / "results" / "mini" / "conformer_retrieval" / "table.csv").read_text().splitlines()
    assert csv_rows[0].endswith("vs SMILES (1D control) (conformer acc) verdict") and csv_rows[1].endswith(",better")

    # under the table, what pre-training changed: the pre-trained row minus the same encoder's row from scratch
    effects = lines[lines.index("| from `pretrain` minus from scratch | conformer acc |") :]
    hits = np.arange(40)
    expected = stats.paired([(hits < 36).astype(float)], [(hits < 30).astype(float)], higher=True)
    d = expected.difference
    assert effects[2] == f"| Uni-Mol, Q-Former | **better ({d.estimate:+.3f} [{d.lo:.3f}, {d.hi:.3f}])** |"
    assert effects[3] == "" and effects[4].startswith("Each row from `pretrain` minus the same components' row from")
    effect_rows = (tmp_path / "results" / "mini" / "conformer_retrieval" / "effects.csv").read_text().splitlines()
    assert effect_rows[1].startswith("unimol,qformer,from `pretrain`,conformer acc,0.15,") and len(effect_rows) == 2


def test_the_conformer_qa_table_sets_each_within_error_against_the_row_s_own_ceiling(table):
    """The last column pairs each row's within-molecule errors with its own runs' molecule-mean errors on the same
    questions: the SMILES control, whose errors are the ceiling's item by item, comes out at exactly zero."""
    rng = np.random.default_rng(1)
    ids = tuple(f"m{i // 3}#{i % 3}/q" for i in range(30))
    ceiling = rng.random((2, 30))  # two seeds; the ceiling is the same questions' error, per seed
    better = ceiling - 0.05 * rng.random((2, 30))
    props = ("radius_of_gyration", "max_distance", "relative_energy")
    groups, items = [], {}
    for encoder, within in (("unimol", better), ("smiles", ceiling)):
        values = {f"test/{p}/{m}": list(v.mean(axis=1)) for p in props for m, v in (("within_mae", within),)}
        values |= {f"test/{p}/molecule_mean_mae": list(ceiling.mean(axis=1)) for p in props}
        group = _group(encoder, "qformer", values)
        for seed, run in enumerate(group.runs):
            run.run_id += encoder
            metrics = {f"test/{p}/within_mae": within[seed] for p in props}
            metrics |= {f"test/{p}/molecule_mean_mae": ceiling[seed] for p in props}
            items[run.run_id] = {metric: Items(ids, v) for metric, v in metrics.items()}
        groups.append(group)
    lines, rows = table.stage_table("conformer_qa", groups, items)
    assert lines[0].endswith("| conformer skill | vs molecule mean (any 1D model) (paired) |")
    unimol, *_, smiles = (line for line in lines[2:] if "not run yet" not in line and "baseline" not in line)
    expected = stats.paired(better, ceiling, higher=False, pair_seeds=True)
    d = expected.difference
    assert f"**Rg: better ({d.estimate:+.3f} [{d.lo:.3f}, {d.hi:.3f}])**; **distance: better (" in unimol
    assert smiles.endswith(
        "| Rg: not distinguishable (+0.000 [0.000, 0.000]); distance: not distinguishable "
        "(+0.000 [0.000, 0.000]); energy: not distinguishable (+0.000 [0.000, 0.000]) |"
    )
    header, first = rows[0], rows[1]
    at = header.index("vs molecule mean (any 1D model) (Rg (Å) within) difference")
    assert float(first[at]) == pytest.approx(d.estimate, rel=1e-5) and first[at + 3] == "better"
    assert len(first) == len(header) == len(rows[2])  # unrun rows keep every CSV field
    assert "Last column: each row's Rg, distance, energy minus its molecule mean" in table.legend(
        "conformer_qa", groups, items
    )


def test_the_stage1_pretraining_sweep_is_the_table_s_configuration_from_scratch_and_from_each_seed_s_pretrain():
    registry = get_registry()
    children, pretrain, table = (
        plan(load_sweep(BENCHMARKS / "mini" / f"{name}.yaml"), registry)
        for name in ("retrieval_pretrain", "pretrain", "retrieval")
    )
    row = {c.recipe.seed: c.recipe for c in table if c.key.startswith("unimol-qformer-")}  # the results table's row
    assert sorted(c.recipe.seed for c in children) == [0, 0, 1, 1, 2, 2]
    for child in children:
        if child.recipe.train.init_from is None:  # from scratch: the results table's own configuration
            assert identity_settings(child.recipe) == identity_settings(row[child.recipe.seed])
            continue
        matching = [b for b in pretrain if not stage_differences(child.recipe, b.recipe)]
        assert [b.key for b in matching] == [f"unimol-s{child.recipe.seed}"]  # its own seed's pre-trained encoder
