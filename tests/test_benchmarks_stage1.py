"""benchmarks/stage1.py: its transformers baseline holds our weights, so the speed-up compares the same computation."""

import torch


def test_baseline_computes_what_we_compute(benchmark_script):
    bench = benchmark_script("stage1")
    torch.manual_seed(0)
    model, _ = bench._build("default", 4)
    batch = bench._batch(model, 4)
    agreement = bench._agreement(model, batch)
    assert agreement["query pass"] <= 1e-5 and agreement["text pass"] <= 1e-5, agreement
    assert model.training  # restored for the timed steps


def test_bf16_query_pass_error_is_measured_against_our_fp32(benchmark_script):
    bench = benchmark_script("stage1")
    torch.manual_seed(0)
    model, _ = bench._build("default", 4)
    error = bench._bf16_error(model, bench._batch(model, 4))
    assert 0 < error < 0.2 and model.training
