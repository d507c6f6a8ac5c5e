"""benchmarks/mini_table.py: its three sweeps plan as one chain, and its tables say what they average."""

import argparse
from pathlib import Path

import pytest

from molbridge.core.compare import Group, RunRow
from molbridge.core.identity import stage_differences
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
    unimol, smiles, *missing, baseline = lines[2:]
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
