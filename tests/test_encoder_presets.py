"""Encoder presets are named, documented entries that a command can describe (issue 19)."""

import dataclasses

import pytest
import torch
from omegaconf import OmegaConf

from molbridge.core.errors import MolbridgeError
from molbridge.core.recipe_docs import field_docs
from molbridge.plugins.encoders.presets import Preset, describe_preset, preset_table
from molbridge.plugins.encoders.schnet import SchNetConfig
from molbridge.plugins.encoders.smiles import SmilesConfig
from molbridge.plugins.encoders.unimol import UniMolConfig, UniMolEncoder

CONFIGS = [UniMolConfig, SchNetConfig, SmilesConfig]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.__name__)
def test_every_preset_is_named_documented_and_listed_as_a_choice(config):
    table = preset_table(config)
    assert table and list(table) == ["base", "small"]
    choices = next(f for f in dataclasses.fields(config) if f.name == "preset").metadata["choices"]
    assert choices == tuple(table)
    for preset in table.values():
        assert isinstance(preset, Preset) and dataclasses.is_dataclass(preset)
        assert preset.description and "\n" not in preset.description
        with pytest.raises(dataclasses.FrozenInstanceError):
            preset.description = "changed"
        docs = field_docs(type(preset))
        undocumented = [f.name for f in dataclasses.fields(preset) if not docs.get(f.name)]
        assert undocumented == [], f"undocumented fields: {undocumented}"


def test_describe_preset_says_what_it_sets():
    described = describe_preset(preset_table(UniMolConfig), "base")
    assert described["summary"] == "preset=base sets layers=15, embed_dim=512, ffn_dim=2048, heads=64, kernels=128"
    assert described["sets"]["heads"]["value"] == 64 and "pair representation" in described["sets"]["heads"]["doc"]
    assert "released checkpoints" in described["description"]
    with pytest.raises(MolbridgeError, match="'bas' is not one of base, small.*did you mean 'base'"):
        describe_preset(preset_table(UniMolConfig), "bas")


def test_unimol_preset_builds_the_shape_it_describes():
    preset = preset_table(UniMolConfig)["base"]
    with torch.device("meta"):
        encoder = UniMolEncoder(OmegaConf.structured(UniMolConfig(preset="base")))
    assert len(encoder.encoder.layers) == preset.layers and encoder.output_dim == preset.embed_dim
    assert encoder.encoder.layers[0].fc1.out_features == preset.ffn_dim
    assert encoder.gbf_proj.linear2.out_features == preset.heads and encoder.gbf.means.weight.shape[1] == preset.kernels


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.__name__)
def test_preset_field_describes_every_preset_for_the_recipe_docs(config):
    """``bench recipes show --doc`` prints what the field's ``describe`` returns under its documentation."""
    field = next(f for f in dataclasses.fields(config) if f.name == "preset")
    lines = field.metadata["describe"]()
    table = preset_table(config)
    assert len(lines) == len(table)
    for line, (name, preset) in zip(lines, table.items(), strict=True):
        assert line.startswith(describe_preset(table, name)["summary"]) and preset.description in line
