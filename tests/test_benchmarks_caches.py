"""benchmarks/caches.py measures what the caches and bucketing save; the suite turns it into ratio rows."""

import json

import pytest


def test_cache_rows_are_ratios_against_recomputing(benchmark_script):
    suite = benchmark_script("suite")
    bucket = {
        "molecules": 8,
        "batch_size": 4,
        "random_padding_positions": 0.5,
        "bucketed_padding_positions": 0.1,
        "random_padding_pairs": 0.8,
        "bucketed_padding_pairs": 0.2,
        "small_random_s": 2.0,
        "small_bucketed_s": 1.0,
        "base_random_s": 3.0,
        "base_bucketed_s": 2.0,
    }
    result = {
        "encoder": {"batches": 4, "recompute_s": 10.0, "cached_s": 1.0, "fill_s": 3.0},
        "text_tower": {"texts": 5, "cold_s": 8.0, "warm_s": 0.5},
        "bucketing_mini": bucket,
        "bucketing_long_tail": bucket,
    }
    rows = suite.cache_rows(result)
    assert [r.ratio for r in rows] == [10.0, 16.0, 2.0, 1.5, 2.0, 1.5]
    assert "padded pairs 80% -> 20%" in rows[2].note


@pytest.mark.slow
def test_caches_benchmark_runs_at_a_tiny_size(benchmark_script, tmp_path):
    caches = benchmark_script("caches")
    out = tmp_path / "caches.json"
    assert (
        caches.main(["--molecules", "16", "--texts", "32", "--long-tail", "16", "--repeats", "1", "--json", str(out)])
        == 0
    )
    result = json.loads(out.read_text())
    assert result["text_tower"]["warm_s"] < result["text_tower"]["cold_s"]
    assert (
        0
        <= result["bucketing_long_tail"]["bucketed_padding_pairs"]
        <= result["bucketing_long_tail"]["random_padding_pairs"]
    )
