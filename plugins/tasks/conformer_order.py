"""The ``conformer_order`` task: teach an encoder which of two conformers of one molecule has more of a fact.

Conformer QA's per-conformer facts (its ``QUESTIONS``: radius of gyration, largest heavy-atom distance, MMFF94
energy above the molecule's lowest conformer, surface area, hydrogen bonds, the GFN2-xTB dipole, gap and energy)
are functions of a conformer's coordinates, but captions teach an encoder few of them: stage 1 on conformer
captions leaves the energy out of reach of conformer QA. This stage teaches the named facts directly, through the
one loop, so that a later stage starts from its encoder (``train.init_from=stage:conformer_order``).

The model is the encoder (``encoder.*``, as every stage names it) and one linear score per fact on its
mean-pooled positions (``order_head``). Training: each item is a molecule with two of its conformers (a seeded
draw per (seed, epoch, molecule), so identical after a resume); the loss is the logistic loss of the two scores'
difference against which conformer has more of the fact (a tie: no order, target 0.5), averaged over the facts a
molecule's two conformers have. A ranking cancels the molecule's own level, as conformer QA's within-molecule
error does, so the encoder is taught how conformers differ, not which molecule it sees.

Evaluation, deterministic: every pair of conformers of each molecule of the split whose conformers do not all
share the fact's value; per molecule, the fraction of its pairs whose scores order them as the fact does (pairs
with equal values skipped). ``order_acc/FACT`` is the mean over molecules (chance 0.5: a model blind to coordinates
scores every conformer of a molecule alike and orders no pair right; a tie counts half), ``order_acc`` the mean over
facts; per-molecule values go to ``items-SPLIT.json`` for ``bench compare --aggregate``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from molbridge.core import batch as keys
from molbridge.core import distributed, hookimpl
from molbridge.core.contracts import Components, StepOutput, Task, write_items
from molbridge.core.data import MoleculeDataset
from molbridge.core.errors import MolbridgeError
from molbridge.plugins.tasks.conformer_qa import QUESTIONS, value_table
from molbridge.plugins.tasks.conformer_retrieval import TIE_ATOL, TIE_RTOL

SPLITS = ("train", "valid", "test")
#: Batch keys: which conformer of each pair has more of each fact (B, facts), and where that is known.
LARGER, KNOWN = "order_larger", "order_known"


@dataclass
class ConformerOrderConfig:
    name: str = "conformer_order"
    facts: list[str] = field(default_factory=lambda: ["relative_energy"])
    """Conformer facts to order by, of conformer QA's properties: radius_of_gyration, max_distance,
    relative_energy (MMFF94), surface_area, intramolecular_hbonds, xtb_dipole, xtb_gap, xtb_relative_energy (the
    xTB ones need the dataset's per-conformer values, `bench data conformer-properties`)."""

    def problems(self) -> list[str]:
        unknown = sorted(set(self.facts) - set(QUESTIONS))
        if unknown:
            return [f"task.facts: unknown {unknown}; choose from {', '.join(QUESTIONS)}"]
        return ["task.facts: empty; name at least one fact to order conformers by"] if not self.facts else []


def pairs_ordered_right(scores: np.ndarray, values: np.ndarray) -> np.ndarray:
    """For each pair (i < j) of conformers whose ``values`` differ (NaN: left out), 1 if ``scores`` order them
    the same way, 0.5 if the scores tie (within float noise, as in ``conformer_retrieval``: one representation
    computed in batches of another padding must not win by it), else 0."""
    right = []
    for i, j in itertools.combinations(range(len(values)), 2):
        if np.isfinite(values[i]) and np.isfinite(values[j]) and values[i] != values[j]:
            tied = np.isclose(scores[i], scores[j], rtol=TIE_RTOL, atol=TIE_ATOL)
            agree = 0.0 if tied else np.sign(scores[i] - scores[j]) * np.sign(values[i] - values[j])
            right.append(0.5 * (agree + 1.0))
    return np.array(right, dtype=np.float64)


class ConformerPairs(Dataset):
    """Molecules of a split whose conformers differ in at least one of the facts, with the facts' values.

    ``self[i]`` is the molecule as two of its conformers, [first, second] (MoleculeDataset items); the first also
    holds, per fact, which has more (``order_larger``: 1, 0, 0.5 for a tie) and whether both know it
    (``order_known``). Training draws the two conformers by (seed, epoch, molecule); evaluation reads
    :meth:`conformers` (all of them) instead."""

    def __init__(self, molecules: MoleculeDataset, facts: Sequence[str]):
        self.molecules, self.facts = molecules, list(facts)
        self.values: list[np.ndarray] = []
        kept = []
        rows = molecules.indices
        for i, row in enumerate(tqdm(rows, desc="conformer facts", unit="mol", leave=False, mininterval=2)):
            if len(molecules.store[int(row)].conformers) < 2:
                continue
            table = value_table(molecules.store, int(row), self.facts)
            if any(_varies(table[:, f]) for f in range(len(self.facts))):
                kept.append(i)
                self.values.append(table)
        self.kept = np.array(kept, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.kept)

    def set_epoch(self, epoch: int) -> None:
        self.molecules.set_epoch(epoch)

    def sizes(self) -> np.ndarray:
        return self.molecules.sizes()[self.kept]

    def __getitem__(self, i: int) -> list[dict[str, Any]]:
        row = int(self.molecules.indices[self.kept[i]])
        values = self.values[i]
        draw = np.random.default_rng((self.molecules.seed, self.molecules.epoch, row))
        a, b = (int(k) for k in draw.choice(len(values), 2, replace=False))
        known = np.isfinite(values[a]) & np.isfinite(values[b])
        larger = np.where(values[a] == values[b], 0.5, (values[a] > values[b]).astype(np.float64))
        first = self.molecules.item(int(self.kept[i]), a) | {
            LARGER: np.where(known, larger, 0.0).astype(np.float32),
            KNOWN: known,
        }
        return [first, self.molecules.item(int(self.kept[i]), b)]

    def conformers(self, i: int) -> list[dict[str, Any]]:
        """Every conformer of kept molecule ``i`` as a MoleculeDataset item."""
        return [self.molecules.item(int(self.kept[i]), k) for k in range(len(self.values[i]))]

    def mol_id(self, i: int) -> str:
        return self.molecules.store[int(self.molecules.indices[self.kept[i]])].id


def _varies(column: np.ndarray) -> bool:
    return len(set(column[np.isfinite(column)].tolist())) >= 2


def _mean_or_none(values: np.ndarray) -> float | None:
    return float(values.mean()) if len(values) else None


def _mean(values: Sequence[float]) -> float:
    """The mean, NaN for none (a split too small to hold a molecule whose conformers differ)."""
    return float(np.mean(values)) if len(values) else float("nan")


class OrderModel(nn.Module):
    """The encoder and one linear score per fact on its mean-pooled positions (padding excluded)."""

    def __init__(self, encoder: nn.Module, facts: int):
        super().__init__()
        self.encoder = encoder
        self.order_head = nn.Linear(encoder.output_dim, facts)

    def forward(self, inputs: Any) -> Tensor:
        out = self.encoder(inputs)
        real = (~out.padding_mask).unsqueeze(-1).to(out.atom_embeddings.dtype)
        pooled = (out.atom_embeddings * real).sum(1) / real.sum(1).clamp(min=1)
        return self.order_head(pooled).float()


class ConformerOrderTask(Task):
    """Teach an encoder the order of a molecule's conformers by named facts (see the module docstring)."""

    monitor = ("order_acc", "max")
    report_metrics = ("test/order_acc", "test/order_acc/*")

    def __init__(self, config: ConformerOrderConfig, recipe, registry=None):
        self.config, self.recipe = config, recipe
        self._splits: dict[str, ConformerPairs] | None = None
        self.encoder: nn.Module | None = None
        self._last_items: tuple[str, dict[str, Any]] | None = None

    @property
    def splits(self) -> dict[str, ConformerPairs]:
        if self._splits is None:
            data = self.recipe.data
            self._splits = {
                split: ConformerPairs(
                    MoleculeDataset.from_split(
                        data.name,
                        split,
                        data.split,
                        seed=self.recipe.seed,
                        limit=data.limit if split == "train" else data.eval_limit,
                    ),
                    self.config.facts,
                )
                for split in SPLITS
            }
            if not len(self._splits["train"]):
                raise MolbridgeError(
                    f"conformer_order: no training molecule of {data.name} has two conformers that differ in "
                    f"{', '.join(self.config.facts)}"
                )
        return self._splits

    def datasets(self):
        return self.splits

    def build_model(self, components: Components) -> OrderModel:
        if components.encoder is None:
            raise MolbridgeError("conformer_order needs an encoder section in the recipe")
        if components.projector is not None or components.llm is not None:
            raise MolbridgeError("conformer_order trains an encoder alone: remove the projector and llm sections")
        self.encoder = components.encoder
        return self.assemble(self.config, self.encoder, None, None)

    @classmethod
    def assemble(cls, config, encoder, projector, llm) -> OrderModel:
        return OrderModel(encoder, len(config.facts))

    def _inputs(self, items: Sequence[dict[str, Any]]) -> Any:
        return self.encoder.collate([self.encoder.featurize_item(item) for item in items])

    def collate(self, samples):
        """Samples are [first, second] conformer items of a molecule: the first conformers of the batch, then the
        second ones, in one encoder batch."""
        firsts = [first for first, _ in samples]
        return {
            keys.ENCODER_INPUT: self._inputs(firsts + [second for _, second in samples]),
            LARGER: torch.from_numpy(np.stack([s[LARGER] for s in firsts])),
            KNOWN: torch.from_numpy(np.stack([s[KNOWN] for s in firsts])),
            keys.MOL_ID: [s[keys.MOL_ID] for s in firsts],
        }

    def training_step(self, model, batch) -> StepOutput:
        scores = model(batch[keys.ENCODER_INPUT])
        half = len(scores) // 2
        known = batch[KNOWN].to(scores.dtype)
        margin = scores[:half] - scores[half:]
        terms = F.binary_cross_entropy_with_logits(margin, batch[LARGER], reduction="none")
        return StepOutput((terms * known).sum() / known.sum().clamp(min=1), {})

    @torch.no_grad()
    def evaluate(self, model, fabric, split: str) -> dict[str, float]:
        was_training = model.training
        model.eval()
        data = self.splits[split]
        mine = distributed.shard(list(range(len(data))))
        items = [(i, item) for i in mine for item in data.conformers(i)]
        size = self.recipe.data.eval_batch_size
        scores = [
            model(fabric.to_device(self._inputs([item for _, item in items[start : start + size]]))).cpu().numpy()
            for start in range(0, len(items), size)
        ]
        table = np.concatenate(scores) if scores else np.zeros((0, len(data.facts)))
        owner = np.array([i for i, _ in items])
        right = [
            [
                _mean_or_none(pairs_ordered_right(table[owner == i, f], data.values[i][:, f]))
                for f in range(len(data.facts))
            ]
            for i in mine
        ]
        per_molecule = distributed.gather(right)  # in molecule order again
        model.train(was_training)
        columns = {f"order_acc/{fact}": [m[f] for m in per_molecule] for f, fact in enumerate(data.facts)}
        self._last_items = (split, {"ids": [data.mol_id(i) for i in range(len(data))], "values": columns})
        metrics = {name: _mean([v for v in column if v is not None]) for name, column in columns.items()}
        metrics["order_acc"] = _mean(list(metrics.values()))
        return metrics | {
            f"order_molecules/{fact}": float(sum(v is not None for v in columns[f"order_acc/{fact}"]))
            for fact in data.facts
        }

    def write_outputs(self, folder: Path) -> list[Path]:
        """``items-<split>.json``: per molecule (its id), the fraction of its pairs ordered right per fact."""
        if self._last_items is None:
            return []
        split, content = self._last_items
        return [write_items(folder, split, content["ids"], content["values"])]

    def describe(self) -> dict[str, Any]:
        return {
            "dataset": self.recipe.data.name,
            "split": self.recipe.data.split,
            "facts": list(self.config.facts),
            "sizes": {k: len(v) for k, v in self.splits.items()},
            "protocol": "every pair of conformers of each molecule whose conformers differ in the fact; per "
            "molecule the fraction ordered right by the fact's score (ties half), mean over molecules; chance 0.5",
        }


@hookimpl
def molbridge_register_tasks(register):
    register(
        "conformer_order",
        ConformerOrderTask,
        ConformerOrderConfig,
        description="teach an encoder which of two conformers has more of a fact (energy, dipole, ...); 1D: 0.5",
    )
