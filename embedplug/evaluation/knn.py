"""k-nearest-neighbour classification accuracy against a labelled reference set."""

from __future__ import annotations

import torch


def knn_accuracy(
    query_embeddings: torch.Tensor,
    query_labels: torch.Tensor,
    reference_embeddings: torch.Tensor,
    reference_labels: torch.Tensor,
    k: int = 1,
    chunk_size: int = 1024,
) -> float:
    """Fraction of queries whose majority label among their ``k`` most cosine-similar references is right.

    Embeddings are L2-normalised. Majority ties go to the smallest label (``torch.mode``), which for
    ``k=1`` never arises.
    """
    if query_embeddings.shape[0] == 0:
        raise ValueError("no queries to evaluate")
    if not 1 <= k <= reference_embeddings.shape[0]:
        raise ValueError(f"k={k} needs 1 <= k <= {reference_embeddings.shape[0]} references")
    correct = 0
    for start in range(0, query_embeddings.shape[0], chunk_size):
        scores = query_embeddings[start : start + chunk_size] @ reference_embeddings.T
        neighbours = scores.topk(k, dim=1).indices
        predicted = reference_labels[neighbours].mode(dim=1).values
        correct += (predicted == query_labels[start : start + chunk_size]).sum().item()
    return correct / query_embeddings.shape[0]
