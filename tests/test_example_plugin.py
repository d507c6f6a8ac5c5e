"""The example third-party package, installed for real and found through its entry point."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "molbridge-example-plugin"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """pip-install the example package into a private directory (the test env itself stays clean)."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(EXAMPLE),
        ],
        check=True,
        capture_output=True,
    )
    return target


def _bench(args, site, cwd=None, **env):
    environ = {**os.environ, "PYTHONPATH": str(site), **env}
    bench = [sys.executable, "-c", "import sys; from molbridge.core.cli import main; sys.exit(main())"]
    return subprocess.run(bench + args, capture_output=True, text=True, env=environ, cwd=cwd)


def test_bench_plugins_lists_the_installed_example(installed):
    result = _bench(["plugins", "--json"], installed)
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    (meanpool,) = [c for c in listing["components"]["projector"] if c["name"] == "meanpool"]
    assert (meanpool["distribution"], meanpool["version"], meanpool["plugin"]) == (
        "molbridge-example-plugin",
        "0.1.0",
        "example",
    )


def test_external_plugins_can_be_switched_off(installed):
    result = _bench(["plugins", "--json"], installed, MOLBRIDGE_NO_EXTERNAL_PLUGINS="1")
    assert result.returncode == 0, result.stderr
    assert "meanpool" not in {c["name"] for c in json.loads(result.stdout)["components"]["projector"]}


def test_a_run_uses_the_example_task_and_projector(installed, tmp_path):
    recipe = EXAMPLE / "recipes" / "property.yaml"
    result = _bench(
        [
            "run",
            "property",
            "--recipe",
            str(recipe),
            "--output",
            str(tmp_path / "out"),
            "train.max_steps=3",
            "train.warmup_steps=1",
            "train.eval_every=0",
            "data.batch_size=8",
            "data.eval_batch_size=128",
            "tracking.enabled=false",
        ],
        installed,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["provenance"]["steps"] == 3
    assert metrics["metrics"]["test/mae"] > 0 and metrics["metrics"]["test/baseline_mae"] > 0
    assert metrics["provenance"]["task_description"]["target"] == "xtb_gap"


def test_example_projector_meets_the_contract(installed, monkeypatch):
    monkeypatch.syspath_prepend(str(installed))
    from molbridge_example import MeanPoolConfig, MeanPoolProjector

    from molbridge.core.testing import check_projector

    check_projector(MeanPoolProjector(MeanPoolConfig(num_tokens=3, output_dim=16), input_dim=8), input_dim=8)


def test_recipe_typos_are_all_named_with_suggestions(installed):
    recipe = EXAMPLE / "recipes" / "property.yaml"
    result = _bench(["recipes", "validate", str(recipe), "trian.max_steps=3", "encoder.nmae=x"], installed)
    assert result.returncode == 2
    assert "trian (command line 'trian.max_steps=3')" in result.stderr and "did you mean 'train'" in result.stderr
    assert "encoder.nmae (command line 'encoder.nmae=x')" in result.stderr and "did you mean 'name'" in result.stderr
    assert _bench(["recipes", "validate", str(recipe)], installed).returncode == 0


CHAIN = [
    "--projector",
    "meanpool",
    "encoder.preset=small",
    "data.batch_size=4",
    "data.limit=16",
    "data.eval_limit=6",
    "data.eval_batch_size=8",
    "train.max_steps=2",
    "train.warmup_steps=0",
    "tracking.enabled=false",
]


@pytest.mark.slow
def test_the_example_projector_runs_stage_1_then_2_then_3(installed, tmp_path):
    """A projector that only implements forward() takes part in the whole 3D-MoLM chain: stage 1 wraps it in the
    task's text tower, stages 2 and 3 start from the previous stage's run, found by identity."""
    env = {"MOLBRIDGE_CACHE": str(tmp_path / "cache")}
    stages = [
        ["retrieval", "task.baseline=false", "task.text_tower.num_layers=1"],
        ["captioning", "task.max_new_tokens=4", "llm.num_mol_tokens=4"],  # meanpool makes 4 soft tokens
        [
            "qa",
            "task.max_new_tokens=4",
            "task.descriptive_max_new_tokens=4",
            "task.valid_per_task=1",
            "llm.num_mol_tokens=4",
        ],
    ]
    results = []
    for task, *extra in stages:
        done = _bench(["run", task, *CHAIN, *extra], installed, cwd=tmp_path, **env)
        assert done.returncode == 0, done.stderr[-3000:]
        (metrics_file,) = (tmp_path / "runs" / f"{task}-molbridge-mini").glob("unimol-meanpool-*/metrics.json")
        results.append(json.loads(metrics_file.read_text()))
    stage1, stage2, stage3 = results
    assert stage1["provenance"]["task_description"]["text_side"].startswith("the task's text tower")
    assert 0.0 <= stage1["metrics"]["test/full_m2t_acc"] <= 1.0
    for result, previous in ((stage2, "retrieval"), (stage3, "captioning")):
        report = result["provenance"]["init_from"]
        assert f"/{previous}-molbridge-mini/unimol-meanpool-" in report["source"]
        assert not any(k.startswith(("encoder", "projector")) for k in report["new"])  # both came from it
    assert "test/bleu4" in stage2["metrics"] and "test/skill" in stage3["metrics"]
