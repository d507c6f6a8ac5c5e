"""Do a conformer QA run's numbers follow the conformer once decoding stops taking the likeliest digits?

    .venv/bin/python benchmarks/sampled_answers.py RUN_DIR [--samples K] [--temperature T] [--seed S] [--json out.json]

A run whose greedy answers sit at the molecule-mean ceiling while its ``choice_acc`` is above chance prefers the
right answer under the right conformer, yet says one number for all of them. Greedy decoding may be what hides
the preference (the commonest answer wins every digit), or the preference may be too small to move the model's
distribution. This tells the two apart: the run's model is rebuilt from its checkpoint (as ``bench ask`` does)
and every test question is answered greedily and by ``K`` sampled answers (seeded), whose median is the answer
that minimises the expected absolute error under the model's own distribution. Each decoding is scored as the
task scores its answers (``within_mae`` against ``molecule_mean_mae``, the 1D ceiling), paired with the ceiling
on the same questions (:mod:`molbridge.core.stats`). Nothing is trained and nothing is saved but ``--json``.
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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a finished conformer_qa run's folder")
    parser.add_argument("--samples", type=int, default=8, help="sampled answers per question (default 8)")
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
    drawn = sampled(task, model, asker.fabric, "test", args.samples, args.temperature, args.seed)
    parse = PARSERS[task.config.number_parser]
    out = {
        "run": str(args.run),
        "samples": args.samples,
        "temperature": args.temperature,
        "seed": args.seed,
        "greedy": scored(task, examples, greedy),
        "median": scored(task, examples, [median_answer(texts, parse) for texts in drawn]),
    }
    for name in ("greedy", "median"):
        r = out[name]
        if not r["questions"]:
            print(f"{name:7s} no molecule got a number for every conformer")
            continue
        low, high = r["minus_ceiling"][1:]
        print(
            f"{name:7s} within {r['within_mae']:.3f} vs ceiling {r['ceiling']:.3f} on {r['questions']} questions: "
            f"{r['minus_ceiling'][0]:+.3f} [{low:+.3f}, {high:+.3f}] {r['verdict']}"
        )
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
