"""What stages 2 and 3 share: the molecule enters an LLM as soft tokens, the LLM answers in text.

encoder -> projector (soft tokens) -> the LLM's ``llm_proj`` -> the ``<mol>`` positions of the prompt.
A task supplies (molecule, instruction, response) examples and scores generated answers; this module
builds the model, the batches and the generation loop.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from molbridge.core import batch as keys
from molbridge.core import distributed
from molbridge.core.cache import EncoderCache, conformer_key
from molbridge.core.contracts import Components, EncoderOutput, StepOutput, Task
from molbridge.core.data import MoleculeDataset
from molbridge.core.errors import MolbridgeError
from molbridge.core.recipe import bounded
from molbridge.core.testing import synthetic_encoder_output
from molbridge.plugins.tasks import truncation
from molbridge.plugins.tasks.text_metrics import caption_metrics

SPLITS = ("train", "valid", "test")
CAPTION_TOKENIZERS = ("nltk-words", "reference")


@dataclass
class GenerationOptions:
    """Hugging Face generation settings for one kind of answer (``task.generation.<name>``); null leaves a
    setting to the task's own keys (``max_new_tokens`` ...) and then to the ``llm`` section's defaults."""

    max_new_tokens: int | None = bounded(None, ge=1)
    min_new_tokens: int | None = bounded(None, ge=0)
    """Generate at least this many tokens before EOS may end an answer (3D-MoLM: 32 in stage 2, 16 in stage 3)."""
    num_beams: int | None = bounded(None, ge=1)
    length_penalty: float | None = None
    """Beam search: exponent of the length in the score's normalisation (3D-MoLM: 0.8; > 1 favours longer)."""
    repetition_penalty: float | None = bounded(None, gt=0)
    do_sample: bool | None = None
    temperature: float | None = bounded(None, gt=0)
    top_p: float | None = bounded(None, gt=0, le=1)

    def problems(self) -> list[str]:
        if None not in (self.min_new_tokens, self.max_new_tokens) and self.min_new_tokens > self.max_new_tokens:
            return [f"min_new_tokens={self.min_new_tokens} must be <= max_new_tokens={self.max_new_tokens}"]
        return []


@dataclass
class LLMStageOptions:
    """Recipe keys stages 2 and 3 share (the ``task`` section of ``captioning`` and ``qa``)."""

    generation: dict[str, GenerationOptions] = field(default_factory=dict)
    """Generation settings by answer kind, applied over the task's own keys: ``text`` (answers scored as text),
    ``numeric`` (``qa``'s numbers), then an instruction task's own name (``Caption``, ``HOMO`` ...), each
    over the one before. 3D-MoLM: beams 5, min_new_tokens 32 / 16, length_penalty 0.8, repetition 1.2."""
    max_smiles_chars: int | None = bounded(None, ge=1)
    """Cut the SMILES in the prompt to this many characters (3D-MoLM: 96); null: the whole SMILES. The
    encoder still reads the whole molecule."""
    caption_tokenizer: str = field(default="nltk-words", metadata={"choices": CAPTION_TOKENIZERS})
    """Tokens BLEU and METEOR are computed on: ``nltk-words`` (lower-cased NLTK words, also for ROUGE) or
    ``reference`` (3D-MoLM: the recipe's BERT WordPiece in stage 2, the LLM's tokenizer in stage 3; ROUGE on
    the raw text with rouge-score's own tokenizer)."""


@dataclass
class Example:
    """One training or evaluation example: a molecule (dataset position), an instruction, the answer."""

    molecule: int
    instruction: str
    response: str
    task: str
    subset: str | None = None
    """The sub-dataset of the 3D-MoLM release the record comes from (stage 3's mixture unit), if any."""
    conformer: int | None = None
    """The conformer the question is about (None: the one the molecule dataset gives, drawn when it augments)."""


class ExampleDataset(Dataset):
    """Examples over one split's molecules; items are the molecule's item plus the example's text."""

    def __init__(self, molecules: MoleculeDataset, examples: Sequence[Example]):
        self.molecules, self.examples = molecules, list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def set_epoch(self, epoch: int) -> None:  # the conformer draw of the molecules
        self.molecules.set_epoch(epoch)

    def sizes(self) -> np.ndarray:
        """Atoms of each example's molecule (size-bucketed batching)."""
        return self.molecules.sizes()[[e.molecule for e in self.examples]]

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.item(self.examples[i])

    def item(self, example: Example) -> dict[str, Any]:
        return self.molecules.item(example.molecule, example.conformer) | {
            keys.INSTRUCTION: example.instruction,
            keys.RESPONSE: example.response,
            keys.TASK_NAME: example.task,
        }


