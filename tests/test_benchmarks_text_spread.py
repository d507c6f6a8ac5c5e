"""benchmarks/text_spread.py: the spread figures on hand-computed cases."""

import math

import pytest
import torch


def test_spread_of_orthogonal_and_of_parallel_states(benchmark_script):
    bench = benchmark_script("text_spread")
    square = bench.spread(torch.eye(4) * 3)  # four texts on four axes: variance spread evenly over 3 directions
    assert square["mean_cosine"] == pytest.approx(0.0) and square["nearest_cosine"] == pytest.approx(0.0)
    assert square["effective_rank"] == pytest.approx(3.0) and square["top_direction_share"] == pytest.approx(1 / 3)
    line = bench.spread(torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]))  # one direction, all parallel
    assert line["mean_cosine"] == pytest.approx(1.0) and line["nearest_cosine"] == pytest.approx(1.0)
    assert line["effective_rank"] == pytest.approx(1.0) and line["top_direction_share"] == pytest.approx(1.0)


def test_both_towers_pool_the_split(benchmark_script, monkeypatch):
    bench = benchmark_script("text_spread")
    seen = []
    monkeypatch.setattr(bench, "BATCH", 3)  # several batches, one short
    real = bench.pooled_texts

    def few(texts, pretrained, overrides):
        seen.append(pretrained)
        return real(texts[:7], pretrained, overrides)

    monkeypatch.setattr(bench, "pooled_texts", few)
    result = bench.measure("test", [])
    assert seen == [True, False] and result["texts"] > 7
    for tower in ("pretrained", "random"):
        assert -1 <= result[tower]["mean_cosine"] <= result[tower]["nearest_cosine"] <= 1
        assert 1 <= result[tower]["effective_rank"] <= 6 and not math.isnan(result[tower]["top_direction_share"])
