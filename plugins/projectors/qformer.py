"""The ``qformer`` projector: BLIP-2's Q-Former as 3D-MoLM uses it.

Learned query tokens read the encoder output through cross-attention (every ``cross_attention_freq``-th
layer) and become the soft tokens; the same BERT encodes text for the stage-1 losses.

Padding: the encoder's padding mask (True = pad) is turned into "may attend = not padding". The
reference code passed the padding mask where "1 = attend" was expected, so in a padded molecule its
Q-Former attends only to the padded encoder rows, and in an unpadded one to every row (3D-MoLM issue 8).
``reference_padding_mask: true`` reproduces that mask exactly (LAVIS adds -10000 to the rows the padding
mask calls real). It does not, by itself, reproduce the numbers of the released checkpoints: the reference's
padded rows are Uni-Mol outputs that carry the molecule (they are never zeroed) and its batches are padded
to a multiple of 8, whereas molbridge's Uni-Mol zeroes padded rows, so with this switch every padded
molecule of a batch gets the same soft tokens. molbridge's Uni-Mol does not compute padded rows at all (they
are zero by the encoder contract, and skipping them halves its cost), so the checkpoints' exact numbers are
not reproduced; the switch is for studying the defect (docs/reproducing-3d-molm.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from molbridge.core import hookimpl
from molbridge.core.contracts import EncoderOutput
from molbridge.core.errors import CheckpointError
from molbridge.core.recipe import bounded
from molbridge.plugins.projectors.stage1 import Stage1Projector, TextTowerConfig


@dataclass
class QFormerConfig(TextTowerConfig):
    name: str = "qformer"
    num_query_tokens: int = bounded(8, ge=1)
    """Learned queries = soft tokens per molecule (3D-MoLM: 8)."""
    cross_attention_freq: int = bounded(2, ge=1)
    """Cross-attention on layers 0, k, 2k, ... (3D-MoLM: 2)."""
    reference_padding_mask: bool = False
    """Use the reference code's inverted encoder mask (a padded molecule reads only its padded rows). With
    molbridge's Uni-Mol, which zeroes padded rows, every padded molecule then gets the same soft tokens: it
    does not reproduce the released checkpoints' numbers (see the module docstring)."""


class QFormer(Stage1Projector):
    def __init__(self, config: QFormerConfig, input_dim: int):
        super().__init__(config, cross_dim=input_dim, cross_every=config.cross_attention_freq)
        self.encoder_norm = nn.LayerNorm(input_dim)
        self.query_tokens = nn.Parameter(torch.randn(1, config.num_query_tokens, self.hidden_size) * 0.02)
        self.num_tokens, self.output_dim = config.num_query_tokens, self.hidden_size
        self.reference_padding_mask = config.reference_padding_mask

    def memory_mask(self, padding_mask: Tensor) -> Tensor:
        """Cross-attention mask (B, 1, 1, N): bool "may attend", or the reference's additive bias."""
        if self.reference_padding_mask:  # LAVIS adds (1 - mask) * -10000 to a mask that is 1 at padding
            return torch.where(padding_mask, 0.0, -10000.0).to(self.query_tokens.dtype)[:, None, None, :]
        return ~padding_mask[:, None, None, :]

    def prefix(self, encoded: EncoderOutput) -> tuple[Tensor, Tensor, Tensor]:
        queries = self.query_tokens.expand(encoded.atom_embeddings.shape[0], -1, -1)
        return queries, self.encoder_norm(encoded.atom_embeddings), self.memory_mask(encoded.padding_mask)

    def forward(self, encoded: EncoderOutput) -> Tensor:
        queries, memory, memory_mask = self.prefix(encoded)
        return self.bert(queries, memory=memory, memory_mask=memory_mask)


# -- 3D-MoLM / LAVIS checkpoint layout ----------------------------------------------------------------
#: Their stage-1 names (after the ``blip2qformer.`` prefix) -> ours. Everything else is listed as unmapped.
REFERENCE_PREFIXES = {
    "Qformer.bert.": "bert.",
    "Qformer.cls.predictions.transform.": "lm_head.transform.",
    "Qformer.cls.predictions.bias": "lm_head.bias",
    "graph_proj.": "mol_proj.",
    "text_proj.": "text_proj.",
    "gtm_head.": "match_head.",
    "ln_graph.": "encoder_norm.",
    "query_tokens": "query_tokens",
}
#: Theirs, not needed by us: the LM decoder is tied to the word embeddings; position ids are a buffer.
REFERENCE_DROPPED = ("Qformer.cls.predictions.decoder.", "Qformer.bert.embeddings.position_ids")


def from_reference(state: dict[str, Tensor], prefix: str = "blip2qformer.") -> tuple[dict[str, Tensor], dict]:
    """Map a 3D-MoLM stage-1 state dict (``ckpt["state_dict"]``) to :class:`QFormer` names.

    Returns (projector state, others) where others holds the keys that belong to other parts of the
    model (``graph_encoder.*``: the Uni-Mol encoder; ``temp``: the contrastive temperature). A key that
    is neither raises :class:`CheckpointError` with the full list.
    """
    ours, others, unmapped = {}, {}, []
    for key, value in state.items():
        name = key.removeprefix(prefix)
        if name.startswith(REFERENCE_DROPPED):
            continue
        if name.startswith("graph_encoder.") or name == "temp":
            others[name] = value
            continue
        source = next((p for p in REFERENCE_PREFIXES if name.startswith(p)), None)
        if source is None:
            unmapped.append(key)
            continue
        ours[REFERENCE_PREFIXES[source] + name[len(source) :]] = value
    if unmapped:
        raise CheckpointError(
            f"{len(unmapped)} keys of the 3D-MoLM checkpoint have no molbridge name: "
            + ", ".join(unmapped[:10])
            + (" ..." if len(unmapped) > 10 else "")
        )
    return ours, others


def to_reference(state: dict[str, Tensor], prefix: str = "blip2qformer.") -> dict[str, Tensor]:
    """The inverse of :func:`from_reference` (for exporting, and to test the mapping both ways)."""
    reverse = {ours: theirs for theirs, ours in REFERENCE_PREFIXES.items()}
    out = {}
    for name, value in state.items():
        ours = next(p for p in reverse if name.startswith(p))
        out[prefix + reverse[ours] + name[len(ours) :]] = value
    out[prefix + "Qformer.cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"]
    return out


def load_reference(projector: QFormer, path: str) -> dict[str, Tensor]:
    """Load a 3D-MoLM stage-1 Lightning checkpoint strictly into ``projector``; returns the other keys."""
    from molbridge.plugins.encoders.weights import load_strict, read_state_dict

    ours, others = from_reference(read_state_dict(path, key="state_dict"))
    load_strict(projector, ours, path)
    return others


@hookimpl
def molbridge_register_projectors(register):
    register(
        "qformer",
        QFormer,
        QFormerConfig,
        description="BLIP-2 Q-Former: learned queries cross-attend to the encoder; BERT text tower for stage 1",
    )
