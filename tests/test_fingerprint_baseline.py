"""Fingerprint ridge baseline: recovers a linear map from fingerprints, stays near chance on noise, names bad SMILES."""

import os

import pytest
import torch
from rdkit import RDConfig

from molbridge.core.errors import MolbridgeError
from molbridge.plugins.tasks.fingerprint_baseline import FingerprintRidge
from molbridge.plugins.tasks.retrieval_metrics import retrieval_report


@pytest.fixture(scope="module")
def smiles():
    path = os.path.join(RDConfig.RDDataDir, "NCI", "first_5K.smi")
    with open(path) as handle:
        return [line.split()[0] for line in handle][:900]


def split(smiles, emb):
    return smiles[:600], emb[:600], smiles[600:750], emb[600:750], smiles[750:], emb[750:]


def test_recovers_linear_map(smiles):
    ridge = FingerprintRidge(n_bits=512, alphas=(1e-3, 1, 100))
    x = ridge.fingerprints(smiles).float()
    g = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(
        x @ torch.randn(512, 32, generator=g) + 0.1 * torch.randn(900, 32, generator=g), dim=-1
    )
    tr_s, tr_e, va_s, va_e, te_s, te_e = split(smiles, emb)
    ridge.fit(tr_s, tr_e, va_s, va_e)
    assert ridge.chosen_alpha in (1e-3, 1.0, 100.0) and set(ridge.validation_scores) == {1e-3, 1.0, 100.0}
    assert ridge.validation_scores[ridge.chosen_alpha] == max(ridge.validation_scores.values())
    feats = ridge.molecule_features(te_s)
    assert feats.shape == (150, 1, 32) and torch.allclose(feats.norm(dim=-1), torch.ones(150, 1))
    report = retrieval_report(feats, te_e)
    assert report["full_m2t_r20"] > 0.8 and report["full_t2m_r20"] > 0.8  # chance is 20/150 = 0.13
    info = ridge.describe()
    assert info["alpha"] == ridge.chosen_alpha and info["bits"] == 512 and info["validation_score"] > 0.3


def test_noise_targets_stay_near_chance(smiles):
    emb = torch.nn.functional.normalize(torch.randn(900, 32, generator=torch.Generator().manual_seed(1)), dim=-1)
    tr_s, tr_e, va_s, va_e, te_s, te_e = split(smiles, emb)
    ridge = FingerprintRidge(n_bits=512, alphas=(10, 1000)).fit(tr_s, tr_e, va_s, va_e)
    report = retrieval_report(ridge.molecule_features(te_s), te_e)
    assert report["full_m2t_r20"] < 0.3 and report["full_t2m_r20"] < 0.3  # chance 0.13


def test_invalid_smiles_named_with_position(smiles):
    ridge = FingerprintRidge(n_bits=64)
    with pytest.raises(MolbridgeError, match=r"'C1CC' at position 2"):
        ridge.fingerprints(["CCO", "c1ccccc1", "C1CC"])
    with pytest.raises(MolbridgeError, match="before fit"):
        ridge.molecule_features(["CCO"])
    with pytest.raises(MolbridgeError, match="valid: 2 SMILES"):
        ridge.fit(["CCO"], torch.zeros(1, 4), ["CCO", "CCN"], torch.zeros(3, 4))


def test_a_fit_read_back_from_its_state_predicts_the_same_bits(smiles):
    emb = torch.nn.functional.normalize(torch.randn(900, 16, generator=torch.Generator().manual_seed(2)), dim=-1)
    tr_s, tr_e, va_s, va_e, te_s, _ = split(smiles, emb)
    fitted = FingerprintRidge(n_bits=256, alphas=(1, 100)).fit(tr_s, tr_e, va_s, va_e)
    state = {name: tensor.clone() for name, tensor in fitted.state().items()}  # as a cache hands it back
    loaded = FingerprintRidge(n_bits=256, alphas=(1, 100)).load_state(state)
    assert torch.equal(loaded.molecule_features(te_s), fitted.molecule_features(te_s))
    assert loaded.describe() == fitted.describe()
    assert FingerprintRidge(n_bits=256).settings() != fitted.settings()  # other alphas: another cache namespace
    with pytest.raises(MolbridgeError, match="before fit"):
        FingerprintRidge().state()
