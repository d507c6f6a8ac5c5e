"""The ``qa`` task (stage 3): instruction tuning on the 3D-MoIT-style mixture, numeric and descriptive answers.

Examples are the dataset's instruction records ({instruction, input, output, task}, and ``subset`` in data
prepared from the 3D-MoLM release): computed properties, GFN2-xTB or DFT properties, descriptive QA and
captions. Training mixes groups of records (``mixture_groups``: by instruction task, or by the release's
sub-dataset) with probability proportional to size^``sampling_power`` (3D-MoLM: 0.25), in one of two ways
(``mixture_draws``):

- ``fixed`` (molbridge): one seeded draw, when the examples are first read, of as many examples as there are
  records, each group's share in proportion (without replacement unless a group's share exceeds its size).
  The list is the same every epoch; the training loop only shuffles its order per epoch.
- ``per-item`` (3D-MoLM's BalanceDataset): every item of every epoch draws a group with those probabilities,
  then one of its records uniformly, with replacement, so an epoch repeats some records and misses others.
  The draw is seeded by (seed, epoch, item), so a resumed run draws the same.

Evaluation generates every answer with the settings of its kind (``task.generation``). Answers of the tasks in
``text_tasks`` are scored like captions; the others are numbers, parsed by ``number_parser`` (:mod:`.numbers`)
and scored per property by the MAE over valid answers, the median absolute error and the valid-answer rate,
and again with the plausibility ranges of ``plausible_ranges`` (``mae_in_range``, ``in_range_rate``), next to
a baseline that predicts the training mean.
``skill`` = mean over properties of valid_rate x (1 - MAE / baseline MAE) (0: no better than the mean; 1: exact).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from molbridge.core import hookimpl
from molbridge.core.errors import RecipeError
from molbridge.core.recipe import bounded
from molbridge.plugins.tasks.llm_stage import Example, ExampleDataset, LLMStageOptions, LLMStageTask
from molbridge.plugins.tasks.numbers import PARSERS, REFERENCE_RANGES, Interval, property_errors

#: Tasks scored as text: molbridge-mini's descriptive QA and captions, and the 3D-MoLM release's names for them.
TEXT_TASKS = ("Descriptive QA", "Description", "Caption")


@dataclass
class QAConfig(LLMStageOptions):
    name: str = "qa"
    tasks: list[str] = field(default_factory=list)
    """Instruction tasks to use (empty: all the dataset has)."""
    sampling_power: float = 0.25
    """Training group probability proportional to size^power (3D-MoLM: 0.25; 1: as in the data)."""
    mixture_groups: str = field(default="task", metadata={"choices": ("task", "subset")})
    """What the mixture weighs: ``task`` (each instruction task) or ``subset`` (each sub-dataset of the 3D-MoLM
    release, as its stage 3 does: 4 groups; records without a subset count under their task)."""
    mixture_draws: str = field(default="fixed", metadata={"choices": ("fixed", "per-item")})
    """``fixed``: one seeded draw of the training examples, kept every epoch; ``per-item``: a fresh draw with
    replacement for every item of every epoch (3D-MoLM). See the module docstring."""
    max_new_tokens: int = 32
    """For numeric answers."""
    descriptive_max_new_tokens: int = 192
    """For answers scored as text (``text_tasks``)."""
    text_tasks: list[str] = field(default_factory=lambda: list(TEXT_TASKS))
    """Instruction tasks whose answers are scored as text (like captions); every other task's are numbers."""
    max_instruction_chars: dict[str, int] = field(default_factory=dict)
    """Cut the instruction of these tasks to this many characters in the prompt (3D-MoLM: Description 64)."""
    number_parser: str = field(default="molbridge", metadata={"choices": tuple(PARSERS)})
    """``molbridge`` (signs, integers, exponents, units; see plugins/tasks/numbers.py) or ``reference``
    (3D-MoLM: the first number with a decimal point)."""
    plausible_ranges: dict[str, str] = field(default_factory=lambda: dict(REFERENCE_RANGES))
    """Plausible answer range per property, in interval notation ('(-20, 20)', '[0, 2000)'); answers outside
    are invalid for ``mae_in_range`` and ``in_range_rate`` (``mae`` and ``valid_rate`` ignore them). Default:
    3D-MoLM's table, keyed by the release's property names."""
    valid_per_task: int = bounded(64, ge=1)
    """Validation examples per task (generation is the slow part); the test split is scored in full."""

    def problems(self) -> list[str]:
        found = []
        for prop, text in self.plausible_ranges.items():
            try:
                Interval.parse(text)
            except ValueError as exc:
                found.append(f"task.plausible_ranges.{prop}: {exc}")
        found += [
            f"task.max_instruction_chars.{task}: {chars} must be >= 1"
            for task, chars in self.max_instruction_chars.items()
            if chars < 1
        ]
        return found


