"""Conformer retrieval: given the caption of one conformer, find that conformer among its molecule's conformers.

The task 3D perception is needed for. Training is stage 1 (the retrieval task's losses) on conformer captions: each
step draws a conformer per molecule and captions it from its own coordinates (:mod:`molbridge.core.data.
conformer_facts`: its place among the molecule's conformers by radius of gyration, its radius, largest heavy-atom
distance and shape). Evaluation takes every molecule of the split with two or more conformers and, for the caption
of each of its k conformers, ranks those k conformers by the model's similarity:

- ``conformer_acc``: the share of captions whose own conformer is ranked first (a tie at the top shares the credit:
  1/t for t conformers scored equal within float noise), its per-item values written to ``items-SPLIT.json``
  (``bench compare --aggregate`` gives intervals and paired verdicts from them);
- ``conformer_chance``: the mean of 1/k, what any model that cannot see coordinates scores (the SMILES control
  gives all conformers of a molecule one representation: a k-way tie, credit 1/k, exactly chance);
- ``conformer_skill``: (acc - chance) / (1 - chance), 0 at chance, 1 when always right.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from molbridge.core import batch as keys
from molbridge.core import hookimpl
from molbridge.core.contracts import write_items
from molbridge.core.data import MoleculeDataset
from molbridge.core.data.conformer_facts import CONFORMER_TEXT_FIELDS, captions_of
from molbridge.core.errors import MolbridgeError
from molbridge.plugins.tasks.retrieval import RetrievalConfig, RetrievalTask
from molbridge.plugins.tasks.retrieval_metrics import _max_over_queries

#: Scores this close to the best count as tied with it: the same representation computed in batches of another
#: padding differs by float noise, and a model that cannot tell conformers apart must not win by it.
TIE_RTOL, TIE_ATOL = 1e-4, 1e-5


def caption_credit(sim: torch.Tensor) -> list[float]:
    """``sim`` (k conformers x their k captions): per caption, 1/t if its conformer is among the t scored best
    (equal within float noise), else 0."""
    credit = []
    for k in range(sim.shape[1]):
        scores = sim[:, k]
        tied = torch.isclose(scores, scores.max(), rtol=TIE_RTOL, atol=TIE_ATOL)
        credit.append(float(tied[k]) / int(tied.sum()))
    return credit


class ConformerCaptions(MoleculeDataset):
    """Molecules whose text is the caption of the conformer the item holds (computed from its coordinates).

    A training split (``augment``) gives each molecule as the list of all its conformers, captioned: the batch
    then holds the conformers of a molecule side by side, and the contrastive loss must tell them apart (with one
    random conformer per molecule, the other molecules' would be the only negatives, which the SMILES separates).
    ``text_field`` is one of :data:`CONFORMER_TEXT_FIELDS`."""

    def __init__(self, store, indices=None, *, text_field: str = "conformer", **options: Any):
        super().__init__(store, indices, text_field=text_field, **options)

    def item(self, i: int, conformer: int | None = None) -> Any:
        captions = captions_of(self.store[int(self.indices[i])], self.text_field)
        plain = super().item
        if conformer is None and self.augment:
            return [plain(i, k) | {keys.TEXT: caption} for k, caption in enumerate(captions)]
        item = plain(i, 0 if conformer is None else conformer)
        return item | {keys.TEXT: captions[item["conformer"]]}

    def conformer_counts(self) -> list[int]:
        return [len(self.store[int(row)].conformers) for row in self.indices]


@dataclass
class ConformerRetrievalConfig(RetrievalConfig):
    name: str = "conformer_retrieval"
    text_field: str = "conformer"
    """The caption is computed per conformer (``molbridge.core.data.conformer_facts``), not read: ``conformer``
    (place by radius of gyration, radius, largest distance, shape) or ``conformer_energy`` (also its MMFF94
    energy above the molecule's lowest conformer)."""
    baseline: bool = False
    """Fixed: no fingerprint baseline; the 1D ceiling is chance, reported as ``conformer_chance``."""


class ConformerRetrievalTask(RetrievalTask):
    monitor = ("conformer_acc", "max")
    report_metrics = ("test/conformer_acc", "test/conformer_chance", "test/conformer_skill")
    dataset_class = ConformerCaptions

    def __init__(self, config: ConformerRetrievalConfig, recipe, registry=None):
        wrong = {"task.baseline": config.baseline, "task.eval_text_field": config.eval_text_field}
        if any(wrong.values()) or config.text_field not in CONFORMER_TEXT_FIELDS:
            raise MolbridgeError(
                "conformer_retrieval captions each conformer itself: task.text_field must be one of "
                f"{', '.join(CONFORMER_TEXT_FIELDS)} and task.baseline and task.eval_text_field off "
                f"(got text_field={config.text_field!r}, {', '.join(f'{k}={v}' for k, v in wrong.items() if v)})"
            )
        super().__init__(config, recipe, registry)
        self._last_items: tuple[str, dict[str, Any]] | None = None

    def collate(self, samples):
        """A training sample is a molecule's conformers (a list): they enter the batch side by side."""
        return super().collate([s for sample in samples for s in (sample if isinstance(sample, list) else [sample])])

    def texts_by_key(self) -> dict[str, str]:
        """Every caption of every conformer of the splits, keyed by itself (a locked tower encodes each once)."""
        captions = {}
        for dataset in self.splits.values():
            for row in dataset.indices:
                mol = dataset.store[int(row)]
                captions.update((caption, caption) for caption in captions_of(mol, dataset.text_field))
        return captions

    def text_key(self, sample: dict[str, Any]) -> str:
        return sample[keys.TEXT]

    def _truncation(self) -> dict[str, Any]:
        return {"note": "conformer captions are one short sentence (about 40 tokens): none is cut"}

    @torch.no_grad()
    def evaluate(self, model, fabric, split: str) -> dict[str, float]:
        model.eval()
        dataset: ConformerCaptions = self.splits[split]  # type: ignore[assignment]
        counts = dataset.conformer_counts()
        pairs = [(i, k) for i, count in enumerate(counts) if count > 1 for k in range(count)]
        if not pairs:
            raise MolbridgeError(f"conformer_retrieval: no molecule of the {split} split has two conformers")
        sizes = dataset.sizes()
        mol, text = self.encode(
            fabric, [int(sizes[i]) for i, _ in pairs], lambda r: dataset.item(*pairs[r]), "encode conformers"
        )
        credit, chance, ids = [], [], []
        start = 0
        while start < len(pairs):
            i, count = pairs[start][0], counts[pairs[start][0]]
            credit += caption_credit(_max_over_queries(mol[start : start + count], text[start : start + count]))
            chance += [1.0 / count] * count
            ids += [f"{dataset.store[int(dataset.indices[i])].id}#{k}" for k in range(count)]
            start += count
        acc, base = sum(credit) / len(credit), sum(chance) / len(chance)
        self._last_items = (split, {"ids": ids, "values": {"conformer_acc": credit, "conformer_chance": chance}})
        model.train()
        return {
            "conformer_acc": acc,
            "conformer_chance": base,
            "conformer_skill": (acc - base) / (1 - base),
            "conformer_captions": float(len(pairs)),
        }

    def write_outputs(self, folder: Path) -> list[Path]:
        """``items-<split>.json``: each caption's credit and chance (ids ``<molecule id>#<conformer>``)."""
        if self._last_items is None:
            return []
        split, content = self._last_items
        return [write_items(folder, split, content["ids"], content["values"])]

    def describe(self) -> dict[str, Any]:
        return super().describe() | {
            "text_field": "conformer captions (molbridge.core.data.conformer_facts)",
            "protocol": "for each caption of a conformer of a molecule with k >= 2 conformers, its k conformers "
            "ranked by similarity; acc with ties sharing credit, against chance (mean 1/k)",
        }


@hookimpl
def molbridge_register_tasks(register):
    register(
        "conformer_retrieval",
        ConformerRetrievalTask,
        ConformerRetrievalConfig,
        description="stage 1 on conformer captions; find a caption's conformer among its molecule's (1D: chance)",
    )
