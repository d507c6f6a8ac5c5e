"""A BERT that reads a prefix of soft tokens: the Q-Former's body and the stage-1 text tower.

Why our own and not ``transformers.BertModel`` / ``Blip2QFormerModel``: stage 1 needs one network that
runs four ways over ``[prefix ; text]``: prefix only (with cross-attention to the molecule), text only,
both bidirectionally (matching) and text causally after the prefix (Q-Former captioning), with a
separate feed-forward block for prefix positions. transformers 5 has no class with the causal path
(see ``qformer.md``), so this is a compact re-implementation on ``scaled_dot_product_attention``.

Parameter names follow the BERT layout (``embeddings.*``, ``encoder.layer.N.attention.self.query`` ...)
plus the BLIP-2 additions (``crossattention.*``, ``intermediate_query``, ``output_query``), so a
HuggingFace BERT checkpoint and a LAVIS/3D-MoLM Q-Former load by name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from molbridge.core.errors import CheckpointError


@dataclass(frozen=True)
class BertShape:
    """The fields of a HuggingFace ``config.json`` that fix the network's shape."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1

    @classmethod
    def from_folder(cls, folder: str | Path) -> BertShape:
        path = Path(folder) / "config.json"
        if not path.is_file():
            raise CheckpointError(f"{folder} is not a HuggingFace BERT folder: {path} is missing")
        config = json.loads(path.read_text())
        positions = config.get("position_embedding_type", "absolute")
        if config.get("hidden_act", "gelu") != "gelu" or positions != "absolute":
            raise CheckpointError(f"{path}: only BERT with GELU and absolute positions is supported")
        names = [f for f in cls.__dataclass_fields__ if f in config]
        return cls(**{f: config[f] for f in names})


def _cpu_is_intel() -> bool:
    try:
        return "GenuineIntel" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


