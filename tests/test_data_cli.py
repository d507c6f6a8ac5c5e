"""`bench data prepare` and `bench data info` end to end (in process)."""

import json

from molbridge.core.cli import main

MIXED = """\
CC(=O)Oc1ccccc1C(=O)O aspirin
C1CC invalid_smiles
[Xe]C unknown_element_bond
*C dummy_element
C12C3C4C1C5C2C3C45 cubane
c1ccncc1 pyridine
"""


def test_prepare_keeps_valid_and_lists_each_bad_one(tmp_path, capsys):
    source = tmp_path / "mixed.smi"
    source.write_text(MIXED)
    out = tmp_path / "ds"
    assert main(["data", "prepare", str(source), "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "3 molecules, 3 failed of 6 inputs" in printed
    assert main(["data", "info", str(out), "--json", "--failures"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["molecules"] == 3 and info["unexplained_drops"] == 0
    assert [(f["id"], f["reason"]) for f in info["failure_list"]] == [
        ("invalid_smiles", "invalid_input"),
        ("unknown_element_bond", "no_forcefield_params"),
        ("dummy_element", "unknown_element"),
    ]
    assert main(["data", "info", str(out)]) == 0
    assert "unexplained drops 0" in capsys.readouterr().out
    # re-running resumes: nothing to redo, same result
    assert main(["data", "prepare", str(source), "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    assert "3 molecules, 3 failed" in capsys.readouterr().out


def test_errors_are_reported_without_traceback(tmp_path, capsys):
    assert main(["data", "info", str(tmp_path)]) == 2
    assert "neither a packaged dataset" in capsys.readouterr().err
    (tmp_path / "a.smi").write_text("CCO\n")
    args = ["data", "prepare", str(tmp_path / "a.smi"), "--out", str(tmp_path / "o"), "--shard", "2/2"]
    assert main(args) == 2
    assert "--shard '2/2'" in capsys.readouterr().err
