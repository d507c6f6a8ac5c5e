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


def test_training_path_matches_inference_and_padding_leaves_gradients_alone(molecules):
    """With autograd on, no buffer is reused in place: same outputs, and a padded molecule's gradients are
    finite and the same as alone (padding rows and pairs are skipped, never NaN)."""
    encoder = make()
    batch = encoder.collate([encoder.featurize(*m) for m in molecules])
    with torch.no_grad():
        inference = encoder(batch).atom_embeddings
    out = encoder(batch).atom_embeddings
    assert torch.equal(out, inference)
    smallest = int((batch["src_tokens"] != 0).sum(1).argmin())
    assert (batch["src_tokens"][smallest] == 0).any(), "the test needs a padded molecule"
    out[smallest].sum().backward()
    batched = {name: p.grad.clone() for name, p in encoder.named_parameters() if p.grad is not None}
    encoder.zero_grad()
    alone = encoder.collate([encoder.featurize(*molecules[smallest])])
    encoder(alone).atom_embeddings[0].sum().backward()
    assert batched.keys() == {name for name, p in encoder.named_parameters() if p.grad is not None}
    for name, p in encoder.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(batched[name]).all(), name
            assert (batched[name] - p.grad).abs().max() < 1e-4, name


@pytest.mark.parametrize("preset", ["small", pytest.param("base", marks=pytest.mark.slow)])
def test_bf16_autocast_stays_close_to_fp32(preset, molecules):
    """Under CPU bf16 autocast the linear layers run in bf16; the pair bias and softmax stay fp32."""
    encoder = make(preset=preset).eval()
    batch = encoder.collate([encoder.featurize(*m) for m in molecules])
    with torch.no_grad():
        fp32 = encoder(batch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = encoder(batch)
    assert bf16.atom_embeddings.dtype == torch.float32 and torch.isfinite(bf16.atom_embeddings).all()
    assert not bf16.atom_embeddings[bf16.padding_mask].any()
    error = (bf16.atom_embeddings - fp32.atom_embeddings).abs().max()
    assert 0 < error < 0.05, error  # measured: 0.009 (small), 0.016 (base) on outputs of size ~4


def test_partly_frozen_encoder_still_trains(molecules):
    """Frozen embeddings (inputs without gradient) must not switch the trainable layers to in-place buffers."""
    encoder = make()
    encoder.embed_tokens.requires_grad_(False)
    encoder.gbf.requires_grad_(False)
    encoder.gbf_proj.requires_grad_(False)
    encoder.encoder.emb_layer_norm.requires_grad_(False)
    batch = encoder.collate([encoder.featurize(*m) for m in molecules])
    encoder(batch).atom_embeddings.sum().backward()
    assert encoder.encoder.layers[0].self_attn.in_proj.weight.grad.abs().sum() > 0
