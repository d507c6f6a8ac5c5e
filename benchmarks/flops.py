"""Model FLOP utilisation (MFU): the FLOPs of one training step over its time, against the matrix-product
rate measured on the same device in the same process.

The FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on one extra step (matrix products,
convolutions and attention, forward and backward; elementwise work is not counted, as is usual for MFU).
The ceiling is measured rather than taken from a datasheet: the median of timed square matrix products in
the step's precision (bf16 on a GPU, fp32 on a CPU), so MFU is a ratio of two figures taken in one run.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


def step_flops(step: Callable[[], object]) -> int:
    """FLOPs of one call of ``step`` (run once, untimed)."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def matmul_rate(device: torch.device, dtype: torch.dtype, size: int | None = None, repeats: int = 10) -> float:
    """Median FLOP/s of ``size``-square products of random ``dtype`` matrices on ``device`` (after warm-up)."""
    cuda = device.type == "cuda"
    size = size or (8192 if cuda else 1024)
    generator = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.randn(size, size, device=device, dtype=dtype, generator=generator) for _ in range(2))
    times = []
    for i in range(repeats + 3):  # three warm-ups
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.mm(a, b)
        if cuda:
            torch.cuda.synchronize()
        if i >= 3:
            times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times)


def utilisation(flops: int, step_s: float, rate: float) -> dict:
    """The step's achieved TFLOP/s, the measured ceiling and their ratio (MFU)."""
    achieved = flops / step_s
    return {
        "step_tflop": round(flops / 1e12, 4),
        "achieved_tflops": round(achieved / 1e12, 3),
        "matmul_tflops": round(rate / 1e12, 3),
        "mfu": round(achieved / rate, 4),
    }
