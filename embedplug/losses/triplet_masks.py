"""The static mask helpers every sentence-transformers batch triplet loss exposes."""

from __future__ import annotations

import torch


class TripletMasksMixin:
    """``get_triplet_mask`` / ``get_anchor_positive_triplet_mask`` / ``get_anchor_negative_triplet_mask``.

    Kept for API compatibility (user code calls them on the loss class); the fused kernels never
    build these N x N (or N x N x N) masks.
    """

    @staticmethod
    def get_triplet_mask(labels: torch.Tensor) -> torch.Tensor:
        """[N] -> [N, N, N] bool: mask[a, p, n] iff a, p, n distinct, label a == p and a != n."""
        indices_not_equal = ~torch.eye(labels.size(0), device=labels.device).bool()
        distinct_indices = (
            indices_not_equal.unsqueeze(2) & indices_not_equal.unsqueeze(1) & indices_not_equal.unsqueeze(0)
        )
        label_equal = labels.unsqueeze(0) == labels.unsqueeze(1)
        valid_labels = ~label_equal.unsqueeze(1) & label_equal.unsqueeze(2)
        return valid_labels & distinct_indices

    @staticmethod
    def get_anchor_positive_triplet_mask(labels: torch.Tensor) -> torch.Tensor:
        """[N] -> [N, N] bool: mask[a, p] iff a != p and label a == label p."""
        indices_not_equal = ~torch.eye(labels.size(0), device=labels.device).bool()
        return (labels.unsqueeze(0) == labels.unsqueeze(1)) & indices_not_equal

    @staticmethod
    def get_anchor_negative_triplet_mask(labels: torch.Tensor) -> torch.Tensor:
        """[N] -> [N, N] bool: mask[a, n] iff label a != label n."""
        return ~(labels.unsqueeze(0) == labels.unsqueeze(1))
