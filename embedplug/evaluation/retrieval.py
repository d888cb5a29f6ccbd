"""Retrieval metrics: recall@k and MRR@k of each query's one relevant corpus item."""

from __future__ import annotations

import torch


def retrieval_metrics(
    query_embeddings: torch.Tensor,
    corpus_embeddings: torch.Tensor,
    relevant_index: torch.Tensor,
    ks: tuple[int, ...] = (1, 10),
    mrr_at: int = 10,
    chunk_size: int = 1024,
) -> dict[str, float]:
    """``recall@k`` for each k in ``ks`` and ``mrr@<mrr_at>``; embeddings are L2-normalised.

    ``relevant_index[i]`` is the corpus row that answers query ``i``. The rank is computed as the number
    of corpus items scoring strictly higher than the relevant one, so ties count in the query's favour
    and nothing depends on sort stability. Queries are processed in chunks to bound memory.
    """
    if query_embeddings.shape[0] != relevant_index.shape[0]:
        raise ValueError("one relevant index per query is required")
    if query_embeddings.shape[0] == 0:
        raise ValueError("no queries to evaluate")
    ranks = []
    for start in range(0, query_embeddings.shape[0], chunk_size):
        scores = query_embeddings[start : start + chunk_size] @ corpus_embeddings.T
        relevant = relevant_index[start : start + chunk_size]
        relevant_score = scores.gather(1, relevant[:, None])
        ranks.append((scores > relevant_score).sum(dim=1))  # 0 = first
    rank = torch.cat(ranks)
    metrics = {f"recall@{k}": (rank < k).float().mean().item() for k in ks}
    reciprocal = torch.where(rank < mrr_at, 1.0 / (rank.float() + 1.0), torch.zeros_like(rank, dtype=torch.float))
    metrics[f"mrr@{mrr_at}"] = reciprocal.mean().item()
    return metrics
