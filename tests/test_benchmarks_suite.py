"""benchmarks/suite.py in its tiniest mode: the files it writes, ratios from the measured numbers, failures recorded."""

import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
MACHINE_FIELDS = (
    "host",
    "cpu",
    "cores",
    "ram_gib",
    "os",
    "python",
    "versions",
    "device",
    "gpu",
    "git_commit",
    "git_dirty",
    "started_utc",
    "finished_utc",
    "load_average_start",
    "load_average_end",
    "command",
)


@pytest.fixture(scope="module")
def suite(benchmark_script):
    return benchmark_script("suite")


@pytest.fixture(scope="module")
def retrieval_run(tmp_path_factory, suite):
    """The real suite command on the retrieval benchmark at tiny N (CPU), into a fresh folder."""
    out = tmp_path_factory.mktemp("results")
    status = suite.main(["--tiny", "--device", "cpu", "--only", "retrieval", "--out", str(out)])
    (folder,) = out.iterdir()
    return status, folder


def test_suite_writes_results_and_machine(retrieval_run):
    status, folder = retrieval_run
    assert status == 0
    assert sorted(p.name for p in folder.iterdir()) == ["machine.json", "retrieval.json", "summary.json", "summary.md"]
    machine = json.loads((folder / "machine.json").read_text())
    assert set(MACHINE_FIELDS) <= set(machine)
    assert machine["device"] == "cpu" and machine["gpu"] is None and machine["mode"] == "tiny"
    assert machine["cores"] >= 1 and machine["versions"]["torch"] and machine["versions"]["rdkit"]
    assert "--only retrieval" in machine["command"]
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["ok"] and [b["benchmark"] for b in summary["benchmarks"]] == ["retrieval"]
    table = (folder / "summary.md").read_text()
    assert "| retrieval | full set, N=300 |" in table and "| retrieval | in batch of 64, N=300 |" in table


def test_ratios_come_from_the_measured_numbers(retrieval_run):
    _, folder = retrieval_run
    record = json.loads((folder / "retrieval.json").read_text())
    comparisons = record["result"]["comparisons"]
    assert [(c["protocol"], c["n"]) for c in comparisons] == [("full", 300), ("inbatch", 300)]
    for c, row in zip(comparisons, record["rows"], strict=True):
        assert c["differing_ranks"] == 0
        ours, naive = c["molbridge"]["queries_per_s"], c["naive"]["queries_per_s"]
        assert row["value"] == ours and row["baseline_value"] == naive and ours > 0 and naive > 0
        assert row["ratio"] == round(ours / naive, 3)
        assert row["peak_mb"] == c["molbridge"]["peak_mb"]


def test_row_ratio_direction(suite):
    row = suite.Row
    assert row("b", "m", 3.0, "s", "base", 6.0, higher_is_better=False).ratio == 2.0
    assert row("b", "m", 3.0, "mol/s", "base", 6.0).ratio == 0.5
    assert row("b", "m", 3.0, "mol/s").ratio is None


def test_failing_benchmark_is_recorded_and_the_others_go_on(tmp_path, monkeypatch, suite):
    broken = suite.Benchmark(
        "broken", {"tiny": ["-c", "import sys; sys.exit('boom: no such model')"]}, rows=lambda result: []
    )
    fine = suite.Benchmark(
        "fine",
        {
            "tiny": [
                "-c",
                "import json, sys; open(sys.argv[1], 'w').write(json.dumps({'ours': 4.0, 'theirs': 2.0}))",
                "{json}",
            ]
        },
        rows=lambda r: [suite.Row("fine", "ours", r["ours"], "mol/s", "theirs", r["theirs"])],
    )
    monkeypatch.setattr(suite, "benchmarks", lambda: [broken, fine])
    assert suite.main(["--tiny", "--device", "cpu", "--out", str(tmp_path)]) == 1
    (folder,) = tmp_path.iterdir()
    failed = json.loads((folder / "broken.json").read_text())
    assert not failed["ok"] and failed["returncode"] == 1 and "boom: no such model" in failed["stderr_tail"]
    summary = json.loads((folder / "summary.json").read_text())
    assert [(b["benchmark"], b["ok"]) for b in summary["benchmarks"]] == [("broken", False), ("fine", True)]
    assert summary["benchmarks"][1]["rows"][0]["ratio"] == 2.0
    table = (folder / "summary.md").read_text()
    assert "## Failed" in table and "- broken: exit status 1" in table


def test_main_exit_status_for_bad_usage(tmp_path, capsys, suite):
    assert suite.main(["--only", "nonsense", "--out", str(tmp_path)]) == 2
    assert "unknown benchmark(s) nonsense" in capsys.readouterr().err


def test_sweep_row_states_the_bound_the_children_set(suite):
    """The sweep row's note carries the bound sweep.py measured (the children's own time over the jobs); results
    written before sweep.py measured it still render."""
    result = {"steps": 150, "jobs": 2}
    for state in ("cold", "warm"):
        result |= {f"{state}_parallel_s": 90.0, f"{state}_sequential_s": 150.0, f"{state}_max_metric_diff": 0.01}
    old = suite.sweep_rows(result)
    assert [row.value for row in old] == [90.0, 90.0] and "bound" not in old[0].note
    for state in ("cold", "warm"):
        result |= {f"{state}_bound": 0.62, f"{state}_children_parallel_vs_sequential": 1.24}
    (cold, _) = suite.sweep_rows(result)
    assert "ratio bound 0.62" in cold.note and "1.24x" in cold.note and "2 jobs" in cold.note
