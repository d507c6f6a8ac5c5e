"""benchmarks/stage1.py: its transformers baseline holds our weights, so the speed-up compares the same computation."""

import pytest
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


def test_our_passes_start_from_empty_gradients_like_the_baseline(benchmark_script):
    """The baseline's models are fresh each step; ours must not accumulate into last step's .grad (an add_ over
    every parameter that only our side would pay): after a second step the gradients are still one pass's."""
    bench = benchmark_script("stage1")
    torch.manual_seed(0)
    model, _ = bench._build("default", 4)
    model.eval().projector.requires_grad_(True)  # eval: no dropout, so two passes give the same gradients
    batch = bench._batch(model, 4)
    encoded = bench._encoded(model, batch)
    bench._ours_forward_backward(model, encoded, batch, bench.Timer(False), parts=("query pass",))
    once = {n: p.grad.clone() for n, p in model.projector.named_parameters() if p.grad is not None}
    bench._ours_forward_backward(model, encoded, batch, bench.Timer(False), parts=("query pass",))
    twice = {n: p.grad for n, p in model.projector.named_parameters() if p.grad is not None}
    assert once and once.keys() == twice.keys()
    assert all(torch.allclose(once[n], twice[n], atol=1e-6) for n in once)


def test_comparison_interleaves_and_reports_the_median_ratio(benchmark_script, monkeypatch):
    """Each side's time is the median of its steps and the speed-up the median of per-step ratios."""
    bench = benchmark_script("stage1")
    ours_times, theirs_times = iter([9.0, 1.0, 2.0, 3.0]), iter([9.0, 2.0, 2.0, 9.0])  # first: warm-up

    def fake(times):
        def run(*args):
            args[-2].parts["query pass"] = next(times)  # (..., timer, parts)

        return run

    monkeypatch.setattr(bench, "_ours_forward_backward", fake(ours_times))
    monkeypatch.setattr(bench, "_baseline", fake(theirs_times))
    monkeypatch.setattr(bench, "_baseline_models", lambda model: None)
    monkeypatch.setattr(bench, "_encoded", lambda model, batch: None)
    result = bench._compare(None, None, 3, False, ("query pass",))["query pass"]
    # per-step ratios 2/1, 2/2, 9/3: median 2.0; medians of the times 2.0 and 2.0
    assert result == {"ours_s": 2.0, "transformers_s": 2.0, "speedup": 2.0, "timed_steps": 3}


def test_the_loops_optimizer_steps_like_torchs_default_adamw(benchmark_script):
    """The "optimizer step" row times build_optimizer's AdamW (fused where torch has the kernel) against torch's
    default one on the same parameters and gradients; one step of each from the same state agrees."""
    bench = benchmark_script("stage1")
    torch.manual_seed(0)
    model, _ = bench._build("default", 4)
    result = bench._optimizer_speed(model, 2)
    assert result["max_abs_diff"] < 1e-6 and result["ours_s"] > 0 and result["transformers_s"] > 0
    assert result["baseline"] == "torch's default AdamW step"
    assert bench.build_optimizer(model, 1e-5, 0.05).defaults["fused"]  # the loop's own, fused on this CPU


def test_compiled_step_is_timed_against_eager_from_the_same_weights(benchmark_script, monkeypatch):
    """torch.compile in place (here its ``eager`` backend, which traces without generating code): the features
    agree with the eager ones from the same weights, and both sides report their step time."""
    bench = benchmark_script("stage1")
    compile_module = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compile_module(self, backend="eager", **kw))
    torch.manual_seed(0)
    model, _ = bench._build("default", 4)
    batch = bench._batch(model, 4)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    result = bench._compiled_speed(model.train(), batch, optimizer, steps=1, cuda=False)
    assert result["max_abs_diff"] <= 1e-5 and result["ours_s"] > 0 and result["transformers_s"] > 0
    assert result["speedup"] == pytest.approx(result["transformers_s"] / result["ours_s"], rel=0.01)  # of the medians
    assert model.encoder._compiled_call_impl is not None  # the model stays compiled, as documented
