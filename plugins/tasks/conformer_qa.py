"""Conformer QA: numeric questions about one conformer, scored against the best a model blind to coordinates can do.

Each question asks for a value of the conformer whose soft tokens the LLM reads:

- ``radius_of_gyration`` and ``max_distance`` (the largest heavy-atom distance), in angstrom, computed from the
  conformer's coordinates (:mod:`molbridge.core.data.conformer_facts`);
- ``relative_energy``: its MMFF94 energy above the lowest-energy stored conformer of the molecule, kcal/mol (the
  dataset's per-conformer force-field energies; a conformer without one is not asked);
- on request (``task.properties``; the default is the three above): ``surface_area``, its solvent-accessible
  surface area in square angstrom, and ``intramolecular_hbonds``, the hydrogen bonds it makes within itself
  (both from its coordinates, :mod:`molbridge.core.data.conformer_facts`); ``xtb_dipole`` (debye), ``xtb_gap``
  (eV) and ``xtb_relative_energy`` (kcal/mol above the molecule's lowest conformer), GFN2-xTB on each conformer
  (the dataset's per-conformer values, :mod:`molbridge.core.data.conformer_properties`).

Training asks about every conformer of every training molecule; evaluation about every conformer of each molecule
with two or more. A model that cannot see coordinates (the SMILES control) gives all conformers of a molecule one
answer, and the best one answer is the molecule's mean over its conformers. So, per property, next to ``qa``'s
``mae``, ``valid_rate`` and training-mean ``baseline_mae``:

- ``molecule_mean_mae``: the MAE of answering each molecule's own mean (an oracle 1D model: the 1D ceiling);
- ``within_mae``: the MAE once each molecule's mean is taken out of both its answers and its references, over the
  molecules whose every conformer got a number: what the model says about how its conformers differ. One answer
  for all conformers scores exactly the ``molecule_mean_mae`` of those molecules; only reading coordinates goes
  below it;
- ``conformer_skill`` (mean over properties): complete_rate x (1 - within_mae / molecule_mean_mae of the same
  molecules); 0 for a model blind to coordinates by construction, 1 when every difference is exact;
- ``choice_acc`` (per property; ``conformer_choice_acc`` over all): generation aside, for each reference answer of
  a molecule's k conformers, the conformer under which the model finds it likeliest (teacher-forced
  log-likelihood of the answer) is its own; tied conformers share the credit, as in ``conformer_retrieval``, so a
  model blind to coordinates scores ``choice_chance`` (the mean of 1/k) exactly. It sees what greedy digits hide:
  a preference too small to change a generated number. Molecules whose references repeat a value are left out.

Per-item values (``within_mae``, ``molecule_mean_mae`` and ``choice_acc``, one item per question, null for other
properties' questions and for molecules left out) go to ``items-SPLIT.json`` for ``bench compare --aggregate``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from molbridge.core import batch as keys
from molbridge.core import distributed, hookimpl
from molbridge.core.contracts import write_items
from molbridge.core.data.conformer_facts import (
    conformer_facts,
    intramolecular_hbonds,
    relative_energies,
    surface_area,
)
from molbridge.core.errors import MolbridgeError
from molbridge.plugins.tasks.conformer_retrieval import caption_credit
from molbridge.plugins.tasks.llm_stage import Example
from molbridge.plugins.tasks.numbers import PARSERS
from molbridge.plugins.tasks.qa import QAConfig, QATask

QUESTIONS = {
    "radius_of_gyration": "What is the radius of gyration of this conformer, in angstrom?",
    "max_distance": "What is the largest distance between two heavy atoms of this conformer, in angstrom?",
    "relative_energy": "How far is this conformer above the molecule's lowest-energy conformer, in kcal/mol (MMFF94)?",
    "surface_area": "What is the solvent-accessible surface area of this conformer, in square angstrom?",
    "intramolecular_hbonds": "How many hydrogen bonds does this conformer make within itself?",
    "xtb_dipole": "What is the dipole moment of this conformer, in debye (GFN2-xTB)?",
    "xtb_gap": "What is the HOMO-LUMO gap of this conformer, in eV (GFN2-xTB)?",
    "xtb_relative_energy": "How far is this conformer above the molecule's lowest-energy conformer, in kcal/mol "
    "(GFN2-xTB)?",
}
#: What ``task.properties: null`` asks (the results table's three); the others only when named.
DEFAULT_PROPERTIES = ("radius_of_gyration", "max_distance", "relative_energy")
_GEOMETRIC = {"surface_area": surface_area, "intramolecular_hbonds": intramolecular_hbonds}
#: The dataset's per-conformer xTB values (:mod:`molbridge.core.data.conformer_properties`) a question can name.
XTB_PROPERTIES = ("xtb_dipole", "xtb_gap", "xtb_relative_energy")
EV_TO_KCAL_PER_MOL = 23.060548


def _xtb_values(xtb: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per conformer, each of :data:`XTB_PROPERTIES` from the dataset's xTB columns (NaN where xTB failed)."""
    relative = relative_energies(xtb["xtb_energy"]) * EV_TO_KCAL_PER_MOL
    return {"xtb_dipole": xtb["xtb_dipole"], "xtb_gap": xtb["xtb_gap"], "xtb_relative_energy": relative}


