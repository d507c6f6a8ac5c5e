"""Typed contracts between the four kinds of component and the training loop.

Plugins subclass these. :mod:`molbridge.core.testing` checks a component against its contract.
Batch keys and mask conventions are defined in :mod:`molbridge.core.batch`.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np
from torch import Tensor, nn

from molbridge.core.batch import ATOMIC_NUMBERS, POSITIONS

if TYPE_CHECKING:
    from pathlib import Path

    from lightning_fabric import Fabric
    from omegaconf import DictConfig
    from torch.utils.data import Dataset

Batch = dict[str, Any]


@dataclass
class EncoderOutput:
    """What every encoder returns.

    atom_embeddings: (B, N, D) per-position features (N may include special tokens such as
        Uni-Mol's [CLS]/[SEP]); rows at padding positions are zero.
    padding_mask: (B, N) bool, True at padding (see :mod:`molbridge.core.batch`).
    pooled: (B, D) one vector per molecule.
    """

    atom_embeddings: Tensor
    padding_mask: Tensor
    pooled: Tensor


class Encoder(nn.Module, ABC):
    """A 3D molecular encoder. Factory: ``factory(config) -> Encoder``.

    Featurization runs in data-loader workers on CPU (``featurize_item`` + ``collate``), the forward pass
    on the training device. Outputs must be invariant to rotation and translation of the positions,
    follow a permutation of the atoms, and not depend on how much padding the batch has.
    """

    output_dim: int

    @abstractmethod
    def featurize(self, atomic_numbers: np.ndarray, positions: np.ndarray) -> dict[str, Tensor]:
        """One molecule (atomic numbers (N,), positions (N, 3) in angstrom) -> encoder tensors."""

    def featurize_item(self, item: Mapping[str, Any]) -> dict[str, Tensor]:
        """What the data pipeline calls: one dataset item (keyed as in :mod:`molbridge.core.batch`) -> encoder
        tensors. The default reads the geometry; an encoder of other inputs (e.g. SMILES) overrides it."""
        return self.featurize(item[ATOMIC_NUMBERS], item[POSITIONS])

    @abstractmethod
    def collate(self, features: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
        """Pad featurized molecules into one batch (the value stored under ``batch.ENCODER_INPUT``)."""

    @abstractmethod
    def forward(self, inputs: Mapping[str, Tensor]) -> EncoderOutput:
        """Encode a collated batch."""


class Projector(nn.Module, ABC):
    """Maps encoder outputs to ``num_tokens`` soft tokens of width ``output_dim``: that is all a projector must do.

    Factory: ``factory(config, input_dim=encoder.output_dim) -> Projector``.
    Must mask encoder padding: the tokens of a molecule do not change with the batch's padding.
    Stage 1 (retrieval) wraps any projector in a text side of its own (a BERT text tower and the stage-1
    heads, reading the soft tokens as a prefix); a projector that has a text side of its own (the Q-Former's
    BERT shares self-attention between queries and text) implements :class:`TextSide` too.
    """

    num_tokens: int
    output_dim: int

    @abstractmethod
    def forward(self, encoded: EncoderOutput) -> Tensor:
        """(B, num_tokens, output_dim) soft tokens."""


@runtime_checkable
class TextSide(Protocol):
    """What stage 1's losses need besides soft tokens: a text tower and the molecule-text heads.

    Implemented by the retrieval task's default text side around any projector, and by projectors that
    supply their own (``qformer``, ``linear``). Features are L2-normalised; molecule features are (B, P, E)
    (P soft tokens), text features (B, E); similarity is the max over P (BLIP-2).
    """

    hidden_size: int
    text_pooling: str
    max_text_length: int

    def tokenize(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """Token ids and attention mask (1 = real token), padded to the longest text and truncated."""

    def token_counts(self, texts: list[str]) -> list[int]:
        """Each text's length in tokens before truncation (the task reports how many ``max_text_length`` cuts)."""

    def pooled_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, H) summary of each text by the text tower, before the contrastive projection."""

    def project_text(self, pooled: Tensor) -> Tensor:
        """(B, H) pooled text -> (B, E) normalised contrastive features."""

    def text_features(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, E) normalised contrastive text features (``project_text(pooled_text(...))``)."""

    def molecule_features(self, encoded: EncoderOutput) -> Tensor:
        """(B, P, E) normalised contrastive molecule features."""

    def match_logits(self, encoded: EncoderOutput, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, 2) no-match / match logits of molecule i with text i."""

    def caption_loss(self, encoded: EncoderOutput, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Scalar next-token loss of the text decoded from the molecule. Called with ``label_smoothing=x`` only
        when the recipe asks for smoothing (``task.captioning_label_smoothing``)."""

    def text_tower_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) of the text tower that a locked tower freezes."""

    def freeze_heads(self, matching: bool, captioning: bool) -> None:
        """Freeze the matching / captioning head when its loss is off (DDP rejects parameters without gradient)."""


@dataclass
class Components:
    """The components a recipe names, built by core in the order each needs the previous one's width
    (``encoder`` -> ``projector(input_dim=encoder.output_dim)`` -> ``llm(input_dim=projector.output_dim)``);
    a section the recipe lacks is None. Tasks receive them in :meth:`Task.build_model`."""

    encoder: Encoder | None = None
    projector: Projector | None = None
    llm: LanguageModel | None = None

    def items(self) -> list[tuple[str, nn.Module]]:
        return [(kind, part) for kind in ("encoder", "projector", "llm") if (part := getattr(self, kind)) is not None]


class LanguageModel(nn.Module, ABC):
    """A causal language model that accepts soft molecule tokens.

    Factory: ``factory(config, input_dim=projector.output_dim)``; the model owns the projection from the
    projector's width to its own (3D-MoLM's ``llm_proj``).
    The prompt contains ``mol_token`` placeholders; their input embeddings are replaced by the
    projector's soft tokens (``num_mol_tokens`` per molecule). Loss is taken on the response only.
    """

    mol_token: ClassVar[str] = "<mol>"
    num_mol_tokens: int
    hidden_size: int
    tokenizer: Any
    #: Longest training sequence (prompt + response + EOS) in tokens; None: no limit of its own.
    max_length: int | None = None

    def token_counts(self, texts: Sequence[str], special: bool = False) -> list[int]:
        """Each text's length in tokens (with the BOS/EOS the tokenizer adds when ``special``): what the tasks check
        against ``max_length`` and the generation limits. Override for a tokenizer that is not Hugging Face-like."""
        return [len(ids) for ids in self.tokenizer(list(texts), add_special_tokens=special)["input_ids"]]

    @abstractmethod
    def format_prompt(self, instruction: str, molecule: str) -> str:
        """The model's prompt template around one instruction and one molecule (with placeholders)."""

    @abstractmethod
    def tokenize_batch(self, prompts: Sequence[str], responses: Sequence[str]) -> dict[str, Tensor]:
        """Right-padded training batch: ``input_ids``, ``attention_mask``, ``labels`` (-100 except on the
        response and the EOS that ends every response)."""

    @abstractmethod
    def tokenize_prompts(self, prompts: Sequence[str]) -> dict[str, Tensor]:
        """Left-padded prompts (``input_ids``, ``attention_mask``) for :meth:`generate`."""

    @abstractmethod
    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, mol_tokens: Tensor, labels: Tensor | None = None
    ) -> Any:
        """Teacher-forced pass; returns an object with ``.loss`` when ``labels`` is given."""

    @abstractmethod
    def generate(self, input_ids: Tensor, attention_mask: Tensor, mol_tokens: Tensor, **generation: Any) -> list[str]:
        """Decode answers for a left-padded batch of prompts."""


