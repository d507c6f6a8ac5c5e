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


def _bench(args, site, **env):
    environ = {**os.environ, "PYTHONPATH": str(site), **env}
    bench = [sys.executable, "-c", "import sys; from molbridge.core.cli import main; sys.exit(main())"]
    return subprocess.run(bench + args, capture_output=True, text=True, env=environ)


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
