"""Do a conformer QA run's numbers follow the conformer once decoding stops taking the likeliest digits?

    .venv/bin/python benchmarks/sampled_answers.py RUN_DIR [--samples K] [--grid G] [--temperature T] [--seed S]
                                                   [--json out.json]

A run whose greedy answers sit at the molecule-mean ceiling while its ``choice_acc`` is above chance prefers the
right answer under the right conformer, yet says one number for all of them. Greedy decoding may be what hides
the preference (the commonest answer wins every digit), or the preference may be too small to move the model's
distribution. This tells the two apart: the run's model is rebuilt from its checkpoint (as ``bench ask`` does)
and every test question is answered greedily, by the median of ``K`` sampled answers (seeded), and, with
``--grid G``, from the model's distribution over ``G`` candidate answers (the training references of the
question's property at evenly spaced ranks, each scored by its teacher-forced likelihood as ``choice_acc`` scores
answers, normalised over the grid): its median and its mean, the answers that minimise the expected absolute and
squared error under that distribution, without sampling noise. Each decoding is scored as the task scores its
answers (``within_mae`` against ``molecule_mean_mae``, the 1D ceiling), paired with the ceiling on the same
questions (:mod:`molbridge.core.stats`). Nothing is trained and nothing is saved but ``--json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def median_answer(texts: list[str], parse) -> str:
    """The median of the numbers ``parse`` finds in ``texts`` (``""`` when none has one: no number, as a
    generated answer without one)."""
    numbers = [v for v in (parse(text, None) for text in texts) if v is not None]
    return f"{float(np.median(numbers)):.2f}" if numbers else ""


@torch.no_grad()
def sampled(task, model, fabric, split: str, samples: int, temperature: float, seed: int) -> list[list[str]]:
    """``samples`` sampled answers per question of ``split``, generated as the task generates its answers."""
    torch.manual_seed(seed)
    settings = {"do_sample": True, "temperature": temperature, "top_p": 1.0}
    passes = [task.answers(model, fabric, split, **settings)[1] for _ in range(samples)]
    return [list(texts) for texts in zip(*passes, strict=True)]


def candidate_grid(task, size: int) -> dict[str, list[str]]:
    """Per property, up to ``size`` candidate answers: the training split's references at evenly spaced ranks (the
    lowest and the highest included, a repeated value kept once), written as the task writes its references."""
    references: dict[str, list[str]] = {}
    for example in task.splits["train"].examples:
        references.setdefault(example.task, []).append(example.response)
    grid = {}
    for prop, responses in references.items():
        ordered = sorted(responses, key=float)
        ranks = np.round(np.linspace(0, len(ordered) - 1, size)).astype(int)
        grid[prop] = list(dict.fromkeys(ordered[r] for r in ranks))
    return grid


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The smallest value at which the weights' cumulative share reaches one half."""
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, 0.5 * cumulative[-1])])


@torch.no_grad()
def grid_answers(task, model, fabric, split: str, grid: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    """Per question of ``split``: the median and the mean of the model's distribution over its property's
    candidates in ``grid`` (their likelihoods under the question's prompt and conformer, normalised)."""
    examples = task.splits[split].examples
    pairs = [(i, candidate) for i, e in enumerate(examples) for candidate in grid[e.task]]
    scores = iter(task.response_log_likelihoods(getattr(model, "module", model), fabric, split, pairs))
    medians, means = [], []
    for example in examples:
        values = np.array([float(c) for c in grid[example.task]])
        log_p = np.array([next(scores) for _ in values])
        p = np.exp(log_p - log_p.max())
        p /= p.sum()
        medians.append(f"{weighted_median(values, p):.2f}")
        means.append(f"{float(p @ values):.4f}")  # not rounded to the references' digits: a mean, not an answer
    return medians, means


def scored(task, examples, answers: list[str]) -> dict:
    """``within_mae`` per question of the answers and of the molecule-mean ceiling, paired."""
    from molbridge.core import stats

    within, ceiling = task.within_errors(examples, answers)
    kept = [i for i, w in enumerate(within) if w is not None]
    if not kept:
        return {"questions": 0}
    ours, theirs = np.array([within[i] for i in kept]), np.array([ceiling[i] for i in kept])
    difference = stats.paired([ours], [theirs], higher=False)
    return {
        "questions": len(kept),
        "within_mae": float(ours.mean()),
        "ceiling": float(theirs.mean()),
        "minus_ceiling": [difference.difference.estimate, difference.difference.lo, difference.difference.hi],
        "verdict": difference.verdict,
    }


def _line(name: str, r: dict) -> str:
    if not r["questions"]:
        return f"{name:11s} no molecule got a number for every conformer"
    low, high = r["minus_ceiling"][1:]
    return (
        f"{name:11s} within {r['within_mae']:.3f} vs ceiling {r['ceiling']:.3f} on {r['questions']} questions: "
        f"{r['minus_ceiling'][0]:+.3f} [{low:+.3f}, {high:+.3f}] {r['verdict']}"
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a finished conformer_qa run's folder")
    parser.add_argument("--samples", type=int, default=8, help="sampled answers per question (default 8; 0: none)")
    parser.add_argument("--grid", type=int, default=0, help="candidate answers per property (default 0: no grid)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1: the model's)")
    parser.add_argument("--seed", type=int, default=0, help="torch seed of the sampling (default 0)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    from molbridge.core.ask import Asker
    from molbridge.plugins.tasks.numbers import PARSERS

    asker = Asker(args.run)
    model = asker.load_model(device="cpu", precision="32-true")
    task = asker.task
    examples, greedy = task.answers(model, asker.fabric, "test")
    decodings = {"greedy": greedy}
    if args.samples:
        drawn = sampled(task, model, asker.fabric, "test", args.samples, args.temperature, args.seed)
        parse = PARSERS[task.config.number_parser]
        decodings["median"] = [median_answer(texts, parse) for texts in drawn]
    if args.grid:
        grid = candidate_grid(task, args.grid)
        decodings["grid_median"], decodings["grid_mean"] = grid_answers(task, model, asker.fabric, "test", grid)
    out = {"run": str(args.run), "samples": args.samples, "grid": args.grid}
    out |= {"temperature": args.temperature, "seed": args.seed, "scores": {}}
    for prop in dict.fromkeys(e.task for e in examples):  # one property at a time: their units differ
        rows = [i for i, e in enumerate(examples) if e.task == prop]
        for name, answers in decodings.items():
            r = scored(task, [examples[i] for i in rows], [answers[i] for i in rows])
            out["scores"].setdefault(prop, {})[name] = r
            print(f"{prop} {_line(name, r)}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
