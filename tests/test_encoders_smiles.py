"""The 1D control encoder: SMILES tokenizer and vocabulary, the encoder contract, no geometry, checkpoints, recipes."""

import warnings

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from molbridge.core import batch as keys
from molbridge.core.errors import CheckpointError, MolbridgeError
from molbridge.core.plugins import load_plugins
from molbridge.core.recipe import load_recipe
from molbridge.plugins.encoders.smiles import (
    CLS,
    DEFAULT_MAX_LENGTH,
    PAD,
    SPECIALS,
    UNK,
    VOCABULARY,
    SmilesConfig,
    SmilesEncoder,
    encode,
    tokenize,
)

#: Real molecules covering bracket atoms, stereo, charges, isotopes, E/Z bonds, two-digit rings and salts.
REAL_SMILES = {
    "aspirin": "CC(=O)Oc1ccccc1C(=O)O",
    "indole": "c1ccc2[nH]ccc2c1",
    "alanine": "C[C@@H](C(=O)O)N",
    "nitrobenzene": "O=[N+]([O-])c1ccccc1",
    "tamoxifen": "CC/C(=C(\\c1ccccc1)c1ccc(OCCN(C)C)cc1)c1ccccc1",
    "bromochloromethane": "ClCBr",
    "sodium acetate": "CC(=O)[O-].[Na+]",
    "deuterated chloroform": "[2H]C(Cl)(Cl)Cl",
    "ring closure %10": "C1CC2CC3CC4CC5CC6CC7CC8CC9CC%10CCC%10CC9CC8CC7CC6CC5CC4CC3CC2C1",
    "ammonium": "C[NH3+]",
    "calcium chloride": "[Ca+2].[Cl-].[Cl-]",
}


def make(**options) -> SmilesEncoder:
    torch.manual_seed(0)
    return SmilesEncoder(OmegaConf.structured(SmilesConfig(**options)))


def item(smiles, mol_id="m", positions=None) -> dict:
    n = 3 if positions is None else len(positions)
    return {
        keys.MOL_ID: mol_id,
        keys.SMILES: smiles,
        keys.ATOMIC_NUMBERS: np.full(n, 6, dtype=np.int64),
        keys.POSITIONS: np.zeros((n, 3), np.float32) if positions is None else positions,
    }


def encode_items(encoder, smiles_list):
    with torch.no_grad():
        return encoder(encoder.collate([encoder.featurize_item(item(s, str(i))) for i, s in enumerate(smiles_list)]))


@pytest.mark.parametrize("name", REAL_SMILES)
def test_tokens_join_back_and_are_all_in_the_vocabulary(name):
    smiles = REAL_SMILES[name]
    tokens = tokenize(smiles)
    assert "".join(tokens) == smiles
    ids, unknown = encode(smiles)
    assert unknown == [] and UNK not in ids and len(ids) == len(tokens)


def test_multi_character_tokens_stay_whole():
    assert tokenize("ClCBr") == ["Cl", "C", "Br"]
    assert tokenize("C[C@@H](N)O") == ["C", "[C@@H]", "(", "N", ")", "O"]
    assert tokenize("C%10CC%10") == ["C", "%10", "C", "C", "%10"]
    assert tokenize("C/C=C\\C") == ["C", "/", "C", "=", "C", "\\", "C"]


def test_vocabulary_is_fixed_and_covers_molbridge_mini():
    from molbridge.core.data import open_dataset

    assert VOCABULARY[:3] == SPECIALS and (PAD, CLS, UNK) == (0, 1, 2)
    assert len(set(VOCABULARY)) == len(VOCABULARY)
    smiles = open_dataset("molbridge-mini").column("smiles")
    unknown = {t for s in smiles for t in encode(s)[1]}
    assert unknown == set()
    assert max(len(tokenize(s)) for s in smiles) + 1 <= DEFAULT_MAX_LENGTH  # [CLS] + the longest fits


def test_unknown_tokens_become_unk_are_counted_and_warned():
    encoder = make()
    with pytest.warns(UserWarning, match=r"token '\[U\+6\]' is not in the vocabulary"):
        features = encoder.featurize_item(item("C[U+6]C"))
    assert features["tokens"].tolist() == [CLS, VOCABULARY.index("C"), UNK, VOCABULARY.index("C")]
    assert encoder.unknown_tokens == {"[U+6]": 1}
    with pytest.warns(UserWarning) as record:
        encoder.featurize_item(item("[Xe]C[Xe]", "xe7"))
    messages = [str(w.message) for w in record]
    assert any("token '[Xe]' is not in the vocabulary" in m for m in messages)
    assert any("molecule xe7: 2 of 3 SMILES tokens are unknown ([UNK]): [Xe]C[Xe]" in m for m in messages)
    assert encoder.unknown_tokens["[Xe]"] == 2


