"""Reference MultipleNegativesRankingLoss: sentence-transformers 6.2's algorithm on materialised
similarity matrices, for what the fused kernel does not cover (arbitrary similarity functions, rows
offset into gathered candidates)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def multiple_negatives_ranking_loss(
    queries: torch.Tensor,
    docs: Sequence[torch.Tensor],
    similarity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    scale: float,
    directions: Sequence[str],
    partition_mode: str,
    hardness_mode: str | None,
    hardness_strength: float,
    batch_size: int | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """Scalar loss; ``queries`` [W, D] and each of ``docs`` [W, D] (W = world batch), local rows
    ``offset : offset + batch_size`` (default: all rows), ``similarity`` maps ([R, D], [C, D]) to [R, C]."""
    world_batch_size = queries.shape[0]
    batch_size = world_batch_size if batch_size is None else batch_size
    device = queries.device
    docs_all = torch.cat(list(docs), dim=0)
    local_indices = torch.arange(offset, offset + batch_size, device=device)
    row_indices = torch.arange(batch_size, device=device)
    local_queries = queries[local_indices]
    local_docs = docs[0][local_indices]

    sim_matrices = {"query_to_doc": similarity(local_queries, docs_all)}
    if "query_to_query" in directions:
        sim_matrices["query_to_query"] = similarity(local_queries, queries)
        sim_matrices["query_to_query"][row_indices, local_indices] = -torch.inf
    if "doc_to_query" in directions:
        sim_matrices["doc_to_query"] = similarity(queries, local_docs).T
    if "doc_to_doc" in directions:
        sim_matrices["doc_to_doc"] = similarity(docs_all, local_docs).T
        same_query = torch.eye(world_batch_size, device=device)[local_indices].repeat(1, len(docs)).bool()
        sim_matrices["doc_to_doc"].masked_fill_(same_query, -torch.inf)

    penalty = None
    if hardness_mode is not None and hardness_strength > 0.0:
        penalty = hardness_strength * sim_matrices["query_to_doc"].detach()
        own_doc = torch.eye(world_batch_size, device=device, dtype=torch.bool)[local_indices].repeat(1, len(docs))
        if hardness_mode == "hard_negatives":
            excluded = ~own_doc
            excluded[:, :world_batch_size] = True
        elif hardness_mode == "in_batch_negatives":
            excluded = own_doc
        else:  # "all_negatives": only the positive itself goes unpenalised
            excluded = own_doc
            excluded[:, world_batch_size:] = False
        penalty[excluded] = 0.0

    sim_matrices = {key: value * scale for key, value in sim_matrices.items()}
    if penalty is not None:
        sim_matrices["query_to_doc"] = sim_matrices["query_to_doc"] + penalty
    positive_scores = sim_matrices["query_to_doc"][row_indices, local_indices]
    if partition_mode == "joint":
        log_z = torch.logsumexp(torch.cat(list(sim_matrices.values()), dim=1), dim=1)
    else:
        log_z = sum(torch.logsumexp(matrix, dim=1) for matrix in sim_matrices.values()) / len(sim_matrices)
    return -(positive_scores - log_z).mean()