#: Whether F.dropout draws its CPU masks element by element (see :func:`dropout`).
SLOW_CPU_BERNOULLI = not _cpu_is_intel()


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout (zero with probability p, the rest scaled by 1 / (1 - p)), as ``F.dropout``.

    On a CPU that is not Intel the mask is drawn from uniform numbers (``rand >= p``): PyTorch draws
    ``F.dropout``'s Bernoulli mask with MKL's vectorised generator on Intel CPUs only and element by
    element elsewhere, 2.5-3x slower than ``torch.rand`` on this project's AMD EPYC, where dropout was
    ~6% of the Q-Former query pass. Same distribution, another random stream.
    """
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or not SLOW_CPU_BERNOULLI:
        return F.dropout(x, p, True)
    if p >= 1.0:
        return x * 0.0
    keep = (torch.rand(x.shape, device=x.device) >= p).to(x.dtype).mul_(1.0 / (1.0 - p))
    return x * keep


class Dropout(nn.Dropout):
    """``nn.Dropout`` through :func:`dropout`."""

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float) -> Tensor:
    """``F.scaled_dot_product_attention``; with dropout on a CPU, its math path written out with
    :func:`dropout` (SDPA takes the math path there anyway: its CPU flash kernel has no dropout)."""
    if not dropout_p or q.device.type != "cpu" or not SLOW_CPU_BERNOULLI:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    return dropout(torch.softmax(scores, dim=-1), dropout_p, True) @ v


class PackedMemory(NamedTuple):
    """Cross-attention memory cut down to the positions that may be attended to.

    Keys and values are projected for these rows only and laid back into (B, N, H) with zeros at the
    others, which the mask hides (their attention weights are exactly 0). Padding is about half of the
    positions in a batch of molecules, and projecting the memory (and its gradient) was the largest
    part of the query pass after the query FFNs.
    """

    states: Tensor
    """(R, W) rows of the memory that may be attended to."""
    index: Tensor
    """(R,) their flat positions ``b * length + n``."""
    batch: int
    length: int

    @classmethod
    def pack(cls, memory: Tensor, attend: Tensor) -> PackedMemory:
        """memory (B, N, W); attend (B, N) bool, True where a key may be attended to."""
        b, n, w = memory.shape
        index = attend.flatten().nonzero().squeeze(1)
        return cls(memory.reshape(b * n, w).index_select(0, index), index, b, n)

    def project(self, linear: nn.Module) -> Tensor:
        """``linear(memory)`` as (B, N, out), computed on the kept rows (zeros elsewhere)."""
        rows = linear(self.states)
        full = rows.new_zeros(self.batch * self.length, rows.shape[-1]).index_copy_(0, self.index, rows)
        return full.view(self.batch, self.length, -1)


def _packable(memory: Tensor | None, memory_mask: Tensor | None) -> bool:
    """A boolean per-key mask (B, 1, 1, N) that hides some keys: keys and values can skip those rows.

    Not on the meta device (recipe sizing), where which rows are kept cannot be known."""
    return (
        memory is not None
        and memory_mask is not None
        and memory.device.type != "meta"
        and memory_mask.dtype == torch.bool
        and memory_mask.dim() == 4
        and memory_mask.shape[1:3] == (1, 1)
        and memory_mask.shape[0] == memory.shape[0]
        and memory_mask.shape[3] == memory.shape[1]
        and not bool(memory_mask.all())
    )


class Attention(nn.Module):
    """Multi-head attention + BERT's post-LayerNorm residual output (``self`` / ``output`` submodules)."""

    def __init__(self, shape: BertShape, key_dim: int | None = None):
        super().__init__()
        self.self = nn.Module()
        self.self.query = nn.Linear(shape.hidden_size, shape.hidden_size)
        self.self.key = nn.Linear(key_dim or shape.hidden_size, shape.hidden_size)
        self.self.value = nn.Linear(key_dim or shape.hidden_size, shape.hidden_size)
        self.output = nn.Module()
        self.output.dense = nn.Linear(shape.hidden_size, shape.hidden_size)
        self.output.LayerNorm = nn.LayerNorm(shape.hidden_size, eps=shape.layer_norm_eps)
        self.heads, self.dropout_p = shape.num_attention_heads, shape.attention_probs_dropout_prob
        self.dropout = Dropout(shape.hidden_dropout_prob)

    def _split(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, -1).transpose(1, 2)

    def forward(self, x: Tensor, memory: Tensor | PackedMemory, mask: Tensor | None) -> Tensor:
        """``mask``: bool (B, 1, Lq|1, Lk), True = may attend; or a float bias of that shape."""
        q = self._split(self.self.query(x))
        if isinstance(memory, PackedMemory):
            k, v = self._split(memory.project(self.self.key)), self._split(memory.project(self.self.value))
        else:
            k, v = self._split(self.self.key(memory)), self._split(self.self.value(memory))
        attended = attention(q, k, v, mask, self.dropout_p if self.training else 0.0)
        attended = attended.transpose(1, 2).flatten(2)
        return self.output.LayerNorm(x + self.dropout(self.output.dense(attended)))


def _ffn_parts(shape: BertShape) -> tuple[nn.Module, nn.Module]:
    """BERT's FFN as its two named parts (``intermediate.dense``; ``output.dense`` + ``output.LayerNorm``)."""
    intermediate, output = nn.Module(), nn.Module()
    intermediate.dense = nn.Linear(shape.hidden_size, shape.intermediate_size)
    output.dense = nn.Linear(shape.intermediate_size, shape.hidden_size)
    output.LayerNorm = nn.LayerNorm(shape.hidden_size, eps=shape.layer_norm_eps)
    return intermediate, output


