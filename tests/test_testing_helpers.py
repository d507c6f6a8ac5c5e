"""The contract checks in molbridge.core.testing catch the violations they exist for."""

import pytest
import torch
from omegaconf import OmegaConf

from molbridge.core.contracts import EncoderOutput, Projector
from molbridge.core.testing import (
    check_padding_invariance,
    check_projector,
    check_rigid_motion_invariance,
    example_molecules,
)
from molbridge.plugins.encoders.schnet import SchNetConfig, SchNetEncoder


class UsesAbsolutePositions(SchNetEncoder):
    def forward(self, inputs):
        out = super().forward(inputs)
        return EncoderOutput(out.atom_embeddings, out.padding_mask, out.pooled + inputs["pos"][:, :1, 0])


class PoolsOverPadding(SchNetEncoder):
    def forward(self, inputs):
        out = super().forward(inputs)
        return EncoderOutput(out.atom_embeddings, out.padding_mask, out.atom_embeddings.mean(1))


class MeanOverEverything(Projector):
    num_tokens, output_dim = 1, 4

    def __init__(self, input_dim):
        super().__init__()
        self.linear = torch.nn.Linear(input_dim, 4)

    def forward(self, encoded):
        return self.linear(encoded.atom_embeddings.mean(1, keepdim=True))


def _encoder(cls):
    torch.manual_seed(0)
    return cls(OmegaConf.structured(SchNetConfig())).eval()


def test_rigid_motion_check_catches_a_coordinate_dependent_encoder():
    with pytest.raises(AssertionError, match="after rotation \\+ translation"):
        check_rigid_motion_invariance(_encoder(UsesAbsolutePositions), example_molecules())


def test_padding_check_catches_pooling_over_padding():
    with pytest.raises(AssertionError, match="pooled alone vs padded batch"):
        check_padding_invariance(_encoder(PoolsOverPadding), example_molecules())


def test_projector_check_catches_an_unmasked_projector():
    with pytest.raises(AssertionError, match="projector output with extra padding"):
        check_projector(MeanOverEverything(8), input_dim=8)
