"""Uni-Mol: the encoder contract, featurizer (dictionary, hydrogens, cropping) and strict checkpoint loading."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from molbridge.core.errors import CheckpointError, MolbridgeError
from molbridge.core.plugins import load_plugins
from molbridge.core.testing import check_encoder, example_molecules
from molbridge.plugins.encoders.unimol import CLS, DICTIONARY, MAX_ATOMS, SEP, UniMolConfig, UniMolEncoder


def make(**options) -> UniMolEncoder:
    torch.manual_seed(0)
    return UniMolEncoder(OmegaConf.structured(UniMolConfig(**options)))


@pytest.fixture(scope="module")
def molecules():
    return example_molecules()


@pytest.mark.parametrize("hydrogens", ["no_h", "all_h"])
def test_unimol_small_meets_the_encoder_contract(hydrogens, molecules):
    check_encoder(make(hydrogens=hydrogens), molecules)


@pytest.mark.slow
def test_unimol_base_meets_the_encoder_contract(molecules):
    check_encoder(make(preset="base"), molecules[:2])


def test_featurize_tokens_and_hydrogen_policy(molecules):
    z, pos = molecules[0]
    features = make().featurize(z, pos)
    tokens = features["src_tokens"]
    assert tokens[0] == CLS and tokens[-1] == SEP and len(tokens) == int((z != 1).sum()) + 2
    assert DICTIONARY[int(tokens[1])] in {"C", "N", "O", "S", "F", "Cl", "Br", "I", "P"}
    assert len(make(hydrogens="all_h").featurize(z, pos)["src_tokens"]) == len(z) + 2


def test_large_molecules_are_cropped_deterministically():
    rng = np.random.default_rng(0)
    z, pos = np.full(400, 6), rng.normal(size=(400, 3)) * 5
    a, b = make().featurize(z, pos), make().featurize(z, pos)
    assert len(a["src_tokens"]) == MAX_ATOMS + 2
    assert torch.equal(a["src_distance"], b["src_distance"])


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(MolbridgeError, match="base, small"):
        make(preset="huge")


def test_registered_as_a_builtin_encoder():
    registry = load_plugins(external=False, strict=True).registry
    assert isinstance(registry.build("encoder", OmegaConf.structured(UniMolConfig())), UniMolEncoder)


def test_checkpoint_round_trip_drops_pretraining_heads(tmp_path, molecules):
    source = make()
    state = dict(source.state_dict(), **{"lm_head.dense.weight": torch.zeros(2, 2)})
    path = tmp_path / "mol_pre.pt"
    torch.save({"model": state}, path)
    torch.manual_seed(1)
    loaded = UniMolEncoder(OmegaConf.structured(UniMolConfig(checkpoint=str(path))))
    batch = source.collate([source.featurize(*m) for m in molecules])
    assert torch.equal(source(batch).atom_embeddings, loaded(batch).atom_embeddings)


def test_mismatched_or_corrupt_checkpoint_names_file_and_keys(tmp_path):
    path = tmp_path / "bad.pt"
    state = make().state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["embed_tokens.weight"]
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError, match=r"bad\.pt.*missing: embed_tokens\.weight.*unexpected: extra\.weight"):
        make(checkpoint=str(path))
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        make(checkpoint=str(path))
