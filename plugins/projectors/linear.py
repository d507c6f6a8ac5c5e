"""The ``linear`` projector: a per-atom MLP, pooled, then expanded to a fixed number of soft tokens.

Soft tokens: MLP(atom) -> masked mean over atoms (padding excluded) -> Linear to ``num_tokens`` x H
-> LayerNorm. It is "pooled", not resampled: every token is a different linear read-out of the same
pooled vector, so it carries no more than the mean-pooled atoms do. That is the point of the ablation
against the Q-Former's learned cross-attention.

For stage 1 it has the same BERT text tower and heads as the Q-Former: contrastive features are the
projected soft tokens; for matching and captioning the soft tokens are the prefix the BERT reads (no
cross-attention).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from molbridge.core import hookimpl
from molbridge.core.contracts import EncoderOutput
from molbridge.core.recipe import bounded
from molbridge.plugins.projectors.stage1 import Stage1Projector, TextTowerConfig


@dataclass
class LinearConfig(TextTowerConfig):
    name: str = "linear"
    num_tokens: int = bounded(8, ge=1)
    """Soft tokens per molecule."""
    hidden_dim: int | None = bounded(None, ge=1)
    """Width of the per-atom MLP (null: the text tower's hidden size)."""


class LinearProjector(Stage1Projector):
    def __init__(self, config: LinearConfig, input_dim: int):
        super().__init__(config)
        hidden = config.hidden_dim or self.hidden_size
        self.atom_mlp = nn.Sequential(nn.Linear(input_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.expand = nn.Linear(hidden, config.num_tokens * self.hidden_size)
        self.norm = nn.LayerNorm(self.hidden_size)
        self.num_tokens, self.output_dim = config.num_tokens, self.hidden_size

    def forward(self, encoded: EncoderOutput) -> Tensor:
        keep = (~encoded.padding_mask).unsqueeze(-1).to(encoded.atom_embeddings.dtype)
        atoms = self.atom_mlp(encoded.atom_embeddings) * keep
        pooled = atoms.sum(dim=1) / keep.sum(dim=1).clamp(min=1)
        return self.norm(self.expand(pooled).view(pooled.shape[0], self.num_tokens, self.hidden_size))

    def prefix(self, encoded: EncoderOutput) -> tuple[Tensor, None, None]:
        return self(encoded), None, None


@hookimpl
def molbridge_register_projectors(register):
    register(
        "linear",
        LinearProjector,
        LinearConfig,
        description="per-atom MLP, mean-pooled, expanded to N soft tokens; BERT text tower for stage 1",
    )
