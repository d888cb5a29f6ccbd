"""sentence-transformers' ``BatchHardTripletLossDistanceFunction``, without importing sentence-transformers.

The fused losses recognise these functions (and sentence-transformers' own) and run the matching
kernel; they still work as plain [N, D] -> [N, N] functions for anything else.
"""

from __future__ import annotations

import torch

from embedplug.functional._pairwise_path import cosine_distance_matrix
from embedplug.ops.batch_hard import pairwise_distances
from embedplug.st_version import current


class BatchHardTripletLossDistanceFunction:
    """Distance functions for the Batch[All/Hard/SemiHard]TripletLoss family (ST-compatible)."""

    @staticmethod
    def cosine_distance(embeddings: torch.Tensor) -> torch.Tensor:
        """[N, D] -> [N, N] matrix of 1 - cosine similarity, as the installed sentence-transformers
        computes it (from 6.3 clamped at 0 with a zero diagonal; see :mod:`embedplug.st_version`)."""
        return cosine_distance_matrix(embeddings, clamped=current().cosine_distance_clamped)

    @staticmethod
    def euclidean_distance(embeddings: torch.Tensor, squared: bool = False) -> torch.Tensor:
        """[N, D] -> [N, N] euclidean (or squared euclidean) distances; half inputs in float32."""
        if embeddings.dtype in (torch.float16, torch.bfloat16):
            embeddings = embeddings.float()
        return pairwise_distances(embeddings, "squared_euclidean" if squared else "euclidean")

    # sentence-transformers keeps this misspelt alias for backwards compatibility.
    eucledian_distance = euclidean_distance