class MixtureDataset(ExampleDataset):
    """Training examples drawn afresh per item and epoch: a group with probability ``weights``, then one of its
    records uniformly, with replacement (3D-MoLM's BalanceDataset). Its length is the number of records."""

    def __init__(self, molecules, groups: dict[str, list[Example]], weights: np.ndarray, seed: int):
        super().__init__(molecules, [e for group in groups.values() for e in group])
        self.groups, self.weights, self.seed, self.epoch = list(groups.values()), weights, seed, 0

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.epoch = epoch

    def draw(self, i: int) -> Example:
        rng = np.random.default_rng((self.seed, self.epoch, i))  # per item: any order, any worker, exact resume
        group = self.groups[rng.choice(len(self.groups), p=self.weights)]
        return group[int(rng.integers(len(group)))]

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.item(self.draw(i))


class QATask(LLMStageTask):
    monitor = ("skill", "max")
    report_metrics = ("test/*/mae",)

    def is_text(self, task: str) -> bool:
        return task in self.config.text_tasks

    def parsed(self, example: Example, answer: str) -> dict[str, Any]:
        if self.is_text(example.task):
            return {}
        parse = PARSERS[self.config.number_parser]
        return {"value": parse(answer, None), "target": parse(example.response, None)}

    def examples(self, split: str) -> list[Example]:
        molecules = self.molecules[split]
        records = [
            Example(i, r["instruction"], r["output"], r["task"], r.get("subset"))
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
            return records
        if split == "valid":
            return [e for task in _tasks(records) for e in _of(records, task)[: self.config.valid_per_task]]
        return records

    def example_dataset(self, split: str) -> ExampleDataset:
        if split != "train":
            return super().example_dataset(split)
        records = self.examples(split)
        groups = self._groups(records)
        weights = np.array([len(g) for g in groups.values()], dtype=float) ** self.config.sampling_power
        if self.config.mixture_draws == "per-item":
            probabilities = weights / weights.sum()
            self.train_mixture = {name: round(float(p), 6) for name, p in zip(groups, probabilities, strict=True)}
            return MixtureDataset(self.molecules[split], groups, probabilities, self.recipe.seed)
        return ExampleDataset(self.molecules[split], self._fixed_mixture(records, groups, weights))

    def _groups(self, records: list[Example]) -> dict[str, list[Example]]:
        """Records by mixture group, in first-seen order."""
        by_subset = self.config.mixture_groups == "subset"
        groups: dict[str, list[Example]] = {}
        for r in records:
            groups.setdefault((r.subset or r.task) if by_subset else r.task, []).append(r)
        return groups

    def _fixed_mixture(self, records: list[Example], groups: dict[str, list[Example]], weights) -> list[Example]:
        """As many examples as the records, groups in proportion to ``weights``, drawn once with a fixed seed."""
        counts = np.round(len(records) * weights / weights.sum()).astype(int)
        rng = np.random.default_rng(self.recipe.seed)
        mixture = []
        for pool, count in zip(groups.values(), counts, strict=True):
            mixture += [pool[i] for i in rng.choice(len(pool), size=count, replace=count > len(pool))]
        self.train_mixture = {group: int(c) for group, c in zip(groups, counts, strict=True)}
        return [mixture[i] for i in rng.permutation(len(mixture))]

    def instruction_chars(self, task: str | None) -> int | None:
        return self.config.max_instruction_chars.get(task) if task else None

    def default_generation(self, task: str) -> dict[str, Any]:
        tokens = self.config.descriptive_max_new_tokens if self.is_text(task) else self.config.max_new_tokens
        return {"max_new_tokens": tokens}

    def generation_group(self, task: str) -> str:
        return "text" if self.is_text(task) else "numeric"

    def reference_tokenizer(self) -> Callable[[str], list[str]]:
        """3D-MoLM scores stage-3 text answers on the LLM tokenizer's pieces."""
        return self.llm.tokenizer.tokenize

    def _train_means(self) -> dict[str, float]:
        if not hasattr(self, "_means"):
            parse = PARSERS[self.config.number_parser]
            values: dict[str, list[float]] = {}
            molecules = self.molecules["train"]
            for row in molecules.indices:
                for r in molecules.store[int(row)].instructions:
                    if not self.is_text(r["task"]):
                        values.setdefault(r["task"], []).append(parse(r["output"], None))
            self._means = {task: float(np.mean([v for v in vs if v is not None])) for task, vs in values.items()}
        return self._means

    def ranges(self) -> dict[str, Interval]:
        return {prop: Interval.parse(text) for prop, text in self.config.plausible_ranges.items()}

    def score(self, split: str, examples: list[Example], answers: list[str]) -> dict[str, float]:
        metrics: dict[str, float] = {}
        numeric = [i for i, e in enumerate(examples) if not self.is_text(e.task)]
        if numeric:
            metrics |= self._numeric_metrics([examples[i] for i in numeric], [answers[i] for i in numeric])
        for task in dict.fromkeys(e.task for e in examples):
            rows = [i for i, e in enumerate(examples) if e.task == task]
            if self.is_text(task):
                text = self.text_metrics([answers[i] for i in rows], [examples[i].response for i in rows])
                metrics |= {f"{task}/{k}": v for k, v in text.items()}
        return metrics

    def _numeric_metrics(self, examples: list[Example], answers: list[str]) -> dict[str, float]:
        props, targets = [e.task for e in examples], [e.response for e in examples]
        parser = self.config.number_parser
        model = property_errors(answers, targets, props, parser=parser, ranges=self.ranges())
        means = self._train_means()
        # a property the training split never asks about has no baseline (nor a place in skill)
        known = [i for i, p in enumerate(props) if p in means]
        baseline = property_errors(
            [str(means[props[i]]) for i in known],
            [targets[i] for i in known],
            [props[i] for i in known],
            parser="molbridge",
        )
        metrics, skills = {}, []
        for prop in sorted(set(props)):
            ours, base = model[prop], baseline.get(prop)
            metrics[f"{prop}/valid_rate"] = float(ours["valid_rate"])
            metrics[f"{prop}/in_range_rate"] = float(ours["in_range_rate"])
            for stat in ("mae", "medae"):
                if base is not None:
                    metrics[f"{prop}/baseline_{stat}"] = float(base[stat])
            for stat in ("mae", "medae", "mae_in_range"):
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
        metrics["valid_rate"] = float(model["overall"]["valid_rate"])
        metrics["in_range_rate"] = float(model["overall"]["in_range_rate"])
        return metrics

    def describe(self) -> dict[str, Any]:
        config = self.config
        return {
            "dataset": self.recipe.data.name,
            "split": self.recipe.data.split,
            "sizes": {k: len(v) for k, v in self.splits.items()},
            "truncation": getattr(self, "truncation", None),
            "encoder_cache": getattr(self, "cache_report", None),
            "train_mixture": getattr(self, "train_mixture", None),
            "sampling": f"{config.mixture_groups} probability proportional to size^{config.sampling_power}, "
            + (
                "drawn afresh with replacement for every item of every epoch"
                if config.mixture_draws == "per-item"
                else "drawn once (counts above) and kept every epoch"
            ),
            "numeric": (
                "first number with a decimal point (3D-MoLM)"
                if config.number_parser == "reference"
                else "first number after is/are/=/:, else the last"
            )
            + "; MAE and median absolute error (medae) over valid answers; mae_in_range and in_range_rate "
            "with plausible_ranges; skill = mean over properties of valid_rate x (1 - MAE / train-mean MAE)",
            "text": f"{', '.join(config.text_tasks)} scored like captions: {self.tokenization()}",
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
