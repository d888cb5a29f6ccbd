"""``embedplug::hardest_off_diagonal_similarity``: registration and dispatch."""

from __future__ import annotations

import torch

from embedplug import _extension
from embedplug.reference import hardest_negative as reference

OP_NAME = "hardest_off_diagonal_similarity"
_extension.REPORTED_OPS.append(OP_NAME)

# Resolved once so that torch.compile sees a constant, not a dispatcher query.
_FUSED_DEVICE_TYPES = frozenset(d for d in ("cpu", "cuda") if _extension.has_kernel(OP_NAME, d))

if _extension.STATUS.loaded and _extension.has_kernel(OP_NAME, "cpu"):

    @torch.library.register_fake("embedplug::hardest_off_diagonal_similarity")
    def _hardest_off_diagonal_similarity_fake(anchors, candidates):
        n = anchors.shape[0]
        return anchors.new_empty((n,)), anchors.new_empty((n,), dtype=torch.long)


def hardest_off_diagonal_similarity(anchors: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per anchor i, the largest ``<anchors[i], candidates[j]>`` over j != i and that j, fused with the GEMM.

    No [N, M] matrix: tiles of the similarity GEMM are folded into a running row maximum. Not
    differentiable (inputs are detached); a loss recomputes the picked pairs in torch.

    Args:
        anchors: [N, D] floating tensor; candidates: [M, D] on the same device (float16/bfloat16 are
            compared in float32).

    Returns:
        values [N] (float32/float64) and indices [N] int64, in torch.max's order (a NaN wins, ties go
        to the smallest j); ``(-inf, -1)`` for an anchor without a j != i.
    """
    _check(anchors, "anchors")
    _check(candidates, "candidates")
    if anchors.shape[1] != candidates.shape[1]:
        raise ValueError(
            f"anchors and candidates must have the same embedding dimension, got {anchors.shape[1]} and "
            f"{candidates.shape[1]}"
        )
    if anchors.device != candidates.device:
        raise ValueError(f"anchors are on {anchors.device} but candidates on {candidates.device}")
    anchors, candidates = anchors.detach(), candidates.detach()
    dtype = torch.promote_types(anchors.dtype, candidates.dtype)
    if dtype in (torch.float16, torch.bfloat16):
        dtype = torch.float32
    anchors, candidates = anchors.to(dtype), candidates.to(dtype)
    if anchors.device.type in _FUSED_DEVICE_TYPES:
        return torch.ops.embedplug.hardest_off_diagonal_similarity(anchors, candidates)
    return reference.hardest_off_diagonal_similarity(anchors, candidates)


def _check(tensor, name: str) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() != 2:
        raise ValueError(f"{name} must be 2-D [rows, D], got shape {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {tensor.dtype}")