def conformer_values(
    atomic_numbers: np.ndarray,
    conformers: np.ndarray,
    energies: np.ndarray,
    extra: Sequence[str] = (),
    xtb: Mapping[str, np.ndarray] | None = None,
) -> list[dict]:
    """Per conformer, the value of each default property it can be asked about (see the module docstring), and of
    the on-request properties named in ``extra``; those of :data:`XTB_PROPERTIES` come from ``xtb``, the
    molecule's per-conformer xTB columns (``store.conformer_properties(i)``). A value that is not known (NaN) is
    left out, so it is not asked."""
    facts = [conformer_facts(atomic_numbers, c) for c in conformers]
    geometric = [name for name in extra if name in _GEOMETRIC]
    stored = {n: v for n, v in _xtb_values(xtb).items() if n in extra} if xtb is not None else {}
    if missing := [name for name in extra if name in XTB_PROPERTIES and name not in stored]:
        raise MolbridgeError(f"conformer_values: {missing} need the molecule's per-conformer xTB values (xtb=...)")
    values = []
    for k, (f, energy) in enumerate(zip(facts, relative_energies(energies), strict=True)):
        entry = {"radius_of_gyration": f.radius_of_gyration, "max_distance": f.max_distance}
        if np.isfinite(energy):
            entry["relative_energy"] = float(energy)
        entry |= {name: float(_GEOMETRIC[name](atomic_numbers, conformers[k])) for name in geometric}
        entry |= {name: float(column[k]) for name, column in stored.items() if np.isfinite(column[k])}
        values.append(entry)
    return values


def value_table(store, row: int, names: Sequence[str]) -> np.ndarray:
    """(conformers, len(names)): each named property (of :data:`QUESTIONS`) of each conformer of molecule ``row``
    of ``store``, NaN where it is not known."""
    mol = store[int(row)]
    extra = [name for name in names if name not in DEFAULT_PROPERTIES]
    xtb = store.conformer_properties(int(row)) if set(extra) & set(XTB_PROPERTIES) else None
    values = conformer_values(mol.atomic_numbers, mol.conformers, mol.mmff_energy, extra, xtb)
    return np.array([[entry.get(name, np.nan) for name in names] for entry in values], dtype=np.float64)


@dataclass
class ConformerQAConfig(QAConfig):
    name: str = "conformer_qa"
    properties: list[str] | None = None
    """Properties to ask about, of radius_of_gyration, max_distance, relative_energy, surface_area,
    intramolecular_hbonds, xtb_dipole, xtb_gap and xtb_relative_energy (null: the first three; the xTB ones need
    the dataset's per-conformer values, `bench data conformer-properties`)."""

    def problems(self) -> list[str]:
        unknown = sorted(set(self.properties or ()) - set(QUESTIONS))
        found = [f"task.properties: unknown {unknown}; choose from {', '.join(QUESTIONS)}"] if unknown else []
        if self.tasks:
            found.append("task.tasks: conformer_qa asks its own questions; use task.properties")
        return super().problems() + found


