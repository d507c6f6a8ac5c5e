"""The ``captioning`` task (stage 2): the LLM describes the molecule it reads as soft tokens.

Trained with the LM loss on the description (response only, EOS-terminated); evaluated by generating a
caption for every molecule of the split and scoring it with BLEU-2/4, ROUGE-1/2/L and METEOR on one
tokenization (:mod:`.text_metrics`). The baseline in the same run copies the caption of the most similar
training molecule (Tanimoto on Morgan fingerprints): what a model scores that only retrieves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from molbridge.core import hookimpl
from molbridge.plugins.tasks.fingerprint_baseline import nearest_neighbours
from molbridge.plugins.tasks.llm_stage import Example, LLMStageTask
from molbridge.plugins.tasks.text_metrics import caption_metrics

TASK = "Caption"


@dataclass
class CaptioningConfig:
    name: str = "captioning"
    instruction: str = "Describe this molecule."
    text_field: str = "description"
    """Which stored text of a molecule is its caption."""
    max_new_tokens: int = 192
    num_beams: int = 1
    baseline: bool = True
    """Score the nearest-training-molecule caption baseline in the same run."""


class CaptioningTask(LLMStageTask):
    monitor = ("bleu4", "max")

    def examples(self, split: str) -> list[Example]:
        molecules = self.molecules[split]
        return [Example(i, self.config.instruction, molecules.store[int(row)].texts.get(self.config.text_field, ""),
                        TASK) for i, row in enumerate(molecules.indices)]

    def generation(self, task: str) -> dict[str, Any]:
        return {"max_new_tokens": self.config.max_new_tokens, "num_beams": self.config.num_beams}

    def score(self, split: str, examples: list[Example], answers: list[str]) -> dict[str, float]:
        references = [e.response for e in examples]
        metrics = caption_metrics(answers, references)
        if self.config.baseline:
            metrics |= {f"baseline_{k}": v for k, v in self._baseline(split, references).items()}
        return metrics

    def _baseline(self, split: str, references: list[str]) -> dict[str, float]:
        train, target = self.molecules["train"], self.molecules[split]
        smiles = [target.store[int(r)].smiles for r in target.indices]
        known = [train.store[int(r)].smiles for r in train.indices]
        captions = [self.splits["train"].examples[j].response for j in nearest_neighbours(smiles, known)]
        return caption_metrics(captions, references)

    def describe(self) -> dict[str, Any]:
        return {"dataset": self.recipe.data.name, "split": self.recipe.data.split,
                "sizes": {k: len(v) for k, v in self.splits.items()}, "instruction": self.config.instruction,
                "metrics": "BLEU-2/4 (NLTK corpus_bleu), ROUGE-1/2/L F (rouge-score), METEOR (NLTK, WordNet 3.0); "
                           "lower-cased NLTK word tokens for all; fractions in [0, 1]",
                "baseline": "caption of the most similar training molecule (Morgan r=2 Tanimoto)"}


@hookimpl
def molbridge_register_tasks(register):
    register("captioning", CaptioningTask, CaptioningConfig,
             description="stage 2: the LLM captions molecules; BLEU, ROUGE, METEOR vs a nearest-neighbour baseline")
