"""SchNet: the encoder contract (invariances, padding, permutation), presets, hydrogens, checkpoints."""

import pytest
import torch
from omegaconf import OmegaConf

from molbridge.core.errors import CheckpointError, MolbridgeError, RecipeError
from molbridge.core.plugins import load_plugins
from molbridge.core.recipe import validate
from molbridge.core.testing import check_encoder, example_molecules
from molbridge.plugins.encoders.schnet import SchNetConfig, SchNetEncoder


def make(**options) -> SchNetEncoder:
    torch.manual_seed(0)
    return SchNetEncoder(OmegaConf.structured(SchNetConfig(**options)))


@pytest.fixture(scope="module")
def molecules():
    return example_molecules()


@pytest.mark.parametrize("preset", ["small", "base"])
def test_schnet_meets_the_encoder_contract(preset, molecules):
    check_encoder(make(preset=preset), molecules)


def test_registered_as_a_builtin_encoder():
    registry = load_plugins(external=False, strict=True).registry
    encoder = registry.build("encoder", OmegaConf.structured(SchNetConfig(hidden=32)))
    assert isinstance(encoder, SchNetEncoder) and encoder.output_dim == 32


def test_no_h_policy_drops_hydrogens(molecules):
    z, pos = molecules[0]
    features = make(hydrogens="no_h").featurize(z, pos)
    assert (features["z"] != 1).all() and len(features["z"]) == int((z != 1).sum())


def test_atoms_beyond_the_cutoff_do_not_interact():
    encoder = make(cutoff=3.0).eval()
    z = torch.tensor([6, 8]).numpy()
    near = encoder(encoder.collate([encoder.featurize(z, torch.tensor([[0.0, 0, 0], [1.2, 0, 0]]).numpy())]))
    far = encoder(encoder.collate([encoder.featurize(z, torch.tensor([[0.0, 0, 0], [9.0, 0, 0]]).numpy())]))
    alone = encoder(encoder.collate([encoder.featurize(z[:1], torch.zeros(1, 3).numpy())]))
    assert torch.allclose(far.atom_embeddings[0, 0], alone.atom_embeddings[0, 0])
    assert not torch.allclose(near.atom_embeddings[0, 0], alone.atom_embeddings[0, 0])


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(MolbridgeError, match="encoder.preset: 'tiny' is not one of base, small"):
        make(preset="tiny")


def test_recipe_validation_reports_bad_presets_and_hydrogen_policies_together():
    registry = load_plugins(external=False, strict=True).registry
    data = {"task": None, "encoder": {"name": "schnet", "preset": "bas", "hydrogens": "all"}}
    with pytest.raises(RecipeError) as info:
        validate(data, registry)
    text = str(info.value)
    assert "encoder.preset" in text and "did you mean 'base'" in text
    assert "encoder.hydrogens" in text and "did you mean 'all_h'" in text


def test_checkpoint_round_trip_is_strict_and_safe(tmp_path, molecules):
    source = make()
    path = tmp_path / "schnet.pt"
    torch.save({"model": source.state_dict()}, path)
    loaded = make(checkpoint=str(path))
    batch = source.collate([source.featurize(z, pos) for z, pos in molecules])
    assert torch.equal(source.eval()(batch).pooled, loaded.eval()(batch).pooled)

    torch.save({"model": make(hidden=32).state_dict()}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other.pt does not match the model; shape mismatch: embedding.weight"):
        make(checkpoint=str(tmp_path / "other.pt"))
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*corrupt.pt"):
        make(checkpoint=str(tmp_path / "corrupt.pt"))


def test_pickled_code_is_refused_unless_trusted(tmp_path):
    path = tmp_path / "code.pt"
    torch.save({"model": make().state_dict(), "hook": SchNetConfig()}, path)  # an arbitrary object
    with pytest.raises(CheckpointError, match="trust_checkpoint: true"):
        make(checkpoint=str(path))
    assert make(checkpoint=str(path), trust_checkpoint=True).output_dim == 64