@pytest.mark.parametrize("bad", [None, "", "   ", 42])
def test_missing_or_empty_smiles_is_an_error_naming_the_molecule(bad):
    with pytest.raises(MolbridgeError, match=r"molecule cid9: the smiles encoder needs a non-empty SMILES"):
        make().featurize_item(item(bad, "cid9"))
    with pytest.raises(MolbridgeError, match="molecule cid9: the item has no 'smiles' key"):
        make().featurize_item({keys.MOL_ID: "cid9", keys.ATOMIC_NUMBERS: np.ones(1, np.int64)})


def test_featurize_from_geometry_explains_that_it_reads_smiles():
    with pytest.raises(MolbridgeError, match="reads a molecule's SMILES.*featurize_item"):
        make().featurize(np.array([6, 8]), np.zeros((2, 3), np.float32))


def test_outputs_follow_the_encoder_contract():
    encoder = make().eval()
    smiles = [REAL_SMILES["aspirin"], "CCO", REAL_SMILES["tamoxifen"]]
    out = encode_items(encoder, smiles)
    lengths = [len(tokenize(s)) + 1 for s in smiles]
    assert out.atom_embeddings.shape == (3, max(lengths), 128) and out.pooled.shape == (3, 128)
    assert out.padding_mask.dtype == torch.bool
    assert out.padding_mask.sum(1).tolist() == [max(lengths) - n for n in lengths]
    assert not out.atom_embeddings[out.padding_mask].any()
    assert torch.isfinite(out.atom_embeddings).all()
    assert torch.equal(out.pooled, out.atom_embeddings[:, 0])  # the [CLS] state
    assert not torch.allclose(out.pooled[0], out.pooled[1])


def test_a_molecule_encodes_the_same_alone_and_in_a_padded_batch():
    encoder = make().eval()
    alone = encode_items(encoder, ["CCO"])
    batched = encode_items(encoder, [REAL_SMILES["tamoxifen"], "CCO", REAL_SMILES["aspirin"]])
    n = alone.atom_embeddings.shape[1]
    torch.testing.assert_close(batched.atom_embeddings[1, :n], alone.atom_embeddings[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(batched.pooled[1], alone.pooled[0], atol=1e-5, rtol=0)


def test_outputs_do_not_depend_on_coordinates():
    encoder = make().eval()
    rng = np.random.default_rng(0)
    a, b = (encoder.featurize_item(item("CCO", positions=rng.normal(size=(9, 3)).astype(np.float32))) for _ in range(2))
    assert torch.equal(a["tokens"], b["tokens"]) and set(a) == {"tokens"}
    with torch.no_grad():
        assert torch.equal(encoder(encoder.collate([a])).pooled, encoder(encoder.collate([b])).pooled)


def test_long_smiles_is_truncated_with_a_warning():
    encoder = make(max_length=8).eval()
    with pytest.warns(UserWarning, match=r"molecule long: SMILES of 20 tokens truncated to encoder.max_length=8"):
        features = encoder.featurize_item(item("C" * 20, "long"))
    assert len(features["tokens"]) == 8
    with torch.no_grad():
        assert encoder(encoder.collate([features])).atom_embeddings.shape == (1, 8, 128)


def test_presets_match_unimol_shapes_and_overrides_apply():
    with torch.device("meta"):
        base = SmilesEncoder(OmegaConf.structured(SmilesConfig(preset="base")))
    assert base.output_dim == 512 and len(base.encoder.layers) == 15
    assert base.encoder.layers[0].self_attn.num_heads == 64
    small = make(layers=2, hidden=32, heads=4, ffn=64)
    assert small.output_dim == 32 and len(small.encoder.layers) == 2
    with pytest.raises(MolbridgeError, match="encoder.hidden 30 is not divisible by encoder.heads 4"):
        make(hidden=30, heads=4)
    with pytest.raises(MolbridgeError, match="encoder.preset: 'tiny' is not one of base, small"):
        make(preset="tiny")


def test_checkpoint_round_trip_is_strict(tmp_path):
    source = make()
    path = tmp_path / "smiles.pt"
    torch.save({"model": source.state_dict()}, path)
    loaded = make(checkpoint=str(path))
    features = [source.featurize_item(item(s)) for s in REAL_SMILES.values()]
    with torch.no_grad():
        expected = source.eval()(source.collate(features)).pooled
        assert torch.equal(expected, loaded.eval()(loaded.collate(features)).pooled)
    torch.save(make(hidden=64, heads=4).state_dict(), tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other.pt does not match the model; shape mismatch: embed_positions"):
        make(checkpoint=str(tmp_path / "other.pt"))


def test_encoder_swap_from_a_unimol_recipe_builds_the_smiles_encoder():
    registry = load_plugins(external=False, strict=True).registry
    recipe = load_recipe("retrieval", registry=registry, components={"encoder": "smiles"})
    assert recipe.encoder.name == "smiles" and recipe.encoder.preset == "small"  # the preset carried over
    assert "hydrogens" not in recipe.encoder  # a Uni-Mol option the smiles encoder does not have
    encoder = registry.build("encoder", recipe.encoder)
    assert isinstance(encoder, SmilesEncoder) and encoder.output_dim == 128
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # molbridge-mini SMILES need no [UNK]
        encoder.featurize_item(item(REAL_SMILES["nitrobenzene"]))
