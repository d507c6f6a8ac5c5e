"""benchmarks/flops.py: the FLOPs counted for a step are the hand-computed ones, and MFU is their rate over the
measured matrix-product rate; the suite's MFU rows carry that ratio."""

import pytest
import torch


@pytest.fixture(scope="module")
def flops(benchmark_script):
    return benchmark_script("flops")


def test_counted_flops_of_a_training_step_are_the_hand_computed_ones(flops):
    """A bias-free linear layer on a batch: forward 2*B*I*O; backward the input gradient and the weight
    gradient, the same again each (elementwise work is not counted)."""
    batch, inputs, outputs = 8, 16, 4
    layer = torch.nn.Linear(inputs, outputs, bias=False)
    x = torch.randn(batch, inputs, requires_grad=True)
    assert flops.step_flops(lambda: layer(x).square().sum().backward()) == 3 * 2 * batch * inputs * outputs
    x = torch.randn(batch, inputs)  # no input gradient: the backward computes the weight gradient only
    assert flops.step_flops(lambda: layer(x).sum().backward()) == 2 * 2 * batch * inputs * outputs


def test_utilisation_is_achieved_over_measured(flops):
    u = flops.utilisation(flops=3 * 10**12, step_s=2.0, rate=6 * 10**12)
    assert u == {"step_tflop": 3.0, "achieved_tflops": 1.5, "matmul_tflops": 6.0, "mfu": 0.25}


def test_matmul_rate_is_a_positive_rate(flops):
    rate = flops.matmul_rate(torch.device("cpu"), torch.float32, size=64, repeats=2)
    assert 1e6 < rate < 1e14  # 2 * 64**3 FLOPs in seconds: a plausible CPU, not zero or a division slip


def test_suite_mfu_row_ratio_is_the_mfu(benchmark_script, flops):
    suite = benchmark_script("suite")
    u = flops.utilisation(flops=3 * 10**12, step_s=2.0, rate=6 * 10**12)
    row = suite.utilisation_row("stage1", "paper (batch 64): training step", u, "bf16-autocast")
    assert row.ratio == u["mfu"] == 0.25 and row.baseline == "bf16 matrix product, same device"
    rows = suite.step_rows(
        [
            {
                "variant": v,
                "params_m": 1.0,
                "batch": 1,
                "length": 8,
                "tokens_per_s": t,
                "step_mb": 1.0,
                "peak_mb": 2.0,
                "precision": "fp32",
                "utilisation": u,
            }
            for v, t in (("sdpa", 20.0), ("eager", 10.0))
        ]
    )
    mfu_rows = [r for r in rows if r.note == "ratio = MFU"]
    assert [r.ratio for r in mfu_rows] == [0.25, 0.25] and rows[0].ratio == 2.0
    assert "absolute peak 2.0 MB" in rows[0].note
