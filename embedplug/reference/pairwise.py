"""Pairwise distance matrices exactly as sentence-transformers computes them."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pairwise_distances(embeddings: torch.Tensor, distance: str) -> torch.Tensor:
    """[N, D] -> [N, N] distances, ST's ``BatchHardTripletLossDistanceFunction`` semantics.

    Euclidean kinds use ||a||^2 - 2<a,b> + ||b||^2 with the norms taken from the Gram diagonal
    (so d(a, a) is exactly 0), clamp negatives to 0, and give sqrt a zero gradient at 0.
    Cosine distance is 1 - <a/|a|, b/|b|> with torch's normalize (eps 1e-12).
    """
    if distance == "cosine":
        unit = F.normalize(embeddings, p=2, dim=-1)
        return 1 - unit @ unit.t()
    gram = embeddings @ embeddings.t()
    squared_norms = torch.diagonal(gram)
    squared = squared_norms.unsqueeze(0) - 2.0 * gram + squared_norms.unsqueeze(1)
    squared = torch.where(squared < 0, torch.zeros_like(squared), squared)
    if distance == "squared_euclidean":
        return squared
    if distance != "euclidean":
        raise ValueError(f"unknown distance {distance!r}")
    is_zero = squared == 0
    # The inner where keeps sqrt's gradient finite where the outer one discards it.
    safe = torch.where(is_zero, torch.ones_like(squared), squared)
    return torch.where(is_zero, torch.zeros_like(squared), torch.sqrt(safe))


def paired_distances(rows: torch.Tensor, columns: torch.Tensor, distance: str) -> torch.Tensor:
    """[P, D], [P, D] -> [P]: ``pairwise_distances``' formula for the pairs (rows[p], columns[p]) only.

    The same function of each pair as the matrix entry (norms minus twice the dot product, clamped
    at 0, sqrt with a zero gradient at 0), so its derivatives of every order are the reference's;
    the value may differ from the matrix's in the last bits (no GEMM).
    """
    if distance == "cosine":
        return 1 - (F.normalize(rows, p=2, dim=-1) * F.normalize(columns, p=2, dim=-1)).sum(-1)
    squared = (rows * rows).sum(-1) - 2.0 * (rows * columns).sum(-1) + (columns * columns).sum(-1)
    squared = torch.where(squared < 0, torch.zeros_like(squared), squared)
    if distance == "squared_euclidean":
        return squared
    if distance != "euclidean":
        raise ValueError(f"unknown distance {distance!r}")
    is_zero = squared == 0
    safe = torch.where(is_zero, torch.ones_like(squared), squared)
    return torch.where(is_zero, torch.zeros_like(squared), torch.sqrt(safe))
