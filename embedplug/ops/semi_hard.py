"""``embedplug::semi_hard_triplet_loss_forward``: registration and dispatch."""

from __future__ import annotations

import torch

from embedplug import _extension
from embedplug._validation import check_finite_number, check_same_device
from embedplug.distances import canonical_distance
from embedplug.reference import semi_hard as reference

OP_NAME = "semi_hard_triplet_loss_forward"
_extension.REPORTED_OPS.append(OP_NAME)

# Resolved once so that torch.compile sees a constant, not a dispatcher query.
_FUSED_DEVICE_TYPES = frozenset(d for d in ("cpu", "cuda") if _extension.has_kernel(OP_NAME, d))

if _extension.STATUS.loaded:

    @torch.library.register_fake("embedplug::semi_hard_triplet_loss_forward")
    def _forward_fake(embeddings, labels, distance, margin, compute_grad):
        unit_grad = embeddings.new_empty(embeddings.shape if compute_grad else (0,))
        return embeddings.new_empty((embeddings.shape[0],)), unit_grad

    @torch.library.register_fake("embedplug::_semi_hard_triplet_loss_backward")
    def _backward_fake(grad_sums, embeddings, labels, unit_grad, distance, margin):
        return torch.empty_like(embeddings)

    def _setup_context(ctx, inputs, output):
        embeddings, labels, distance, margin, _compute_grad = inputs
        _sums, unit_grad = output
        ctx.save_for_backward(embeddings, labels, unit_grad)
        ctx.distance = distance
        ctx.margin = margin
        ctx.mark_non_differentiable(unit_grad)

    def _backward(ctx, grad_sums, _grad_unit):
        embeddings, labels, unit_grad = ctx.saved_tensors
        if torch.is_grad_enabled():
            # The kernel's per-pair weights are constants here; a second derivative would silently be 0.
            raise RuntimeError(
                "embedplug::semi_hard_triplet_loss_forward does not support double backward (create_graph=True); "
                "run the pure-torch reference (a custom distance callable, or EMBEDPLUG_DISABLE_EXT=1) for higher-order gradients"
            )
        grad_embeddings = torch.ops.embedplug._semi_hard_triplet_loss_backward(
            grad_sums, embeddings, labels, unit_grad, ctx.distance, ctx.margin
        )
        return grad_embeddings, None, None, None, None

    torch.library.register_autograd(
        "embedplug::semi_hard_triplet_loss_forward", _backward, setup_context=_setup_context
    )


def semi_hard_triplet_loss_forward(
    embeddings: torch.Tensor, labels: torch.Tensor, distance: str = "euclidean", margin: float = 5.0
) -> torch.Tensor:
    """Per-anchor semi-hard triplet sums, fused with the pairwise distances.

    Args:
        embeddings: [N, D] floating tensor (float16/bfloat16 are computed in float32).
        labels: [N] int64 class ids on the same device.
        distance: "euclidean", "squared_euclidean" or "cosine".
        margin: the triplet margin.

    Returns:
        loss_sums: [N] (float32/float64), differentiable — per anchor the sum over its positives
        of ``max((d_ap - d_semi_hard_negative) + margin, 0)``.
    """
    check_same_device("embedplug.ops.semi_hard_triplet_loss_forward", embeddings=embeddings, labels=labels)
    margin = check_finite_number(margin, "margin", "embedplug.ops.semi_hard_triplet_loss_forward")
    distance = canonical_distance(distance)
    if embeddings.dtype in (torch.float16, torch.bfloat16):
        embeddings = embeddings.float()
    if embeddings.device.type in _FUSED_DEVICE_TYPES:
        # The loss weights every anchor alike, so the kernel can apply the gradient's per-pair
        # weights in the forward pass it already makes, saving the backward a distance GEMM.
        compute_grad = torch.is_grad_enabled() and embeddings.requires_grad
        sums, _ = torch.ops.embedplug.semi_hard_triplet_loss_forward(
            embeddings, labels, distance, float(margin), compute_grad
        )
        return sums
    return reference.semi_hard_triplet_loss_forward(embeddings, labels, distance, float(margin))
