"""The ``qa`` task (stage 3): instruction tuning on the 3D-MoIT-style mixture, numeric and descriptive answers.

Examples are the dataset's instruction records ({instruction, input, output, task}): computed properties,
GFN2-xTB properties, descriptive QA and descriptions. Training draws tasks with probability proportional
to size^0.25 (3D-MoLM): each epoch's example list is a seeded resample with those proportions.

Evaluation generates every answer with the settings of its kind (short for numbers, long for text). A
numeric answer is parsed (:mod:`.numbers`; integers, signs, exponents, units) and scored by the MAE over
valid answers (and, robust to a few wild answers, the median absolute error) and the valid-answer rate per
property, next to a baseline that predicts the training mean.
``skill`` = mean over properties of 1 - MAE / baseline MAE (0: no better than the mean; 1: exact).
Descriptive answers are scored like captions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from molbridge.core import hookimpl
from molbridge.core.errors import RecipeError
from molbridge.plugins.tasks.llm_stage import Example, LLMStageTask
from molbridge.plugins.tasks.numbers import parse_number, property_errors
from molbridge.plugins.tasks.text_metrics import caption_metrics

DESCRIPTIVE = ("Descriptive QA", "Description", "Caption")  # Caption: the 3D-MoLM release's caption records


@dataclass
class QAConfig:
    name: str = "qa"
    tasks: list[str] = field(default_factory=list)
    """Instruction tasks to use (empty: all the dataset has)."""
    sampling_power: float = 0.25
    """Training task probability proportional to size^power (3D-MoLM: 0.25; 1: as in the data)."""
    max_new_tokens: int = 32
    """For numeric answers."""
    descriptive_max_new_tokens: int = 192
    valid_per_task: int = 64
    """Validation examples per task (generation is the slow part); the test split is scored in full."""


class QATask(LLMStageTask):
    monitor = ("skill", "max")
    report_metrics = ("test/*/mae",)

    def parsed(self, example: Example, answer: str) -> dict[str, Any]:
        if example.task in DESCRIPTIVE:
            return {}
        return {"value": parse_number(answer), "target": parse_number(example.response)}

    def examples(self, split: str) -> list[Example]:
        molecules = self.molecules[split]
        records = [
            Example(i, r["instruction"], r["output"], r["task"])
            for i, row in enumerate(molecules.indices)
            for r in molecules.store[int(row)].instructions
            if not self.config.tasks or r["task"] in self.config.tasks
        ]
        if not records:
            raise RecipeError(
                "task section",
                [
                    f"task.tasks {list(self.config.tasks)}: no instruction record of "
                    f"{self.recipe.data.name} ({split}) belongs to them"
                ],
            )
        if split == "train":
            return self._mixture(records)
        if split == "valid":
            return [e for task in _tasks(records) for e in _of(records, task)[: self.config.valid_per_task]]
        return records

    def _mixture(self, records: list[Example]) -> list[Example]:
        """As many examples as the records, tasks in proportion to size^power, drawn with a fixed seed."""
        by_task = {task: _of(records, task) for task in _tasks(records)}
        weights = np.array([len(v) for v in by_task.values()], dtype=float) ** self.config.sampling_power
        counts = np.round(len(records) * weights / weights.sum()).astype(int)
        rng = np.random.default_rng(self.recipe.seed)
        mixture = []
        for pool, count in zip(by_task.values(), counts, strict=True):
            mixture += [pool[i] for i in rng.choice(len(pool), size=count, replace=count > len(pool))]
        self.train_mixture = {task: int(c) for task, c in zip(by_task, counts, strict=True)}
        return [mixture[i] for i in rng.permutation(len(mixture))]

    def generation(self, task: str) -> dict[str, Any]:
        tokens = self.config.descriptive_max_new_tokens if task in DESCRIPTIVE else self.config.max_new_tokens
        return {"max_new_tokens": tokens}

    def _train_means(self) -> dict[str, float]:
        if not hasattr(self, "_means"):
            values: dict[str, list[float]] = {}
            molecules = self.molecules["train"]
            for row in molecules.indices:
                for r in molecules.store[int(row)].instructions:
                    if r["task"] not in DESCRIPTIVE:
                        values.setdefault(r["task"], []).append(parse_number(r["output"]))
            self._means = {task: float(np.mean([v for v in vs if v is not None])) for task, vs in values.items()}
        return self._means

    def score(self, split: str, examples: list[Example], answers: list[str]) -> dict[str, float]:
        metrics: dict[str, float] = {}
        numeric = [i for i, e in enumerate(examples) if e.task not in DESCRIPTIVE]
        if numeric:
            props = [examples[i].task for i in numeric]
            targets = [examples[i].response for i in numeric]
            model = property_errors([answers[i] for i in numeric], targets, props)
            means = self._train_means()
            # a property the training split never asks about has no baseline (nor a place in skill)
            known = [i for i, p in enumerate(props) if p in means]
            baseline = property_errors(
                [str(means[props[i]]) for i in known], [targets[i] for i in known], [props[i] for i in known]
            )
            skills = []
            for prop in sorted(set(props)):
                ours, base = model[prop], baseline.get(prop)
                metrics[f"{prop}/valid_rate"] = float(ours["valid_rate"])
                for stat in ("mae", "medae"):
                    if base is not None:
                        metrics[f"{prop}/baseline_{stat}"] = float(base[stat])
                    if ours[stat] is not None:
                        metrics[f"{prop}/{stat}"] = float(ours[stat])
                if base is None:
                    continue
                # weighted by the valid rate, so skill cannot rise by not answering
                if ours["mae"] is not None and base["mae"]:
                    skills.append(ours["valid_rate"] * (1 - ours["mae"] / base["mae"]))
                else:
                    skills.append(0.0)
            metrics["skill"] = float(np.mean(skills)) if skills else 0.0
            metrics["valid_rate"] = float(np.mean([parse_number(answers[i]) is not None for i in numeric]))
        for task in DESCRIPTIVE:
            rows = [i for i, e in enumerate(examples) if e.task == task]
            if rows:
                text = caption_metrics([answers[i] for i in rows], [examples[i].response for i in rows])
                metrics |= {f"{task}/{k}": v for k, v in text.items()}
        return metrics

    def describe(self) -> dict[str, Any]:
        return {
            "dataset": self.recipe.data.name,
            "split": self.recipe.data.split,
            "sizes": {k: len(v) for k, v in self.splits.items()},
            "truncation": getattr(self, "truncation", None),
            "train_mixture": getattr(self, "train_mixture", None),
            "sampling": f"task probability proportional to size^{self.config.sampling_power}",
            "numeric": "first number after is/are/=/:, else the last; MAE and median absolute error (medae) "
            "over valid answers; "
            "skill = mean over properties of valid_rate x (1 - MAE / train-mean MAE)",
            "baseline": "predict the training mean of each property",
        }


def _tasks(records: list[Example]) -> list[str]:
    return list(dict.fromkeys(r.task for r in records))


def _of(records: list[Example], task: str) -> list[Example]:
    return [r for r in records if r.task == task]


@hookimpl
def molbridge_register_tasks(register):
    register(
        "qa",
        QATask,
        QAConfig,
        description="stage 3: instruction tuning; per-property MAE and valid rate vs the training mean, "
        "descriptive answers scored like captions",
    )
