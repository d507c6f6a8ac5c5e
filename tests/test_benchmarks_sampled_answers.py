"""benchmarks/sampled_answers.py: the medians by hand, seeded sampling, the grid decoding read back from the task's
likelihoods, and the scoring on a real conformer QA run."""

import json

import numpy as np
import pytest

from molbridge.core.ask import Asker
from molbridge.plugins.tasks.numbers import PARSERS


def test_median_answer_by_hand(benchmark_script):
    sampled = benchmark_script("sampled_answers")
    parse = PARSERS["molbridge"]
    assert sampled.median_answer(["1.0", "about 3 kcal/mol", "no idea", "2.5"], parse) == "2.50"
    assert sampled.median_answer(["0.00", "0.00", "4.1"], parse) == "0.00"
    assert sampled.median_answer(["no idea", ""], parse) == ""  # no number: scored as an answer without one


def test_weighted_median_by_hand(benchmark_script):
    sampled = benchmark_script("sampled_answers")
    values = np.array([3.0, 0.0, 1.0, 2.0])
    assert sampled.weighted_median(values, np.array([0.1, 0.6, 0.2, 0.1])) == 0.0  # 0 holds more than half
    assert sampled.weighted_median(values, np.array([0.3, 0.2, 0.2, 0.3])) == 2.0  # 0.2 + 0.2 < 0.5 <= 0.7
    assert sampled.weighted_median(values, np.array([2.0, 2.0, 2.0, 2.0])) == 1.0  # unnormalised: half of 8 at 1


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

    grid = sampled.candidate_grid(task, 5)
    train = sorted((e.response for e in task.splits["train"].examples), key=float)
    assert grid["relative_energy"][0] == train[0] and grid["relative_energy"][-1] == train[-1]  # the ends kept
    candidates = grid["relative_energy"]
    assert set(candidates) <= set(train) and 2 <= len(set(candidates)) == len(candidates) <= 5
    medians, means = sampled.grid_answers(task, model, asker.fabric, "test", grid)
    log_p = task.response_log_likelihoods(
        getattr(model, "module", model), asker.fabric, "test", [(0, c) for c in candidates]
    )
    p = np.exp(np.array(log_p) - max(log_p))
    p /= p.sum()  # the first question's distribution over the grid, by hand
    assert float(means[0]) == pytest.approx(p @ np.array([float(c) for c in candidates]), abs=1e-4)
    assert medians[0] in candidates and all(m in candidates for m in medians)

    out = sampled.main([str(tiny_run), "--samples", "2", "--grid", "5", "--json", "sampled.json"])
    scores = out["scores"]["relative_energy"]
    for name in ("greedy", "grid_median", "grid_mean"):  # the SMILES control: one distribution per molecule
        assert scores[name]["questions"] > 0
        assert scores[name]["within_mae"] == pytest.approx(scores[name]["ceiling"], abs=1e-12)
    assert set(scores["median"]) >= {"questions"} and out["samples"] == 2 and out["grid"] == 5
    assert json.loads((tmp_cwd / "sampled.json").read_text()) == out
