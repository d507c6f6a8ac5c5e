"""benchmarks/conformer_order.py: how well an encoder trained on one conformer fact orders two conformers by it."""

import json

import numpy as np
import pytest
import torch


class FirstCoordinate(torch.nn.Module):
    """A stand-in scorer: each conformer's score is its first atom's x coordinate, times ``sign``."""

    def __init__(self, sign: float):
        super().__init__()
        self.sign = sign

    def forward(self, atoms_and_positions):
        return torch.tensor([self.sign * float(xyz[0, 0]) for _, xyz in atoms_and_positions])


def _molecule(xs, values):
    conformers = np.zeros((len(xs), 2, 3), dtype=np.float32)
    conformers[:, 0, 0] = xs
    return np.array([6, 8]), conformers, np.array(values, dtype=float)


def test_pairs_are_counted_per_molecule_and_ties_skipped(benchmark_script):
    order = benchmark_script("conformer_order")
    data = [
        _molecule([1.0, 2.0, 3.0], [10.0, 20.0, 30.0]),  # scores agree with the values on all 3 pairs
        _molecule([1.0, 2.0, 3.0], [10.0, 30.0, 20.0]),  # 2 of 3 pairs right: (10, 30) and (10, 20)
        _molecule([1.0, 2.0], [5.0, 5.0]),  # a tie: no pair to count
    ]
    every, wide = order.ordered(FirstCoordinate(1.0), data, gap=15.0)
    assert every[:2] == pytest.approx([1.0, 2 / 3]) and np.isnan(every[2])
    # apart by more than 15: only (10, 30) in each, ordered right in both
    assert wide[:2] == pytest.approx([1.0, 1.0]) and np.isnan(wide[2])
    reversed_every, _ = order.ordered(FirstCoordinate(-1.0), data, gap=15.0)
    assert reversed_every[:2] == pytest.approx([0.0, 1 / 3])


@pytest.mark.slow
def test_the_benchmark_trains_and_scores_an_encoder(benchmark_script, tmp_path):
    order = benchmark_script("conformer_order")
    out = tmp_path / "order.json"
    result = order.main(["--encoder", "schnet", "--target", "max_distance", "--steps", "2", "--json", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["all_pairs"]["molecules"] > 300 and 0.0 <= result["all_pairs"]["ordered_right"] <= 1.0
    assert result["all_pairs"]["lo"] <= result["all_pairs"]["ordered_right"] <= result["all_pairs"]["hi"]
