"""An example molbridge plugin: the ``meanpool`` projector and the ``property`` task."""

from dataclasses import dataclass

import torch
from torch import nn

from molbridge.core import hookimpl
from molbridge.core.contracts import EncoderOutput, Projector

molbridge_hook_api = 2  # the molbridge hook API this plugin is written for (molbridge.core.HOOK_API_VERSION)


@dataclass
class MeanPoolConfig:
    name: str = "meanpool"
    num_tokens: int = 4
    """Soft tokens produced per molecule."""
    output_dim: int = 256
    """Width of each soft token."""


class MeanPoolProjector(Projector):
    """Masked mean over atoms, then an MLP to ``num_tokens`` tokens of width ``output_dim``."""

    def __init__(self, config: MeanPoolConfig, input_dim: int):
        super().__init__()
        self.num_tokens, self.output_dim = config.num_tokens, config.output_dim
        self.mlp = nn.Sequential(
            nn.LayerNorm(input_dim),
            nn.Linear(input_dim, config.output_dim),
            nn.GELU(),
            nn.Linear(config.output_dim, config.num_tokens * config.output_dim),
        )

    def forward(self, encoded: EncoderOutput) -> torch.Tensor:
        keep = (~encoded.padding_mask).unsqueeze(-1).to(encoded.atom_embeddings.dtype)
        mean = (encoded.atom_embeddings * keep).sum(1) / keep.sum(1).clamp(min=1)
        return self.mlp(mean).view(-1, self.num_tokens, self.output_dim)


@hookimpl
def molbridge_register_projectors(register):
    register(
        "meanpool",
        MeanPoolProjector,
        MeanPoolConfig,
        description="masked mean of atom embeddings -> MLP -> soft tokens (example plugin)",
    )


@hookimpl
def molbridge_register_tasks(register):
    from molbridge_example.property_task import PropertyTask, PropertyTaskConfig

    register(
        "property",
        PropertyTask,
        PropertyTaskConfig,
        description="regress a molecular property from 3D structure (example plugin)",
    )
