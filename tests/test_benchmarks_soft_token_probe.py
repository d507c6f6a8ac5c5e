"""benchmarks/soft_token_probe.py: the ridge probe on hand-computed cases, and the SMILES control at its ceiling."""

import json

import numpy as np
import pytest


def test_ridge_weights_by_hand(benchmark_script):
    probe = benchmark_script("soft_token_probe")
    x = np.array([[1.0], [-1.0], [2.0], [-2.0]])  # one feature, squared singular value 10
    weak, equal = probe.ridge_fits(x, 2 * x[:, 0], strengths=(1e-12, 1.0))
    assert weak == pytest.approx([2.0])  # no shrinkage: the least-squares slope
    assert equal == pytest.approx([1.0])  # strength s0^2: 2 * 10 / (10 + 10)
    (flat,) = probe.ridge_fits(np.zeros((4, 3)), np.arange(4.0), strengths=(1e-3,))
    assert flat.tolist() == [0.0, 0.0, 0.0]  # nothing differs within a molecule: predict no difference


def test_centred_takes_out_each_molecules_mean(benchmark_script):
    probe = benchmark_script("soft_token_probe")
    values = np.array([[1.0, 10.0], [3.0, 20.0], [5.0, 0.0], [5.0, 3.0], [8.0, 3.0]])
    assert probe.centred(values, [2, 3]).tolist() == [[-1.0, -5.0], [1.0, 5.0], [-1.0, -2.0], [-1.0, 1.0], [2.0, 1.0]]


def synthetic(rng, molecules: int, signal: bool):
    """Three conformers a molecule; the target's differences are in feature 0 (under a molecule offset that the
    centring removes) when ``signal``, else the features are noise."""
    sizes = [3] * molecules
    target = rng.normal(size=3 * molecules) + np.repeat(rng.normal(scale=5, size=molecules), 3)
    noise = rng.normal(size=(3 * molecules, 6))
    if signal:
        noise[:, 0] = target + np.repeat(rng.normal(scale=50, size=molecules), 3)
    return noise, target, sizes


@pytest.mark.parametrize("signal", [True, False])
def test_probe_reads_a_fact_the_features_hold_and_not_noise(benchmark_script, signal):
    probe = benchmark_script("soft_token_probe")
    rng = np.random.default_rng(0)
    parts = {split: synthetic(rng, n, signal) for split, n in (("train", 200), ("valid", 50), ("test", 100))}
    found = probe.probe(
        {s: p[0] for s, p in parts.items()}, {s: p[1] for s, p in parts.items()}, {s: p[2] for s, p in parts.items()}
    )
    within, ceiling, ordered = found["errors"].mean(), found["ceiling"].mean(), found["ordered"].mean()
    assert len(found["errors"]) == 300 and len(found["ordered"]) == 100
    if signal:
        assert within < 0.01 * ceiling and ordered == 1.0
    else:
        assert within > 0.9 * ceiling and 0.35 < ordered < 0.65


def test_smiles_control_is_at_the_ceiling_by_construction(tmp_cwd, tiny_conformer_qa_run, benchmark_script, capsys):
    """A SMILES-only encoder hands every conformer of a molecule the same tokens: the probe predicts no difference."""
    run = tiny_conformer_qa_run()
    probe = benchmark_script("soft_token_probe")
    out = probe.main([str(run), "--target", "radius_of_gyration", "--molecules", "6", "--json", "probe.json"])
    found = out["targets"]["radius_of_gyration"]
    assert found["test_molecules"] == 6 and found["test_conformers"] >= 12
    for name in ("encoder", "soft_tokens"):
        assert found[name]["within_mae"] == pytest.approx(found[name]["ceiling"], abs=1e-12)
        assert found[name]["ceiling"] > 0.01 and found[name]["pairs_ordered_right"] == 0.5
        assert found[name]["verdict"] == "not distinguishable"
    assert json.loads((tmp_cwd / "probe.json").read_text()) == out
    assert "soft_tokens probe within" in capsys.readouterr().out