class Layer(nn.Module):
    """Self-attention over [prefix ; text], cross-attention for the prefix, separate prefix/text FFNs."""

    def __init__(self, shape: BertShape, cross_dim: int | None):
        super().__init__()
        self.attention = Attention(shape)
        self.crossattention = Attention(shape, key_dim=cross_dim) if cross_dim else None
        self.intermediate, self.output = _ffn_parts(shape)
        self.intermediate_query, self.output_query = _ffn_parts(shape)
        self.dropout = Dropout(shape.hidden_dropout_prob)

    def _ffn(self, x: Tensor, intermediate: nn.Module, output: nn.Module) -> Tensor:
        hidden = F.gelu(intermediate.dense(x))
        return output.LayerNorm(x + self.dropout(output.dense(hidden)))

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None,
        prefix_len: int,
        memory: Tensor | PackedMemory | None,
        memory_mask: Tensor | None,
    ) -> Tensor:
        x = self.attention(x, x, mask)
        prefix, text = x[:, :prefix_len], x[:, prefix_len:]
        if prefix_len and self.crossattention is not None and memory is not None:
            prefix = self.crossattention(prefix, memory, memory_mask)
        parts = [self._ffn(prefix, self.intermediate_query, self.output_query)] if prefix_len else []
        if text.shape[1]:
            parts.append(self._ffn(text, self.intermediate, self.output))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)  # cat would copy a lone part


class PrefixBert(nn.Module):
    """BERT over ``[prefix ; text]``; the prefix gets no position embeddings (text positions start at 0).

    ``cross_dim`` (the molecule encoder's width) adds cross-attention to every ``cross_every``-th layer
    (0, k, 2k, ...), applied to prefix positions only, as in BLIP-2.
    """

    def __init__(self, shape: BertShape, cross_dim: int | None = None, cross_every: int = 2):
        super().__init__()
        self.shape = shape
        self.embeddings = nn.Module()
        self.embeddings.word_embeddings = nn.Embedding(shape.vocab_size, shape.hidden_size)
        self.embeddings.position_embeddings = nn.Embedding(shape.max_position_embeddings, shape.hidden_size)
        self.embeddings.LayerNorm = nn.LayerNorm(shape.hidden_size, eps=shape.layer_norm_eps)
        self.embed_dropout = Dropout(shape.hidden_dropout_prob)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(
            Layer(shape, cross_dim if cross_dim and cross_every and i % cross_every == 0 else None)
            for i in range(shape.num_hidden_layers)
        )
        self.apply(_init_bert)

    def embed(self, prefix: Tensor | None, input_ids: Tensor | None) -> Tensor:
        parts = [] if prefix is None else [prefix]
        if input_ids is not None:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            parts.append(self.embeddings.word_embeddings(input_ids) + self.embeddings.position_embeddings(positions))
        return self.embed_dropout(self.embeddings.LayerNorm(parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)))

    def forward(
        self,
        prefix: Tensor | None = None,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        causal: bool = False,
        memory: Tensor | None = None,
        memory_mask: Tensor | None = None,
    ) -> Tensor:
        """Hidden states (B, P + L, H).

        attention_mask: (B, L) 1 at real text tokens. ``causal``: text token t sees the prefix and text
        tokens <= t, the prefix sees only itself (Q-Former captioning). Otherwise attention is
        bidirectional over all real positions. memory_mask: bool or float, broadcastable to (B, 1, P, N).
        """
        x = self.embed(prefix, input_ids)
        prefix_len = 0 if prefix is None else prefix.shape[1]
        if prefix_len and _packable(memory, memory_mask):
            memory = PackedMemory.pack(memory, memory_mask[:, 0, 0])
        mask = attention_masks(x.shape[0], prefix_len, attention_mask, input_ids, causal, x.device)
        for layer in self.encoder.layer:
            x = layer(x, mask, prefix_len, memory, memory_mask)
        return x


