"""Shared fixtures: the toy plugin's registry and a working directory of the test's own.

Tests marked ``slow`` run only with ``MOLBRIDGE_SLOW_TESTS=1``.
"""

import importlib.util
import os
import sys
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Each test worker gets one core's worth of threads: with OpenMP's default (all cores) per worker, the workers'
    # threads spin against each other and the parallel tier runs slower than a serial one. Set before torch loads
    # its thread pool, and inherited by the subprocesses tests start (DDP ranks, CLI runs).
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")

from molbridge.core.plugins import load_plugins  # noqa: E402

TESTS = Path(__file__).resolve().parent
# `python -m pytest` puts the working directory (the repository root) on sys.path, where core/ and plugins/ would
# be importable by their folder names; the tests import the installed molbridge.core and molbridge.plugins only.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != TESTS.parent]


def load_by_path(name: str, path: Path):
    """Import the file at ``path`` as module ``name``, once (tests/ and benchmarks/ are not packages)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        sys.modules[name] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[name]


def load_toy_plugin():
    return load_by_path("toy_plugin", TESTS / "toy_plugin.py")


@pytest.fixture(scope="session")
def benchmark_script():
    """``benchmark_script("suite")``: the module benchmarks/suite.py."""
    benchmarks = str(TESTS.parent / "benchmarks")
    if benchmarks not in sys.path:  # as when run as a script: a benchmark imports its helpers (flops.py) by name
        sys.path.append(benchmarks)
    return lambda stem: load_by_path(f"molbridge_benchmark_{stem}", TESTS.parent / "benchmarks" / f"{stem}.py")


@pytest.fixture(scope="session")
def test_module():
    """``test_module("test_data_release")``: another test file as a module, for its helpers (e.g. a format writer)."""
    return lambda stem: load_by_path(f"molbridge_tests_{stem}", TESTS / f"{stem}.py")


@pytest.fixture
def toy_registry():
    """Built-in plugins plus the toy regression task (no third-party plugins)."""
    return load_plugins(external=False, extra=[load_toy_plugin()]).registry


@pytest.fixture
def tmp_cwd(tmp_path, monkeypatch):
    """Run inside tmp_path, so MLflow's default sqlite store and runs/ land there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def tiny_conformer_qa_run(tmp_cwd, monkeypatch):
    """``tiny_conformer_qa_run(*overrides)``: the folder of a one-step SMILES-control conformer QA run on a few
    molecules (for the benchmarks that rescore a finished run)."""
    from molbridge.core.cli import main

    monkeypatch.setenv("MOLBRIDGE_CACHE", str(tmp_cwd / "cache"))

    def run(*overrides: str) -> Path:
        tiny = ["train.max_steps=1", "train.warmup_steps=0", "train.init_from=null", "data.limit=8"]
        tiny += ["data.batch_size=4", "data.eval_limit=4", "tracking.enabled=false", *overrides]
        assert main(["run", "conformer_qa", "--encoder", "smiles", *tiny]) == 0
        (folder,) = (tmp_cwd / "runs" / "conformer_qa-molbridge-mini").iterdir()
        return folder

    return run


def pytest_collection_modifyitems(config, items):
    if os.environ.get("MOLBRIDGE_SLOW_TESTS", "").strip().lower() in {"1", "true", "yes", "on"}:
        return
    skip = pytest.mark.skip(reason="slow: set MOLBRIDGE_SLOW_TESTS=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
