"""Triplet loss on explicit (anchor, positive, negative) columns."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from embedplug._validation import check_embeddings, check_finite_number, warns_non_finite_input


def _as_float(embeddings: torch.Tensor) -> torch.Tensor:
    # sentence-transformers' pairwise similarities upcast sub-float32 inputs to float32.
    if embeddings.is_floating_point() and torch.finfo(embeddings.dtype).bits < 32:
        return embeddings.float()
    return embeddings


def cosine_distance(anchor: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """[N, D], [N, D] -> [N]: 1 - cos(anchor[i], other[i]) (``1 - pairwise_cos_sim``)."""
    anchor, other = _as_float(anchor), _as_float(other)
    return 1 - (F.normalize(anchor, p=2, dim=-1) * F.normalize(other, p=2, dim=-1)).sum(-1)


def euclidean_distance(anchor: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """[N, D], [N, D] -> [N]: ||anchor[i] - other[i]||_2 (``-pairwise_euclidean_sim``)."""
    return torch.linalg.vector_norm(_as_float(anchor) - _as_float(other), dim=-1)


def manhattan_distance(anchor: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """[N, D], [N, D] -> [N]: ||anchor[i] - other[i]||_1 (``-pairwise_manhattan_sim``)."""
    return (_as_float(anchor) - _as_float(other)).abs().sum(-1)


_DISTANCES = {"cosine": cosine_distance, "euclidean": euclidean_distance, "manhattan": manhattan_distance}


@warns_non_finite_input
def triplet_loss(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    margin: float = 5.0,
    distance: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "euclidean",
) -> torch.Tensor:
    """Mean over rows of ``relu(d(anchor, positive) - d(anchor, negative) + margin)``.

    Row-wise distances are O(N * D); no pairwise matrix is involved, so there is nothing to fuse.

    Args:
        anchor, positive, negative: [N, D] floating tensors.
        margin: the triplet margin.
        distance: "euclidean", "cosine", "manhattan", or any callable mapping two [N, D] tensors to
            [N] distances (sentence-transformers' ``TripletDistanceMetric`` members work).

    Returns:
        A scalar tensor equal to sentence-transformers' ``TripletLoss``.
    """
    caller = "triplet_loss"
    for column in (anchor, positive, negative):
        check_embeddings(column, caller)
    if not anchor.shape == positive.shape == negative.shape:
        raise ValueError(
            f"{caller}: anchor, positive and negative must have the same shape, got "
            f"{tuple(anchor.shape)}, {tuple(positive.shape)} and {tuple(negative.shape)}"
        )
    margin = check_finite_number(margin, "margin", caller)
    if isinstance(distance, str):
        if distance not in _DISTANCES:
            raise ValueError(f"{caller}: unknown distance {distance!r}; expected one of {', '.join(_DISTANCES)}")
        distance = _DISTANCES[distance]
    elif not callable(distance):
        raise TypeError(
            f"{caller}: distance must be one of {', '.join(_DISTANCES)} or a callable mapping two [N, D] tensors to [N] "
            f"distances, got {distance!r} ({type(distance).__name__})"
        )
    positive_distance, negative_distance = distance(anchor, positive), distance(anchor, negative)
    for values in (positive_distance, negative_distance):
        if not isinstance(values, torch.Tensor) or tuple(values.shape) != (anchor.shape[0],):
            shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
            raise ValueError(f"{caller}: the distance callable must return [N] = [{anchor.shape[0]}] distances, got {shape}")
    return F.relu(positive_distance - negative_distance + margin).mean()
