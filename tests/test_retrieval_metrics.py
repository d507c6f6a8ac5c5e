"""Retrieval metrics: chunked ranks equal dense ranks, in-batch protocol, re-ranking, multi-query max rule."""

import pytest
import torch

from molbridge.plugins.tasks.retrieval_metrics import (
    full_set_ranks,
    in_batch_ranks,
    rank_metrics,
    rerank,
    retrieval_report,
)
from molbridge.plugins.tasks.stage1 import similarity  # the dense, differentiable reference


def dense_ranks(mol, text):
    """Reference: full N x N matrix, stable descending sort (ties: lower index first)."""
    sim = similarity(mol, text)
    n = sim.shape[0]
    m2t = torch.tensor([torch.sort(sim[i], descending=True, stable=True).indices.tolist().index(i) for i in range(n)])
    t2m = torch.tensor(
        [torch.sort(sim[:, j], descending=True, stable=True).indices.tolist().index(j) for j in range(n)]
    )
    return m2t, t2m


def quantised(n, q, e, seed=0):
    """Small-integer vectors: exact float sums, many ties."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(-2, 3, (n, q, e), generator=g).float(), torch.randint(-2, 3, (n, e), generator=g).float())


@pytest.mark.parametrize("chunk_size", [1, 7, 50])
def test_chunked_ranks_equal_dense_with_ties(chunk_size):
    mol, text = quantised(50, 3, 4)
    want_m2t, want_t2m = dense_ranks(mol, text)
    got_m2t, got_t2m = full_set_ranks(mol, text, chunk_size=chunk_size)
    sim = similarity(mol, text)
    assert (sim == sim.diagonal()[:, None]).sum() > 50  # the data really has ties beyond the diagonal
    assert torch.equal(got_m2t, want_m2t) and torch.equal(got_t2m, want_t2m)


def test_perfect_match_and_reversed_ranks():
    text = torch.eye(5)
    perfect = rank_metrics(*full_set_ranks(text[:, None, :], text), ks=(1, 3))
    assert perfect == {"m2t_acc": 1.0, "t2m_acc": 1.0, "m2t_r1": 1.0, "t2m_r1": 1.0, "m2t_r3": 1.0, "t2m_r3": 1.0}
    # molecule i = text 4-i: one text scores 1 (text 4-i), the rest 0. Positive of i=2 scores 1 -> rank 0; the
    # others score 0 -> rank = 1 (the higher text) + zero-scoring texts with a lower index than i.
    mol = text.flip(0)[:, None, :]
    m2t, t2m = full_set_ranks(mol, text, chunk_size=2)
    assert m2t.tolist() == [1, 2, 0, 3, 4]
    assert t2m.tolist() == [1, 2, 0, 3, 4]  # the similarity matrix is symmetric


def test_ranks_follow_a_permutation():
    e = torch.eye(6)
    perm = torch.tensor([0, 2, 1, 3, 5, 4])
    # text j = e[j]; molecule i = 0.9 e[perm[i]] + 0.1 e[i]: the best text is perm[i], the positive comes second
    mol = (0.9 * e[perm] + 0.1 * e)[:, None, :]
    m2t, t2m = full_set_ranks(mol, e, chunk_size=4)
    fixed = perm == torch.arange(6)
    assert m2t.tolist() == [0 if f else 1 for f in fixed]
    assert t2m.tolist() == [0 if f else 1 for f in fixed]


def test_in_batch_partial_last_batch_by_hand():
    # 5 pairs, batches of 2 -> [0,1], [2,3], [4]; scalar embeddings make the scores easy to write down
    text = torch.tensor([[1.0], [1.0], [1.0], [-1.0], [1.0]])
    mol = torch.tensor([[1.0], [1.0], [-1.0], [1.0], [-1.0]])[:, :, None]
    m2t, t2m = in_batch_ranks(mol, text, batch_size=2)
    # batch 0: all scores 1, ties -> rank = index within batch. batch 1: sim = [[-1, 1], [1, -1]] -> both rank 1.
    # batch 2: single candidate -> rank 0.
    assert m2t.tolist() == [0, 1, 1, 1, 0]
    assert t2m.tolist() == [0, 1, 1, 1, 0]


def test_similarity_takes_max_over_queries():
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mol = torch.tensor([[[1.0, 0.0], [0.0, 0.5]], [[0.2, 0.0], [0.0, 0.3]]])
    assert torch.allclose(similarity(mol, text), torch.tensor([[1.0, 0.5], [0.2, 0.3]]))
    m2t, t2m = full_set_ranks(mol, text)
    assert m2t.tolist() == [0, 0] and t2m.tolist() == [0, 1]


def test_rerank_lifts_positives_within_top_k_only():
    g = torch.Generator().manual_seed(1)
    n, k = 40, 5
    mol = torch.nn.functional.normalize(torch.randn(n, 2, 8, generator=g), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(n, 8, generator=g), dim=-1)
    full_m2t, full_t2m = full_set_ranks(mol, text)
    calls = []

    def favour_positive(mol_idx, text_idx):
        calls.append(len(mol_idx))
        return (mol_idx == text_idx).float() * 100.0

    m2t, t2m = rerank(mol, text, favour_positive, k=k, chunk_size=16)
    for full, new in ((full_m2t, m2t), (full_t2m, t2m)):
        inside = full < k
        assert inside.any() and (~inside).any()
        assert (new[inside] == 0).all() and torch.equal(new[~inside], full[~inside])
    assert max(calls) == 16 * k  # one call per chunk, not per pair


def test_rerank_with_zero_scores_keeps_ranks():
    mol, text = quantised(30, 2, 3, seed=3)
    zero = lambda m, t: torch.zeros(len(m))  # noqa: E731
    assert all(torch.equal(a, b) for a, b in zip(rerank(mol, text, zero, k=8, chunk_size=7), full_set_ranks(mol, text)))


def test_report_keys_and_determinism():
    mol, text = quantised(70, 2, 6, seed=5)
    score = lambda m, t: (m == t).float()  # noqa: E731
    first = retrieval_report(mol, text, pair_scores=score, rerank_k=10, chunk_size=16)
    assert first == retrieval_report(mol, text, pair_scores=score, rerank_k=10, chunk_size=33)
    for prefix in ("inbatch", "full", "rerank_inbatch", "rerank_full"):
        for key in ("m2t_acc", "t2m_acc", "m2t_r20", "t2m_r20"):
            assert 0.0 <= first[f"{prefix}_{key}"] <= 1.0
    assert len(first) == 16
    assert first["rerank_full_m2t_acc"] >= first["full_m2t_acc"]
    assert "rerank_full_m2t_acc" not in retrieval_report(mol, text)


def test_ranks_do_not_change_under_bf16_autocast():
    """Training under bf16-mixed evaluates under autocast: similarities must stay fp32, or scores closer than bf16
    resolves tie and the ranks (the fixed baseline's too) depend on the run's precision."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(20, 1, 16, generator=g)
    # texts in twins about 0.998 apart in cosine: fp32 tells each molecule's own text from its twin, bf16 (spacing
    # 2^-8 below 1) rounds both scores to 1 and the tie rule would rank the second twin behind the first
    text = torch.nn.functional.normalize((base + 1e-2 * torch.randn(20, 2, 16, generator=g)).reshape(40, 16), dim=-1)
    mol = text[:, None, :].clone()
    zero = lambda m, t: torch.zeros(len(m))  # noqa: E731
    fp32 = [*full_set_ranks(mol, text, chunk_size=16), *rerank(mol, text, zero, k=8)]
    assert all((ranks == 0).all() for ranks in fp32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (mol[:, 0] @ text.T == 1).sum() > 40  # the premise: under autocast a plain product does tie
        bf16 = [*full_set_ranks(mol, text, chunk_size=16), *rerank(mol, text, zero, k=8)]
        report = retrieval_report(mol, text)
    assert all(torch.equal(a, b) for a, b in zip(fp32, bf16, strict=True))
    assert report == retrieval_report(mol, text)