@dataclass
class StepOutput:
    """One training step's result: the loss to minimise and scalars to log (named without split)."""

    loss: Tensor
    logs: dict[str, Tensor | float] = field(default_factory=dict)


class Task(ABC):
    """A task owns its datasets, its model assembly, its training step and its metrics.

    Factory: ``factory(config, recipe=recipe, registry=registry) -> Task`` where ``config`` is the recipe's
    ``task`` section and ``recipe`` the whole validated recipe. Construction must be cheap: load data in
    :meth:`datasets` (``bench ask`` and ``bench recipes validate`` build tasks without training them).
    Components come from core, already built, in :meth:`build_model`.
    """

    #: The metric that picks the best checkpoint, and whether higher is better.
    monitor: ClassVar[tuple[str, Literal["max", "min"]]] = ("loss", "min")
    #: Metric patterns ``bench compare --plots`` draws as bars by default (empty: the monitored metric).
    report_metrics: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def build_model(self, components: Components) -> nn.Module:
        """The model to train from the recipe's components (frozen parts included; ``train.trainable``
        selects). It must run ``components``' modules, not copies: core checks their contracts."""

    @classmethod
    def assemble(
        cls, config: DictConfig, encoder: nn.Module | None, projector: nn.Module | None, llm: nn.Module | None
    ) -> nn.Module:
        """The model :meth:`build_model` returns, from components already built, without data: the
        task's own freezing (unused heads, locked towers) included. ``bench recipes validate`` calls it
        on the meta device to size a recipe. Optional: sizing falls back to the bare components."""
        raise NotImplementedError

    @abstractmethod
    def datasets(self) -> Mapping[str, Dataset]:
        """Datasets by split: ``train`` is required; ``valid`` and ``test`` are evaluated if present."""

    @abstractmethod
    def collate(self, samples: Sequence[Mapping[str, Any]]) -> Batch:
        """Turn dataset items into a batch keyed as in :mod:`molbridge.core.batch`."""

    @abstractmethod
    def training_step(self, model: nn.Module, batch: Batch) -> StepOutput:
        """Loss for one batch."""

    @abstractmethod
    def evaluate(self, model: nn.Module, fabric: Fabric, split: str) -> dict[str, float]:
        """Metrics on one split, deterministic (no random cropping or conformer choice). Under DDP every rank
        calls it; a task shards the work with :func:`molbridge.core.distributed.shard` and gathers the results,
        so every rank returns the metrics a single process would."""

    def answer(
        self, model: nn.Module, fabric: Fabric, samples: Sequence[Mapping[str, Any]], **generation: Any
    ) -> list[str]:
        """Answers to the ``INSTRUCTION`` of each sample (a molecule item plus the question), for ``bench ask``.
        Optional: tasks without a language model do not answer."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Facts about how results were obtained (dataset, split, sizes), logged with the run."""
        return {}

    def write_outputs(self, folder: Path) -> list[Path]:
        """Files of the last :meth:`evaluate` worth keeping beside ``metrics.json`` (e.g. generated answers),
        written into ``folder``; they are logged to MLflow as artifacts. Returns their paths.

        Two artifact formats are understood by ``bench compare --plots`` whatever the task: ``ranks-SPLIT.json``
        (``{"model": {"m2t": [...], "t2m": [...]}, "baseline": ...}``, 0-based full-set ranks: Recall@k
        curves) and ``answers-SPLIT.jsonl`` records with numeric ``value`` and ``target`` fields (parity
        plots per ``task``)."""
        return []


def write_items(folder: Path | str, split: str, ids: Sequence[str], values: Mapping[str, Sequence[Any]]) -> Path:
    """Write ``items-<split>.json``: per-item values of metrics (metric name -> one value per id, null where an
    item has none), the artifact ``bench compare --aggregate`` turns into intervals and paired verdicts."""
    path = Path(folder) / f"items-{split}.json"
    content = {"split": split, "ids": list(ids), "values": {name: list(v) for name, v in values.items()}}
    path.write_text(json.dumps(content, separators=(",", ":")) + "\n")
    return path
