"""benchmarks/encoders.py at a tiny size: the bf16 row and the accuracy figures it reports beside the speed."""

import importlib
import os
import sys

import pytest
import torch


@pytest.fixture(scope="module")
def bench(benchmark_script):
    return benchmark_script("encoders")


def test_measure_reports_speed_and_precision(bench):
    fp32 = bench.measure("unimol-small", molecules=4, batch=2)
    bf16 = bench.measure("unimol-small", molecules=4, batch=2, bf16=True)
    assert fp32["molecules"] == bf16["molecules"] == 4 and fp32["mol_per_s"] > 0 and bf16["mol_per_s"] > 0
    assert (fp32["precision"], bf16["precision"]) == ("fp32", "bf16") or torch.cuda.is_available()


@pytest.mark.skipif(not os.environ.get("MOLBRIDGE_UNIMOL_TOOLS"), reason="set MOLBRIDGE_UNIMOL_TOOLS")
def test_accuracy_against_unimol_tools_with_the_same_weights(bench):
    errors = bench.accuracy(molecules=4, batch=2)
    assert errors["fp32_vs_unimol_tools"] <= 1e-5, errors
    assert 0 < errors["bf16_vs_fp32"] < 0.05, errors


def test_unimol_tools_imports_where_rdkit_drawing_cannot_load(bench, monkeypatch):
    """A GPU image without libXrender cannot import rdkit.Chem.Draw, which unimol-tools' package imports
    through PandasTools though its model never uses it: an empty stand-in lets the baseline load."""
    monkeypatch.setitem(sys.modules, "rdkit.Chem.PandasTools", None)  # None in sys.modules: import fails
    assert bench._without_rdkit_drawing() is True
    # what `from rdkit.Chem import PandasTools` finds where RDKit's module never loaded (an earlier test may have
    # loaded it here, and left it as an attribute of rdkit.Chem): the stand-in
    assert not hasattr(importlib.import_module("rdkit.Chem.PandasTools"), "LoadSDF")