def attention_masks(
    batch: int, prefix_len: int, text_mask: Tensor | None, input_ids: Tensor | None, causal: bool, device: torch.device
) -> Tensor | None:
    """Boolean (B, 1, P+L, P+L) self-attention mask, True = may attend; None when nothing is masked."""
    text_len = 0 if input_ids is None else input_ids.shape[1]
    keys = torch.ones(batch, prefix_len + text_len, dtype=torch.bool, device=device)
    if text_mask is not None:
        keys[:, prefix_len:] = text_mask.bool()
    mask = keys[:, None, None, :].expand(batch, 1, prefix_len + text_len, prefix_len + text_len)
    if causal:
        allowed = torch.ones(prefix_len + text_len, prefix_len + text_len, dtype=torch.bool, device=device)
        allowed[:prefix_len, prefix_len:] = False  # the prefix never sees text
        allowed[prefix_len:, prefix_len:] = torch.tril(allowed[prefix_len:, prefix_len:])
        mask = mask & allowed
    elif text_mask is None:
        return None
    return mask


def _init_bert(module: nn.Module) -> None:
    """BERT's initialisation (N(0, 0.02) weights, zero bias, unit LayerNorm) for fresh parameters."""
    if isinstance(module, nn.Linear | nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def read_bert_weights(folder: str | Path) -> dict[str, Tensor]:
    """A HuggingFace BERT folder's weights (safetensors or pytorch_model.bin), ``bert.`` prefix removed."""
    folder = Path(folder)
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        state = load_file(folder / "model.safetensors")
    elif (folder / "pytorch_model.bin").is_file():
        state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise CheckpointError(f"{folder} holds no model.safetensors or pytorch_model.bin")
    return {k.removeprefix("bert."): v for k, v in state.items()}


def load_pretrained_bert(model: PrefixBert, folder: str | Path) -> None:
    """Copy a pretrained BERT into ``model``; the BLIP-2 additions start as described below.

    - The token-type-0 embedding is folded into the word embeddings (single-segment input), so a
      text-only pass equals ``BertModel`` exactly.
    - Each layer's prefix FFN (``intermediate_query`` / ``output_query``) starts as a copy of its text FFN.
    - Cross-attention keeps its fresh initialisation. Extra BERT layers beyond the model's depth are
      dropped (``num_layers`` in the recipe), as is the pooler and any pre-training head.
    """
    state = read_bert_weights(folder)
    words = state.get("embeddings.word_embeddings.weight")
    if words is None:
        raise CheckpointError(f"{folder}: no embeddings.word_embeddings.weight; is it a BERT checkpoint?")
    token_type = state.get("embeddings.token_type_embeddings.weight")
    if token_type is not None:
        words = words + token_type[0]
    own = model.state_dict()
    loaded = {"embeddings.word_embeddings.weight": words}
    for name in own:
        source = name.replace("intermediate_query.", "intermediate.").replace("output_query.", "output.")
        if name not in loaded and "crossattention." not in name and source in state:
            loaded[name] = state[source]
    missing = sorted(k for k in own if k not in loaded and "crossattention." not in k)
    if missing:
        raise CheckpointError(
            f"{folder} lacks BERT weights for: {', '.join(missing[:8])}"
            + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        )
    mismatched = [k for k, v in loaded.items() if v.shape != own[k].shape]
    if mismatched:
        k = mismatched[0]
        raise CheckpointError(
            f"{folder}: {k} has shape {tuple(loaded[k].shape)}, the model expects {tuple(own[k].shape)}"
        )
    model.load_state_dict(loaded, strict=False)


def resize_vocabulary(model: PrefixBert, size: int) -> None:
    """Grow the word embeddings to ``size`` rows (new rows: mean of the old ones, a neutral start)."""
    old = model.embeddings.word_embeddings.weight.data
    if size <= old.shape[0]:
        return
    grown = torch.cat([old, old.mean(0, keepdim=True).expand(size - old.shape[0], -1)])
    model.embeddings.word_embeddings = nn.Embedding.from_pretrained(grown.clone(), freeze=False)
