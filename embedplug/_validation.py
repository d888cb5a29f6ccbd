"""Input checks shared by the functional API and the drop-in losses: clear Python errors before any kernel runs."""

from __future__ import annotations

import torch


def check_embeddings(embeddings: torch.Tensor, caller: str) -> None:
    """Raises TypeError/ValueError unless ``embeddings`` is a non-empty floating [N, D] tensor."""
    if not isinstance(embeddings, torch.Tensor):
        raise TypeError(f"{caller}: embeddings must be a torch.Tensor, got {type(embeddings).__name__}")
    if embeddings.dim() != 2:
        raise ValueError(f"{caller}: embeddings must be 2-D [N, D], got shape {tuple(embeddings.shape)}")
    if not embeddings.is_floating_point():
        raise TypeError(f"{caller}: embeddings must be a floating-point tensor, got {embeddings.dtype}")
    if embeddings.shape[0] == 0:
        raise ValueError(f"{caller}: empty batch (embeddings has N = 0 rows)")
    if embeddings.shape[1] == 0:
        raise ValueError(f"{caller}: embeddings have D = 0 features")


def check_labels(labels: torch.Tensor, embeddings: torch.Tensor, caller: str) -> torch.Tensor:
    """Returns ``labels`` as a flat int64 tensor, or raises a clear error.

    Labels must be an integer tensor on the embeddings' device with one entry per row (any shape
    with N elements, as sentence-transformers accepts, e.g. [N] or [N, 1]).
    """
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{caller}: labels must be a torch.Tensor of integer class ids, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{caller}: labels must be an integer tensor of class ids, got {labels.dtype}")
    if labels.device != embeddings.device:
        raise ValueError(
            f"{caller}: labels are on {labels.device} but embeddings are on {embeddings.device}; move them to one device"
        )
    batch_size = embeddings.shape[0]
    if labels.numel() != batch_size:
        raise ValueError(
            f"{caller}: expects {batch_size} labels (one per example), but got {labels.numel()} labels "
            f"with shape {tuple(labels.shape)}"
        )
    return labels.reshape(-1).to(torch.int64)
