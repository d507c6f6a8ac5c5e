"""Molecule-text retrieval metrics with bounded memory (3D-MoLM protocol: in-batch of 64 and full test set).

Similarity convention: a molecule has Q L2-normalised feature vectors (Q query tokens), a text has one;
sim(mol i, text j) = max_q mol[i, q] . text[j]. Pair i is (mol i, text i).

Rank rule (used everywhere): the rank of the positive is the number of candidates scoring strictly higher,
plus the number of candidates scoring exactly the same whose index is lower than the positive's index.
0 = retrieved first. The rule is deterministic and equals the position in a stable descending sort.

Similarities are computed in fp32 whatever autocast is active: under bf16 autocast a product of unit vectors
keeps 8 significant bits, so near scores become ties and ranks move with the run's precision (the fingerprint
baseline, the same fixed model in both runs, scored full_acc 0.0435 in a 32-true run of the main job and 0.0271 in
a bf16-mixed one before this).
"""

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

PairScores = Callable[[Tensor, Tensor], Tensor]


def _check(mol: Tensor, text: Tensor) -> None:
    if mol.dim() != 3 or text.dim() != 2 or mol.shape[0] != text.shape[0] or mol.shape[2] != text.shape[1]:
        raise ValueError(f"expected mol (N, Q, E) and text (N, E); got {tuple(mol.shape)} and {tuple(text.shape)}")


def _max_over_queries(rows: Tensor, cols: Tensor) -> Tensor:
    """(R, Q, E) x (C, E) -> (R, C): a running max over q keeps memory at R*C instead of R*Q*C."""
    with torch.autocast(rows.device.type, enabled=False):  # fp32: see the module docstring
        rows, cols = rows.float(), cols.float()
        out = rows[:, 0] @ cols.T
        for q in range(1, rows.shape[1]):
            torch.maximum(out, rows[:, q] @ cols.T, out=out)
    return out


def positive_scores(mol: Tensor, text: Tensor) -> Tensor:
    """sim(mol i, text i) for every pair, without forming any N x N block."""
    with torch.autocast(mol.device.type, enabled=False):  # fp32: see the module docstring
        return torch.einsum("nqe,ne->nq", mol.float(), text.float()).amax(dim=1)


def _block(mol: Tensor, text: Tensor, start: int, stop: int, pos: Tensor, by_text: bool) -> Tensor:
    """Rows start:stop of the similarity matrix (or of its transpose when by_text), shape (chunk, N).

    The positive entries are overwritten with ``pos`` so a positive is compared with one value everywhere,
    whatever kernel computed it (matmul and einsum may differ in the last bit).
    """
    if by_text:
        block = _max_over_queries(mol, text[start:stop]).T.contiguous()
    else:
        block = _max_over_queries(mol[start:stop], text)
    rows = torch.arange(stop - start, device=block.device)
    block[rows, rows + start] = pos[start:stop]
    return block


def _row_ranks(block: Tensor, pos: Tensor, positive_idx: Tensor) -> Tensor:
    """Rank of each row's positive among the row's candidates (strictly higher + equal with lower index)."""
    higher = (block > pos[:, None]).sum(dim=1)
    cand = torch.arange(block.shape[1], device=block.device)
    tied_before = ((block == pos[:, None]) & (cand[None, :] < positive_idx[:, None])).sum(dim=1)
    return higher + tied_before


def full_set_ranks(mol: Tensor, text: Tensor, chunk_size: int = 1024) -> tuple[Tensor, Tensor]:
    """Ranks (0 = first) of each true partner among all N candidates: (m2t_rank, t2m_rank), both (N,) long.

    Works over row chunks of molecules: peak memory O(chunk_size * N). The molecule->text rank comes from the
    row of each chunk; the text->molecule rank is accumulated column-wise over the chunks (for text j, count
    molecules i with sim(i, j) > sim(j, j), or equal with i < j). Ties: see the module docstring.
    """
    _check(mol, text)
    with torch.no_grad():
        n = mol.shape[0]
        pos = positive_scores(mol, text)
        m2t = torch.empty(n, dtype=torch.long, device=mol.device)
        t2m = torch.zeros(n, dtype=torch.long, device=mol.device)
        cand = torch.arange(n, device=mol.device)
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            block = _block(mol, text, start, stop, pos, by_text=False)
            m2t[start:stop] = _row_ranks(block, pos[start:stop], cand[start:stop])
            mol_idx = cand[start:stop, None]
            t2m += ((block > pos[None, :]) | ((block == pos[None, :]) & (mol_idx < cand[None, :]))).sum(dim=0)
        return m2t.cpu(), t2m.cpu()


def rank_metrics(m2t_rank: Tensor, t2m_rank: Tensor, ks: Sequence[int] = (20,)) -> dict[str, float]:
    """Accuracy (rank 0) and Recall@k (rank < k) in both directions, as floats in [0, 1]."""
    out = {"m2t_acc": (m2t_rank == 0).float().mean().item(), "t2m_acc": (t2m_rank == 0).float().mean().item()}
    for k in ks:
        out[f"m2t_r{k}"] = (m2t_rank < k).float().mean().item()
        out[f"t2m_r{k}"] = (t2m_rank < k).float().mean().item()
    return out


