"""The ``captioning`` task (stage 2): the LLM describes the molecule it reads as soft tokens.

Trained with the LM loss on the description (response only, EOS-terminated); evaluated by generating a
caption for every molecule of the split and scoring it with BLEU-2/4, ROUGE-1/2/L and METEOR on one
tokenization (:mod:`.text_metrics`). The baseline in the same run copies the caption of the most similar
training molecule (Tanimoto on Morgan fingerprints): what a model scores that only retrieves.

Two facts of every molbridge-mini caption come from the 3D conformer alone, the shape class and the radius
of gyration, so they are also scored on their own (:func:`shape_fact_metrics`): the n-gram metrics barely
move when a caption gets them wrong, and they are what a 3D encoder should know that a 2D one cannot.

With ``text_field: conformer`` the captions are of conformers, not molecules: each conformer's is computed from its
coordinates (:func:`molbridge.core.data.conformer_facts.conformer_captions`: its place among the molecule's
conformers by radius of gyration, its radius, largest heavy-atom distance and shape; ``conformer_energy`` adds its
MMFF94 energy above the molecule's lowest conformer). Training captions every conformer of every molecule;
evaluation every conformer of each molecule with two or more, and scores besides the text metrics ``place_acc``
(the caption states its conformer's place; the prompt gives the count, ``task.conformer_count``), against
``place_chance`` (mean 1/k: a model blind to coordinates says one thing for all k conformers, which is right for
one of them at most), and ``conformer_rg_mae`` (the radius stated, where stated; ``conformer_rg_valid``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from molbridge.core import hookimpl
from molbridge.core.data.conformer_facts import CONFORMER_TEXT_FIELDS, captions_of, read_caption
from molbridge.core.data.describe import read_shape_facts
from molbridge.plugins.tasks.fingerprint_baseline import nearest_neighbours
from molbridge.plugins.tasks.llm_stage import Example, LLMStageOptions, LLMStageTask

TASK = "Caption"


@dataclass
class CaptioningConfig(LLMStageOptions):
    name: str = "captioning"
    instruction: str = "Describe this molecule."
    """The instruction of every caption prompt (3D-MoLM: "Describe the input molecule.")."""
    text_field: str = "description"
    """Which stored text of a molecule is its caption; ``conformer``: each conformer's caption, computed from its
    coordinates (see the module docstring); ``conformer_energy``: the same, also stating its MMFF94 energy above the
    molecule's lowest conformer."""
    conformer_count: bool = True
    """Conformer captions: the prompt says how many conformers the molecule has ("It has 3 conformers."). The
    caption's place ("the most extended of 3 conformers") counts them, a fact no one conformer's coordinates
    hold; said in the prompt, the model has only the place to find. Every conformer of a molecule still gets one
    prompt, so a model blind to coordinates stays at ``place_chance``."""
    eval_text_field: str | None = None
    """The caption of the validation and test molecules; null: ``text_field`` (3D-MoLM's pretraining phase
    trains on ``enriched_description`` and evaluates on ``description``)."""
    max_new_tokens: int = 192
    """Most tokens generated per caption (overrides ``llm.max_new_tokens`` for this task)."""
    num_beams: int = 1
    """Beam width of caption decoding (overrides ``llm.num_beams``)."""
    baseline: bool = True
    """Score the nearest-training-molecule caption baseline in the same run."""


