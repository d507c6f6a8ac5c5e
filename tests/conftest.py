"""Shared fixtures: the toy plugin's registry and a working directory of the test's own.

Tests marked ``slow`` run only with ``MOLBRIDGE_SLOW_TESTS=1``.
"""

import importlib.util
import os
import sys
from pathlib import Path

import pytest

from molbridge.core.plugins import load_plugins

TESTS = Path(__file__).resolve().parent


def load_toy_plugin():
    """tests/ is not a package (importlib mode): load toy_plugin.py by path, once."""
    if "toy_plugin" not in sys.modules:
        spec = importlib.util.spec_from_file_location("toy_plugin", TESTS / "toy_plugin.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["toy_plugin"] = module
        spec.loader.exec_module(module)
    return sys.modules["toy_plugin"]


@pytest.fixture
def toy_registry():
    """Built-in plugins plus the toy regression task (no third-party plugins)."""
    return load_plugins(external=False, extra=[load_toy_plugin()]).registry


@pytest.fixture
def tmp_cwd(tmp_path, monkeypatch):
    """Run inside tmp_path, so MLflow's default sqlite store and runs/ land there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def pytest_collection_modifyitems(config, items):
    if os.environ.get("MOLBRIDGE_SLOW_TESTS", "").strip().lower() in {"1", "true", "yes", "on"}:
        return
    skip = pytest.mark.skip(reason="slow: set MOLBRIDGE_SLOW_TESTS=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
