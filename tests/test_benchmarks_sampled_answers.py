"""benchmarks/sampled_answers.py: the median by hand, seeded sampling, and the scoring on a real conformer QA run."""

import json

import pytest

from molbridge.core.ask import Asker
from molbridge.plugins.tasks.numbers import PARSERS


def test_median_answer_by_hand(benchmark_script):
    sampled = benchmark_script("sampled_answers")
    parse = PARSERS["molbridge"]
    assert sampled.median_answer(["1.0", "about 3 kcal/mol", "no idea", "2.5"], parse) == "2.50"
    assert sampled.median_answer(["0.00", "0.00", "4.1"], parse) == "0.00"
    assert sampled.median_answer(["no idea", ""], parse) == ""  # no number: scored as an answer without one


def test_sampling_is_seeded_and_scoring_is_the_tasks(tiny_conformer_qa_run, benchmark_script, tmp_cwd):
    tiny_run = tiny_conformer_qa_run("task.properties=[relative_energy]")
    sampled = benchmark_script("sampled_answers")
    asker = Asker(tiny_run)
    model, task = asker.load_model(device="cpu", precision="32-true"), asker.task
    examples = task.splits["test"].examples
    first = sampled.sampled(task, model, asker.fabric, "test", 3, 1.0, seed=5)
    assert len(first) == len(examples) >= 4 and all(len(texts) == 3 for texts in first)
    assert sampled.sampled(task, model, asker.fabric, "test", 3, 1.0, seed=5) == first

    exact = sampled.scored(task, examples, [e.response for e in examples])
    assert exact["questions"] == len(examples) and exact["within_mae"] == 0.0
    assert exact["ceiling"] > 0 and exact["verdict"] == "better"
    one_number = sampled.scored(task, examples, ["5.00"] * len(examples))  # the same answer for every conformer
    assert one_number["within_mae"] == pytest.approx(one_number["ceiling"], abs=1e-12)
    assert one_number["verdict"] == "not distinguishable"

    out = sampled.main([str(tiny_run), "--samples", "2", "--json", "sampled.json"])
    greedy = out["greedy"]  # the SMILES control says one number for every conformer of a molecule
    assert greedy["questions"] > 0 and greedy["within_mae"] == pytest.approx(greedy["ceiling"], abs=1e-12)
    assert set(out["median"]) >= {"questions"} and out["samples"] == 2
    assert json.loads((tmp_cwd / "sampled.json").read_text()) == out