class CaptioningTask(LLMStageTask):
    monitor = ("bleu4", "max")
    report_metrics = ("test/bleu4", "test/meteor", "test/rougeL", "test/shape_acc", "test/rg_mae")

    def text_field(self, split: str) -> str:
        """The stored text that is a molecule's caption in ``split``."""
        evaluation = self.config.eval_text_field
        return evaluation if split != "train" and evaluation else self.config.text_field

    @property
    def every_conformer(self) -> bool:  # type: ignore[override]  # a setting here, a constant in the base
        return self.config.text_field in CONFORMER_TEXT_FIELDS

    def examples(self, split: str) -> list[Example]:
        molecules, field = self.molecules[split], self.text_field(split)
        if field in CONFORMER_TEXT_FIELDS:
            return self._conformer_examples(split)
        return [
            Example(i, self.config.instruction, molecules.store[int(row)].texts.get(field, ""), TASK)
            for i, row in enumerate(molecules.indices)
        ]

    def _conformer_examples(self, split: str) -> list[Example]:
        """A caption per conformer (evaluation: of the molecules with two or more)."""
        molecules, found = self.molecules[split], []
        for i, row in enumerate(molecules.indices):
            mol = molecules.store[int(row)]
            if split == "train" or len(mol.conformers) > 1:
                captions = captions_of(mol, self.text_field(split))
                prompt = self._conformer_prompt(len(captions))
                found += [Example(i, prompt, c, TASK, conformer=k) for k, c in enumerate(captions)]
        return found

    def _conformer_prompt(self, count: int) -> str:
        if not self.config.conformer_count:
            return self.config.instruction
        return f"{self.config.instruction} It has {count} conformer{'s' if count > 1 else ''}."

    def default_generation(self, task: str) -> dict[str, Any]:
        return {"max_new_tokens": self.config.max_new_tokens, "num_beams": self.config.num_beams}

    def reference_tokenizer(self) -> Callable[[str], list[str]]:
        """3D-MoLM's stage 2 scores with SciBERT's WordPiece: the recipe's BERT (the projector's tokenizer)."""
        tokenizer = getattr(self.projector, "tokenizer", None)
        if tokenizer is None:  # a projector without a BERT of its own: the one the recipe names, or the default
            from molbridge.plugins.projectors.stage1 import default_bert, load_tokenizer

            bert = (self.recipe.get("projector") or {}).get("bert")
            tokenizer = load_tokenizer(Path(bert) if bert else default_bert())
        return tokenizer.tokenize

    def score(self, split: str, examples: list[Example], answers: list[str]) -> dict[str, float]:
        references = [e.response for e in examples]
        metrics = self._scores(answers, references)
        if self.config.baseline:
            baseline = self._scores(self._baseline_captions(split, examples), references)
            metrics |= {f"baseline_{k}": v for k, v in baseline.items()}
        return metrics

    def _scores(self, captions: list[str], references: list[str]) -> dict[str, float]:
        """Caption metrics, and the shape facts when the dataset declares that its captions state them
        (``caption_facts`` in its dataset.json, as molbridge-mini's): on other texts the sentence reader would
        match unrelated words ("linear pentasaccharide"). Conformer captions: the conformer's facts."""
        metrics = self.text_metrics(captions, references)
        if self.every_conformer:
            metrics |= conformer_caption_metrics(captions, references)
        elif self.caption_facts:
            metrics |= shape_fact_metrics(captions, references)
        return metrics

    @property
    def caption_facts(self) -> list[str]:
        return list(self.molecules["train"].store.meta.get("caption_facts", []))

    def _baseline_captions(self, split: str, examples: list[Example]) -> list[str]:
        """For each example, the caption (in ``split``'s text field; conformer captions: of conformer 0) of its
        molecule's most similar training molecule."""
        train, target, field = self.molecules["train"], self.molecules[split], self.text_field(split)
        smiles = [target.store[int(r)].smiles for r in target.indices]
        known = [train.store[int(r)].smiles for r in train.indices]
        neighbours = nearest_neighbours(smiles, known)

        @functools.cache  # a molecule's conformers share their neighbour
        def caption(j: int) -> str:
            mol = train.store[int(train.indices[j])]
            if field in CONFORMER_TEXT_FIELDS:
                return captions_of(mol, field)[0]
            return mol.texts.get(field, "")

        return [caption(neighbours[e.molecule]) for e in examples]

    def describe(self) -> dict[str, Any]:
        return {
            "dataset": self.recipe.data.name,
            "split": self.recipe.data.split,
            "sizes": {k: len(v) for k, v in self.splits.items()},
            "truncation": getattr(self, "truncation", None),
            "encoder_cache": getattr(self, "cache_report", None),
            "instruction": self.config.instruction,
            "metrics": "BLEU-2/4 (NLTK corpus_bleu), ROUGE-1/2/L F (rouge-score), METEOR (NLTK, WordNet 3.0); "
            f"{self.tokenization()}; fractions in [0, 1]. shape_acc: the caption "
            "names the reference's shape class; rg_mae: radius of gyration error (A) where both "
            "state one, rg_valid: share of captions that do",
            "baseline": "caption of the most similar training molecule (Morgan r=2 Tanimoto)",
        }


def shape_fact_metrics(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Shape-class accuracy and radius-of-gyration error of captions, over the references that state them.

    A caption that names no shape counts as wrong; the radius error is over the captions that state one
    (``rg_valid`` says how many). Empty when no reference states the facts (another ``text_field``).
    """
    pairs = [(read_shape_facts(p), read_shape_facts(r)) for p, r in zip(predictions, references, strict=True)]
    shapes = [(p[0], r[0]) for p, r in pairs if r[0] is not None]
    radii = [(p[1], r[1]) for p, r in pairs if r[1] is not None]
    metrics = {}
    if shapes:
        metrics["shape_acc"] = sum(p == r for p, r in shapes) / len(shapes)
    if radii:
        stated = [abs(p - r) for p, r in radii if p is not None]
        metrics["rg_valid"] = len(stated) / len(radii)
        if stated:
            metrics["rg_mae"] = sum(stated) / len(stated)
    return metrics


def conformer_caption_metrics(predictions: list[str], references: list[str]) -> dict[str, float]:
    """``place_acc``: the share of captions that state their conformer's place among the molecule's conformers;
    ``place_chance``: mean 1/k over the references (k conformers); ``conformer_rg_mae`` and ``conformer_rg_valid``:
    the radius of gyration's error where a caption states one, and the share that do."""
    pairs = [(read_caption(p), read_caption(r)) for p, r in zip(predictions, references, strict=True)]
    metrics = {"place_acc": float(np.mean([p.place is not None and p.place == r.place for p, r in pairs]))}
    metrics["place_chance"] = float(np.mean([1 / (r.conformers or 1) for _, r in pairs]))
    stated = [abs(p.radius - r.radius) for p, r in pairs if p.radius is not None and r.radius is not None]
    metrics["conformer_rg_valid"] = len(stated) / len(pairs)
    if stated:
        metrics["conformer_rg_mae"] = float(np.mean(stated))
    return metrics


@hookimpl
def molbridge_register_tasks(register):
    register(
        "captioning",
        CaptioningTask,
        CaptioningConfig,
        description="stage 2: the LLM captions molecules; BLEU, ROUGE, METEOR vs a nearest-neighbour baseline",
    )