class MolLLM(nn.Module):
    """Encoder + projector + LLM; ``forward(batch)`` is the response-only LM loss."""

    def __init__(self, encoder: nn.Module, projector: nn.Module, llm: nn.Module):
        super().__init__()
        self.encoder, self.projector, self.llm = encoder, projector, llm

    def encoded(self, batch: dict) -> EncoderOutput:
        """The encoder's outputs of the batch's molecules: the frozen encoder's cached ones when the batch carries
        them (``ENCODED_*``), else computed."""
        if keys.ENCODED_ATOMS in batch:
            return EncoderOutput(
                batch[keys.ENCODED_ATOMS], batch[keys.ENCODED_PADDING_MASK], batch[keys.ENCODED_POOLED]
            )
        return self.encoder(batch[keys.ENCODER_INPUT])

    def soft_tokens(self, batch: dict) -> torch.Tensor:
        """The projector's tokens of the batch's molecules."""
        return self.projector(self.encoded(batch))

    def forward(self, batch: dict) -> torch.Tensor:
        out = self.llm(
            batch[keys.INPUT_IDS], batch[keys.ATTENTION_MASK], self.soft_tokens(batch), labels=batch[keys.LABELS]
        )
        return out.loss

    @torch.no_grad()
    def generate(self, batch: dict, **settings: Any) -> list[str]:
        return self.llm.generate(batch[keys.INPUT_IDS], batch[keys.ATTENTION_MASK], self.soft_tokens(batch), **settings)


def spread(vectors: torch.Tensor) -> float:
    """Mean distance between two rows (each flattened) over their mean norm: near 0 when what made them ignores
    which molecule it was given."""
    flat = vectors.flatten(1).double()
    return float(torch.pdist(flat).mean() / flat.norm(dim=1).mean().clamp_min(1e-12))


def freeze_unused(projector: nn.Module, input_dim: int) -> list[str]:
    """Freeze the projector parameters its soft tokens do not depend on (e.g. the stage-1 text heads).

    Found by one backward pass on a synthetic encoder output, so it holds for any projector: DDP rejects
    parameters that get no gradient, and the optimizer should not carry them. Returns their names.
    """
    was_training = projector.training
    projector.eval()
    device = next(projector.parameters()).device
    with torch.device("cpu"):  # its seeded generator is a CPU one, whatever device context the caller holds
        synthetic = synthetic_encoder_output([3, 5], input_dim)
    encoded = EncoderOutput(
        synthetic.atom_embeddings.to(device), synthetic.padding_mask.to(device), synthetic.pooled.to(device)
    )
    projector(encoded).float().sum().backward()
    unused = [name for name, p in projector.named_parameters() if p.requires_grad and p.grad is None]
    for name, p in projector.named_parameters():
        p.grad = None
        if name in unused:
            p.requires_grad_(False)
    projector.train(was_training)
    return unused