def _per_batch(mol: Tensor, text: Tensor, batch_size: int, ranks_of) -> tuple[Tensor, Tensor]:
    """Apply ``ranks_of(mol_b, text_b, offset)`` to consecutive batches in dataset order; concatenate."""
    _check(mol, text)
    m2t, t2m = [], []
    for start in range(0, mol.shape[0], batch_size):
        m, t = ranks_of(mol[start : start + batch_size], text[start : start + batch_size], start)
        m2t.append(m)
        t2m.append(t)
    return torch.cat(m2t), torch.cat(t2m)


def in_batch_ranks(mol: Tensor, text: Tensor, batch_size: int = 64) -> tuple[Tensor, Tensor]:
    """Ranks within consecutive batches of ``batch_size`` in dataset order (the last one may be partial)."""
    return _per_batch(mol, text, batch_size, lambda m, t, _: full_set_ranks(m, t, chunk_size=batch_size))


def _top_k_mask(block: Tensor, k: int) -> Tensor:
    """Boolean mask of the first k candidates per row in stable descending order (ties: lower index first).

    torch.topk's order among ties is unspecified, so the boundary ties are resolved here by index.
    """
    kth = block.topk(k, dim=1).values[:, -1:]
    above = block > kth
    ties = block == kth
    room = k - above.sum(dim=1, keepdim=True)
    return above | (ties & (ties.cumsum(dim=1, dtype=torch.int32) <= room))


def _rerank_direction(
    mol: Tensor, text: Tensor, pair_scores: PairScores, k: int, chunk_size: int, by_text: bool, offset: int
) -> Tensor:
    """Re-ranked positive ranks for one direction (rows are texts when by_text)."""
    n = mol.shape[0]
    k = min(k, n)
    pos = positive_scores(mol, text)
    ranks = torch.empty(n, dtype=torch.long, device=mol.device)
    all_idx = torch.arange(n, device=mol.device)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        block = _block(mol, text, start, stop, pos, by_text)
        rows = all_idx[start:stop]
        full = _row_ranks(block, pos[start:stop], rows)
        cand = _top_k_mask(block, k).nonzero()[:, 1].view(stop - start, k)  # (chunk, k), ascending index
        row_idx = rows[:, None].expand_as(cand)
        mol_idx, text_idx = (cand, row_idx) if by_text else (row_idx, cand)
        extra = pair_scores(mol_idx.reshape(-1) + offset, text_idx.reshape(-1) + offset).reshape(cand.shape)
        scores = block.gather(1, cand) + extra.to(block.dtype)
        is_pos = cand == rows[:, None]
        pos_new = (scores * is_pos).sum(dim=1)
        re = (scores > pos_new[:, None]).sum(dim=1) + ((scores == pos_new[:, None]) & (cand < rows[:, None])).sum(1)
        ranks[start:stop] = torch.where(is_pos.any(dim=1), re, full)
    return ranks.cpu()


def rerank(
    mol: Tensor, text: Tensor, pair_scores: PairScores, k: int = 64, chunk_size: int = 1024, offset: int = 0
) -> tuple[Tensor, Tensor]:
    """Ranks after re-scoring each query's top-k candidates as sim + pair_scores(mol_idx, text_idx).

    The top-k is the first k in stable descending similarity order; ``pair_scores`` receives all pairs of a chunk
    at once (two equal-length long tensors, indices shifted by ``offset``) and returns one score per pair. A
    positive outside the top-k keeps its full-set rank (which is >= k). Ties: see the module docstring.
    """
    _check(mol, text)
    with torch.no_grad():
        m2t = _rerank_direction(mol, text, pair_scores, k, chunk_size, by_text=False, offset=offset)
        t2m = _rerank_direction(mol, text, pair_scores, k, chunk_size, by_text=True, offset=offset)
        return m2t, t2m


def _prefixed(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}_{key}": value for key, value in metrics.items()}


def retrieval_report(
    mol: Tensor,
    text: Tensor,
    *,
    batch_size: int = 64,
    ks: Sequence[int] = (20,),
    pair_scores: PairScores | None = None,
    rerank_k: int = 64,
    chunk_size: int = 1024,
) -> dict[str, float]:
    """All retrieval metrics as flat keys: inbatch_*, full_* and, given pair_scores, rerank_inbatch_*/rerank_full_*.

    In-batch re-ranking re-scores every candidate of the batch (k = batch_size).
    """
    with torch.no_grad():
        report = _prefixed("inbatch", rank_metrics(*in_batch_ranks(mol, text, batch_size), ks))
        report |= _prefixed("full", rank_metrics(*full_set_ranks(mol, text, chunk_size), ks))
        if pair_scores is not None and rerank_k > 0:
            inbatch = _per_batch(
                mol, text, batch_size, lambda m, t, off: rerank(m, t, pair_scores, batch_size, batch_size, off)
            )
            report |= _prefixed("rerank_inbatch", rank_metrics(*inbatch, ks))
            report |= _prefixed("rerank_full", rank_metrics(*rerank(mol, text, pair_scores, rerank_k, chunk_size), ks))
        return report