class ConformerQATask(QATask):
    monitor = ("conformer_skill", "max")
    report_metrics = (
        "test/conformer_skill",
        "test/conformer_choice_acc",
        "test/conformer_choice_chance",
        "test/*/within_mae",
        "test/*/molecule_mean_mae",
    )
    every_conformer = True

    def properties(self) -> list[str]:
        return list(self.config.properties or DEFAULT_PROPERTIES)

    def is_text(self, task: str) -> bool:
        return False

    def examples(self, split: str) -> list[Example]:
        """Every conformer's questions (evaluation: of molecules with two or more), in molecule order."""
        molecules, wanted = self.molecules[split], self.properties()
        found: list[Example] = []
        per_property: dict[str, int] = {}
        for i, row in enumerate(molecules.indices):
            mol = molecules.store[int(row)]
            if split != "train" and len(mol.conformers) < 2:
                continue
            if split == "valid" and min(per_property.get(p, 0) for p in wanted) >= self.config.valid_per_task:
                break  # whole molecules: every conformer of a molecule asked, or none
            for k, values in enumerate(value_table(molecules.store, int(row), wanted)):
                for prop, value in zip(wanted, values, strict=True):
                    if np.isfinite(value):
                        found.append(Example(i, QUESTIONS[prop], f"{value:.2f}", prop, conformer=k))
                        per_property[prop] = per_property.get(prop, 0) + 1
        if not found:
            raise MolbridgeError(f"conformer_qa: no molecule of the {split} split has two conformers to ask about")
        return found

    def _train_means(self) -> dict[str, float]:
        if not hasattr(self, "_means"):
            values: dict[str, list[float]] = {}
            for e in self.splits["train"].examples:
                values.setdefault(e.task, []).append(float(e.response))
            self._means = {task: float(np.mean(v)) for task, v in values.items()}
        return self._means

    def score(self, split: str, examples: list[Example], answers: list[str]) -> dict[str, float]:
        metrics = super().score(split, examples, answers)
        within, spread = self.within_errors(examples, answers)
        skills = []
        for prop in dict.fromkeys(e.task for e in examples):
            rows = [i for i, e in enumerate(examples) if e.task == prop]
            done = [i for i in rows if within[i] is not None]
            complete = len(done) / len(rows)
            metrics[f"{prop}/complete_rate"] = complete
            if not done:
                skills.append(0.0)
                continue
            ours, ceiling = float(np.mean([within[i] for i in done])), float(np.mean([spread[i] for i in done]))
            metrics |= {f"{prop}/within_mae": ours, f"{prop}/molecule_mean_mae": ceiling}
            skills.append(complete * (1 - ours / ceiling) if ceiling > 0 else 0.0)
        metrics["conformer_skill"] = float(np.mean(skills))
        self._last_items = (split, examples, {"within_mae": within, "molecule_mean_mae": spread})
        return metrics

    @torch.no_grad()
    def evaluate(self, model, fabric, split: str) -> dict[str, float]:
        metrics = super().evaluate(model, fabric, split)
        model.eval()
        credit, chance = self._choices(getattr(model, "module", model), fabric, split)
        model.train()
        _, examples, values = self._last_items
        values["choice_acc"] = credit
        for prop in dict.fromkeys(e.task for e in examples):
            rows = [i for i, e in enumerate(examples) if e.task == prop and credit[i] is not None]
            if rows:
                metrics[f"{prop}/choice_acc"] = float(np.mean([credit[i] for i in rows]))
                metrics[f"{prop}/choice_chance"] = float(np.mean([chance[i] for i in rows]))
        rows = [i for i, c in enumerate(credit) if c is not None]
        if rows:
            metrics["conformer_choice_acc"] = float(np.mean([credit[i] for i in rows]))
            metrics["conformer_choice_chance"] = float(np.mean([chance[i] for i in rows]))
        return metrics

    def _choices(self, module, fabric, split: str) -> tuple[list, list]:
        """Per question, its ``choice_acc`` credit and chance (None where its molecule's references repeat a value):
        every reference of a molecule's conformers scored under every one of them. Not sharded under DDP."""
        examples = self.splits[split].examples
        groups = [rows for rows in _groups(examples).values() if len({examples[i].response for i in rows}) == len(rows)]
        pairs = [(i, j) for rows in groups for i in rows for j in rows]  # conformer of i, reference of j
        answers = [(i, examples[j].response) for i, j in pairs]
        scores = dict(zip(pairs, self.response_log_likelihoods(module, fabric, split, answers), strict=True))
        credit: list[float | None] = [None] * len(examples)
        chance: list[float | None] = [None] * len(examples)
        for rows in groups:
            likelihood = torch.tensor([[scores[(i, j)] for j in rows] for i in rows])  # conformers x references
            for j, c in zip(rows, caption_credit(likelihood), strict=True):
                credit[j], chance[j] = c, 1 / len(rows)
        return credit, chance

    @torch.no_grad()
    def response_log_likelihoods(self, module, fabric, split: str, pairs: list[tuple[int, str]]) -> list[float]:
        """Per ``(question, response)`` pair (the question's index in ``split``): the summed log-probability of the
        response (and EOS) given the question's prompt and its conformer's soft tokens, teacher-forced. What
        ``choice_acc`` compares, and what a decoding other than generation (a grid of candidate answers) reads.
        Not sharded under DDP."""
        dataset = self.splits[split]
        examples = dataset.examples
        tokens = self._conformer_tokens(module, fabric, dataset, list(dict.fromkeys(i for i, _ in pairs)))
        size = self.recipe.data.eval_batch_size
        scores: list[float] = []
        for start in tqdm(
            range(0, len(pairs), size), desc=f"score answers {split}", leave=False, disable=not fabric.is_global_zero
        ):
            chunk = pairs[start : start + size]
            samples = [dataset.item(examples[i]) | {keys.RESPONSE: response} for i, response in chunk]
            soft = torch.stack([tokens[_conformer(examples[i])] for i, _ in chunk])
            scores += self._log_likelihood(module, fabric, samples, soft).tolist()
        return scores

    def _conformer_tokens(self, module, fabric, dataset, rows: list[int]) -> dict[tuple[int, int | None], Tensor]:
        """The soft tokens of each conformer the questions ``rows`` are about, computed once for all its
        questions and candidate answers."""
        first = {_conformer(dataset.examples[i]): i for i in reversed(rows)}
        conformers = list(first)
        found: dict[tuple[int, int | None], Tensor] = {}
        for batch in distributed.batches(len(conformers), self.recipe.data.eval_batch_size):
            chosen = [conformers[b] for b in batch]
            molecules = fabric.to_device(self._molecules([dataset.item(dataset.examples[first[c]]) for c in chosen]))
            found.update(zip(chosen, module.soft_tokens(molecules), strict=True))
        return found

    def _log_likelihood(self, module, fabric, samples, soft_tokens: Tensor) -> Tensor:
        """Per sample, the summed log-probability of its response (and EOS) given its prompt and soft tokens."""
        responses = [s[keys.RESPONSE] for s in samples]
        batch = fabric.to_device(self.llm.tokenize_batch(self._prompts(samples), responses))
        logits = module.llm(batch["input_ids"], batch["attention_mask"], soft_tokens).logits
        labels = batch["labels"][:, 1:]
        scored = labels != -100  # HF's ignore label: the prompt and the padding
        picked = logits[:, :-1].float().log_softmax(-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (picked * scored).sum(-1).cpu()

    def within_errors(self, examples: list[Example], answers: list[str]) -> tuple[list, list]:
        """Per question: |centred answer - centred reference| (None where a conformer of its molecule got no
        number) and |reference - the molecule's mean reference|, means taken over the molecule's conformers."""
        parse = PARSERS[self.config.number_parser]
        within: list[float | None] = [None] * len(examples)
        spread: list[float | None] = [None] * len(examples)
        for rows in _groups(examples).values():
            targets = np.array([float(examples[i].response) for i in rows])
            centred = targets - targets.mean()
            said = [parse(answers[i], None) for i in rows]
            complete = all(v is not None for v in said)
            answered = np.array(said, dtype=float) - np.mean(said) if complete else None
            for n, i in enumerate(rows):
                spread[i] = abs(float(centred[n])) if complete else None
                within[i] = abs(float(answered[n] - centred[n])) if answered is not None else None
        return within, spread

    def parsed(self, example: Example, answer: str) -> dict[str, Any]:
        return super().parsed(example, answer) | {"conformer": example.conformer}

    def write_outputs(self, folder: Path) -> list[Path]:
        """``answers-<split>.jsonl`` as ``qa``, and ``items-<split>.json``: per question, ``PROP/within_mae``,
        ``PROP/molecule_mean_mae`` and ``PROP/choice_acc`` (ids ``<molecule id>#<conformer>/<property>``)."""
        paths = super().write_outputs(folder)
        if not hasattr(self, "_last_items"):
            return paths
        split, examples, per_item = self._last_items
        molecules = self.molecules[split]
        ids = [f"{molecules.store[int(molecules.indices[e.molecule])].id}#{e.conformer}/{e.task}" for e in examples]
        values = {}
        for prop in dict.fromkeys(e.task for e in examples):
            mine = [e.task == prop for e in examples]
            for name, column in per_item.items():
                values[f"{prop}/{name}"] = [v if m else None for v, m in zip(column, mine, strict=True)]
        return [*paths, write_items(folder, split, ids, values)]

    def describe(self) -> dict[str, Any]:
        return super().describe() | {
            "questions": {prop: QUESTIONS[prop] for prop in self.properties()},
            "protocol": "every conformer of each evaluation molecule with k >= 2 conformers is asked; within_mae "
            "compares answers and references with each molecule's mean removed, against molecule_mean_mae "
            "(answering the molecule's mean: the best a model blind to coordinates can do)",
            "baseline": "predict the training mean of each property (baseline_mae); the molecule's own mean over "
            "its conformers (molecule_mean_mae, the 1D ceiling)",
        }


def _conformer(example: Example) -> tuple[int, int | None]:
    return example.molecule, example.conformer


def _groups(examples: list[Example]) -> dict[tuple[int, str], list[int]]:
    """Question positions by (molecule, property): the conformers of one molecule asked one thing."""
    groups: dict[tuple[int, str], list[int]] = {}
    for i, e in enumerate(examples):
        groups.setdefault((e.molecule, e.task), []).append(i)
    return groups


@hookimpl
def molbridge_register_tasks(register):
    register(
        "conformer_qa",
        ConformerQATask,
        ConformerQAConfig,
        description="stage 3 on per-conformer numbers (Rg, largest distance, MMFF energy); vs the molecule mean",
    )