class LLMStageTask(Task):
    """Base of the ``captioning`` and ``qa`` tasks: subclasses define ``examples(split)`` and ``score``.

    Data is read on first use (``molecules``, ``splits``): building the task for ``bench ask`` reads none."""

    every_conformer = False
    """Whether evaluation asks about every conformer of a molecule (else only conformer 0, the lowest-energy)."""

    def __init__(self, config, recipe, registry=None):
        self.config, self.recipe = config, recipe
        self._molecule_splits: dict[str, MoleculeDataset] | None = None
        self._splits: dict[str, ExampleDataset] | None = None
        self.encoder = self.projector = self.llm = None

    @property
    def molecules(self) -> dict[str, MoleculeDataset]:
        if self._molecule_splits is None:
            data = self.recipe.data
            self._molecule_splits = {
                split: MoleculeDataset.from_split(
                    data.name,
                    split,
                    data.split,
                    seed=self.recipe.seed,
                    augment=data.augment and split == "train",
                    limit=data.limit if split == "train" else data.eval_limit,
                )
                for split in SPLITS
            }
        return self._molecule_splits

    @property
    def splits(self) -> dict[str, ExampleDataset]:
        if self._splits is None:
            self._splits = {split: self.example_dataset(split) for split in SPLITS}
        return self._splits

    def example_dataset(self, split: str) -> ExampleDataset:
        """The dataset of ``split``: its examples over its molecules (a task may draw training examples anew)."""
        return ExampleDataset(self.molecules[split], self.examples(split))

    def datasets(self):
        if self.llm is not None:  # a training run: its data meets its model
            if not hasattr(self, "truncation"):
                self.truncation = self._truncation()
            if getattr(self, "encoder_cache", None) is None:  # decided once the loop has frozen what it freezes
                self.encoder_cache = self._cache_encoder()
        return self.splits

    def _cache_encoder(self) -> EncoderCache | None:
        """With ``data.cache`` and a frozen encoder (3D-MoLM's stages 2 and 3), every conformer the splits use is
        encoded once, before training, and batches read the outputs (the loop runs a frozen module in eval mode,
        so they are what the encoder would compute)."""
        if not self.recipe.data.cache or any(p.requires_grad for p in self.encoder.parameters()):
            return None
        settings = {
            k: v
            for k, v in OmegaConf.to_container(self.recipe.encoder, resolve=True).items()
            if k not in ("checkpoint", "trust_checkpoint")
        }
        cache = EncoderCache(self.encoder, settings)
        items = [item for split in SPLITS for item in self._conformer_items(split)]
        computed = cache.fill(items, batch_size=self.recipe.data.eval_batch_size)
        self.cache_report = {
            "conformers": len({conformer_key(i) for i in items}),
            "computed": computed,
            "namespace": cache.store.folder.name,
        }
        return cache

    def _conformer_items(self, split: str) -> list[dict[str, Any]]:
        """Every conformer a split can hand the encoder: all of them where training draws one per epoch."""
        molecules = self.molecules[split]
        items = []
        for row in molecules.indices:
            mol = molecules.store[int(row)]
            count = len(mol.conformers) if molecules.augment or self.every_conformer else 1
            items += [
                {
                    keys.MOL_ID: mol.id,
                    keys.SMILES: mol.smiles,
                    keys.ATOMIC_NUMBERS: mol.atomic_numbers,
                    keys.POSITIONS: mol.conformers[k],
                }
                for k in range(count)
            ]
        return items

    def _truncation(self) -> dict[str, Any]:
        """How many training sequences ``llm.max_length`` cuts, and how many reference answers of the evaluation
        splits are longer than their task's ``max_new_tokens`` (the model cannot say all of them)."""
        llm = self.llm
        train = self.splits["train"].examples
        prompts = llm.token_counts(self._example_prompts("train", train), special=True)
        responses = llm.token_counts([e.response for e in train])
        report = {}
        if llm.max_length:
            lengths = [p + r + 1 for p, r in zip(prompts, responses, strict=True)]  # + EOS
            report["training"] = truncation.report(lengths, llm.max_length, "training sequences (llm.max_length)")
        evaluated = [e for split in ("valid", "test") for e in self.splits[split].examples]
        limits = [self.generation(e.task)["max_new_tokens"] for e in evaluated]
        report["generation"] = truncation.report(
            llm.token_counts([e.response for e in evaluated]), limits, "reference answers (task max_new_tokens)"
        )
        return report

    def _example_prompts(self, split: str, examples: Sequence[Example]) -> list[str]:
        molecules = self.molecules[split]
        smiles = molecules.store.column("smiles")
        return [self.llm.format_prompt(e.instruction, smiles[int(molecules.indices[e.molecule])]) for e in examples]

    # -- what a stage defines -------------------------------------------------------------------------
    def examples(self, split: str) -> list[Example]:
        raise NotImplementedError

    def score(self, split: str, examples: list[Example], answers: list[str]) -> dict[str, float]:
        raise NotImplementedError

    def default_generation(self, task: str) -> dict[str, Any]:
        """The task's own generation keys for examples of ``task`` (before ``task.generation``)."""
        return {"max_new_tokens": self.config.max_new_tokens}

    def generation_group(self, task: str) -> str:
        """The ``task.generation`` group of an instruction task: ``text`` or ``numeric``."""
        return "text"

    def generation(self, task: str) -> dict[str, Any]:
        """Generation settings for examples of ``task`` (the task's own, never the batch's): the task's keys,
        then ``task.generation``'s group entry, then its entry for ``task`` itself."""
        settings = self.default_generation(task)
        table = getattr(self.config, "generation", None) or {}  # a subclass config may lack the keys
        for key in (self.generation_group(task), task):
            entry = table.get(key)
            if entry is not None:
                values = dataclasses.asdict(entry) if dataclasses.is_dataclass(entry) else dict(entry)
                settings |= {name: value for name, value in values.items() if value is not None}
        return settings

    def reference_tokenizer(self) -> Callable[[str], list[str]]:
        """The tokenizer ``caption_tokenizer: reference`` scores with (the stage's own in 3D-MoLM)."""
        raise NotImplementedError

    def text_metrics(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        """BLEU, ROUGE and METEOR on the recipe's ``caption_tokenizer``."""
        reference = getattr(self.config, "caption_tokenizer", "nltk-words") == "reference"
        tokenizer = self.reference_tokenizer() if reference else None
        return caption_metrics(predictions, references, tokenizer=tokenizer)

    def tokenization(self) -> str:
        """How :meth:`text_metrics` tokenises, for ``describe()``."""
        if getattr(self.config, "caption_tokenizer", "nltk-words") == "reference":
            return "BLEU and METEOR on the tokens of the reference tokenizer (3D-MoLM's), ROUGE on the raw text"
        return "lower-cased NLTK word tokens for all"

    # -- model and batches ----------------------------------------------------------------------------
    def build_model(self, components: Components) -> MolLLM:
        if components.llm is None:
            raise MolbridgeError(f"task '{self.recipe.task.name}' needs an encoder, a projector and an llm section")
        self.encoder, self.projector, self.llm = components.encoder, components.projector, components.llm
        return self.assemble(self.config, self.encoder, self.projector, self.llm)

    @classmethod
    def assemble(cls, config, encoder, projector, llm) -> MolLLM:
        """MolLLM with the projector parameters the soft tokens do not use frozen (also on the meta device)."""
        model = MolLLM(encoder, projector, llm)
        model.frozen_projector_parameters = freeze_unused(projector, encoder.output_dim)
        return model

    def instruction_chars(self, task: str | None) -> int | None:
        """How many characters of an instruction of ``task`` the prompt keeps (None: all)."""
        return None

    def _prompts(self, samples) -> list[str]:
        smiles_chars = getattr(self.config, "max_smiles_chars", None)
        return [
            self.llm.format_prompt(
                s[keys.INSTRUCTION][: self.instruction_chars(s.get(keys.TASK_NAME))], s[keys.SMILES][:smiles_chars]
            )
            for s in samples
        ]

    def _molecules(self, samples) -> dict[str, Any]:
        ids = {keys.MOL_ID: [s[keys.MOL_ID] for s in samples]}
        if getattr(self, "encoder_cache", None) is not None:
            return self.encoder_cache.encoded(list(samples)) | ids
        features = [self.encoder.featurize_item(s) for s in samples]
        return {keys.ENCODER_INPUT: self.encoder.collate(features)} | ids

    def collate(self, samples):
        tokens = self.llm.tokenize_batch(self._prompts(samples), [s[keys.RESPONSE] for s in samples])
        return self._molecules(samples) | {
            keys.INPUT_IDS: tokens["input_ids"],
            keys.ATTENTION_MASK: tokens["attention_mask"],
            keys.LABELS: tokens["labels"],
        }

    def collate_prompts(self, samples):
        """Left-padded prompts for generation (no response)."""
        tokens = self.llm.tokenize_prompts(self._prompts(samples))
        return self._molecules(samples) | {
            keys.INPUT_IDS: tokens["input_ids"],
            keys.ATTENTION_MASK: tokens["attention_mask"],
        }

    def training_step(self, model, batch) -> StepOutput:
        loss = model(batch)
        return StepOutput(loss, {"lm_loss": loss.detach()})

    # -- evaluation -----------------------------------------------------------------------------------
    def answers(self, model, fabric, split: str, **generation: Any) -> tuple[list[Example], list[str]]:
        """Generated answers for every example of ``split``, batched by task (each with its settings, updated by
        ``generation``: e.g. ``do_sample=True`` for sampled answers instead of the task's greedy ones).

        Under DDP each rank generates its share of the batches and every rank gets all answers, the same as
        one process generates them (:mod:`molbridge.core.distributed`)."""
        dataset, module = self.splits[split], getattr(model, "module", model)  # Fabric's wrapper -> MolLLM
        by_task: dict[str, list[int]] = {}
        for i, example in enumerate(dataset.examples):
            by_task.setdefault(example.task, []).append(i)
        size = self.recipe.data.eval_batch_size
        work = [
            (task, [rows[i] for i in r]) for task, rows in by_task.items() for r in distributed.batches(len(rows), size)
        ]
        mine = distributed.shard(work)
        bar = tqdm(
            total=sum(len(r) for _, r in mine), desc=f"generate {split}", leave=False, disable=not fabric.is_global_zero
        )
        texts = []
        for task, rows in mine:
            batch = self.collate_prompts([dataset[i] for i in rows])
            texts.append(module.generate(fabric.to_device(batch), **(self.generation(task) | generation)))
            bar.update(len(rows))
        bar.close()
        answers: list[str] = [""] * len(dataset)
        for (_, rows), generated in zip(work, distributed.gather(texts), strict=True):
            for row, text in zip(rows, generated, strict=True):
                answers[row] = text
        return dataset.examples, answers

    @torch.no_grad()
    def answer(self, model, fabric, samples, **generation: Any) -> list[str]:
        """``bench ask``: one answer per sample (a molecule item with an ``INSTRUCTION``), greedy unless
        ``generation`` says otherwise."""
        module = getattr(model, "module", model)
        settings = {"do_sample": False} | {k: v for k, v in generation.items() if v is not None}
        answers: list[str] = []
        for rows in distributed.batches(len(samples), self.recipe.data.eval_batch_size):
            batch = self.collate_prompts([samples[i] for i in rows])
            with fabric.autocast():
                answers += module.generate(fabric.to_device(batch), **settings)
        return answers

    @torch.no_grad()
    def evaluate(self, model, fabric, split: str) -> dict[str, float]:
        model.eval()
        examples, answers = self.answers(model, fabric, split)
        self.last_answers = (split, examples, answers)
        metrics = self.score(split, examples, answers) | self.spreads(model, fabric, split)
        model.train()
        return metrics

    @torch.no_grad()
    def spreads(self, model, fabric, split: str) -> dict[str, float]:
        """How much the encoder's pooled output and the soft tokens change between molecules (``spread/encoder``,
        ``spread/soft_tokens``: :func:`spread` over the first ``data.eval_batch_size`` molecules of ``split``) and,
        where examples are about conformers, between conformers of one molecule (``spread/*_conformers``). A
        soft-token spread far below the encoder's says the projector passes the LLM a near-constant prompt."""
        dataset, module = self.splits[split], getattr(model, "module", model)
        rows: dict[tuple[int, int | None], int] = {}
        for i, example in enumerate(dataset.examples):
            if len(rows) == self.recipe.data.eval_batch_size:
                break
            rows.setdefault((example.molecule, example.conformer), i)
        if len({molecule for molecule, _ in rows}) < 2:
            return {}
        batch = fabric.to_device(self._molecules([dataset[i] for i in rows.values()]))
        encoded = module.encoded(batch)
        outputs = {"encoder": encoded.pooled, "soft_tokens": module.projector(encoded)}
        by_molecule: dict[int, list[int]] = {}
        for position, (molecule, _) in enumerate(rows):
            by_molecule.setdefault(molecule, []).append(position)
        firsts = [positions[0] for positions in by_molecule.values()]
        groups = [positions for positions in by_molecule.values() if len(positions) > 1]
        found = {f"spread/{name}": spread(values[firsts]) for name, values in outputs.items()}
        if groups:
            found |= {
                f"spread/{name}_conformers": float(np.mean([spread(values[g]) for g in groups]))
                for name, values in outputs.items()
            }
        return found

    def parsed(self, example: Example, answer: str) -> dict[str, Any]:
        """Extra fields of an answer's record: a numeric task gives ``value`` (parsed answer, null when none)
        and ``target`` (parsed reference), which ``bench compare --plots`` draws as parity plots."""
        return {}

    def write_outputs(self, folder: Path) -> list[Path]:
        """``answers-<split>.jsonl``: every generated answer of the last evaluation beside its reference."""
        if not hasattr(self, "last_answers"):
            return []
        split, examples, answers = self.last_answers
        molecules = self.molecules[split]
        path = folder / f"answers-{split}.jsonl"
        with path.open("w") as f:
            for example, answer in zip(examples, answers, strict=True):
                molecule = molecules.store[int(molecules.indices[example.molecule])]
                f.write(
                    json.dumps(
                        {
                            "id": molecule.id,
                            "smiles": molecule.smiles,
                            "task": example.task,
                            "instruction": example.instruction,
                            "reference": example.response,
                            "answer": answer,
                        }
                        | self.parsed(example, answer)
                    )
                    + "\n"
                )
        return [path]
