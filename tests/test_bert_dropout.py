"""PrefixBert's dropout and attention under training: the same distribution and maths as PyTorch's."""

import pytest
import torch
import torch.nn.functional as F

from molbridge.plugins.projectors import bert
from molbridge.plugins.projectors.bert import Dropout, attention, dropout


@pytest.fixture(params=[True, False], ids=["rand-mask", "F.dropout"])
def either_path(request, monkeypatch):
    """Both mask generators: ours (non-Intel CPUs) and F.dropout's (Intel CPUs, GPUs)."""
    monkeypatch.setattr(bert, "SLOW_CPU_BERNOULLI", request.param)


def test_dropout_zeroes_a_fraction_p_and_rescales_the_rest(either_path):
    torch.manual_seed(0)
    x = torch.ones(200_000, requires_grad=True)
    y = dropout(x, 0.1, training=True)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.1) < 0.005
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.9))
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # gradient = mask / (1 - p)
    assert dropout(x, 0.1, training=False) is x and dropout(x, 0.0, training=True) is x
    assert not dropout(x, 1.0, training=True).any()
    module = Dropout(0.1)
    assert isinstance(module, torch.nn.Dropout) and module.eval()(x) is x


@pytest.mark.parametrize("mask_kind", ["none", "bool", "additive"])
def test_attention_math_path_equals_sdpa_without_dropout(mask_kind, monkeypatch):
    """The written-out path (taken on CPUs with dropout) computes SDPA's attention: compared with dropout
    switched off inside it."""
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 8)
    keep = torch.rand(2, 1, 1, 7) > 0.3
    keep[..., 0] = True
    mask = {"none": None, "bool": keep, "additive": torch.zeros(keep.shape).masked_fill(~keep, -1e4)}[mask_kind]
    monkeypatch.setattr(bert, "SLOW_CPU_BERNOULLI", True)
    monkeypatch.setattr(bert, "dropout", lambda x, p, training: x)  # the math, without the randomness
    ours = attention(q, k, v, mask, dropout_p=0.1)
    assert (ours - F.scaled_dot_product_attention(q, k, v, attn_mask=mask)).abs().max() < 1e-6
