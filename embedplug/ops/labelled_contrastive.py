"""``embedplug::supcon_loss_forward``, ``multi_similarity_loss_forward``, ``circle_loss_forward``:
fake kernels, autograd and the fused-or-reference dispatch.

Each op returns pytorch-metric-learning's per-anchor losses before its reducer and the pairs each
anchor used; embedplug.functional applies PML's reducers and its degenerate-batch rules.
"""

from __future__ import annotations

import torch

from embedplug import _extension
from embedplug.reference import labelled_contrastive as reference

OP_NAMES = ("supcon_loss_forward", "multi_similarity_loss_forward", "circle_loss_forward")
_extension.REPORTED_OPS.extend(OP_NAMES)

# Resolved once so that torch.compile sees a constant, not a dispatcher query.
_FUSED_DEVICE_TYPES = {
    name: frozenset(d for d in ("cpu", "cuda") if _extension.has_kernel(name, d)) for name in OP_NAMES
}


def _register(op_name: str, backward_op_name: str, num_options: int) -> None:
    """Fake kernels and autograd for one forward op whose inputs are
    ``(embeddings, labels, *options, compute_grad)`` and whose backward op takes
    ``(grad_losses, embeddings, labels, losses, unit_grad, *options)``."""

    @torch.library.register_fake(f"embedplug::{op_name}")
    def _forward_fake(embeddings, labels, *rest):
        compute_grad = rest[-1]
        n = embeddings.shape[0]
        unit_grad = embeddings.new_empty(embeddings.shape if compute_grad else (0,))
        return embeddings.new_empty((n,)), labels.new_empty((n,)), labels.new_empty((n,)), unit_grad

    @torch.library.register_fake(f"embedplug::{backward_op_name}")
    def _backward_fake(grad_losses, embeddings, *rest):
        return torch.empty_like(embeddings)

    def _setup_context(ctx, inputs, output):
        embeddings, labels = inputs[0], inputs[1]
        losses, positive_pairs, negative_pairs, unit_grad = output
        ctx.save_for_backward(embeddings, labels, losses, unit_grad)
        ctx.options = tuple(inputs[2 : 2 + num_options])
        ctx.mark_non_differentiable(positive_pairs, negative_pairs, unit_grad)

    def _backward(ctx, grad_losses, _grad_positive, _grad_negative, _grad_unit):
        embeddings, labels, losses, unit_grad = ctx.saved_tensors
        backward = getattr(torch.ops.embedplug, backward_op_name)
        grad_embeddings = backward(grad_losses, embeddings, labels, losses, unit_grad, *ctx.options)
        return (grad_embeddings, None, *([None] * num_options), None)

    torch.library.register_autograd(f"embedplug::{op_name}", _backward, setup_context=_setup_context)


if _extension.STATUS.loaded:
    _register("supcon_loss_forward", "_supcon_loss_backward", 1)
    _register("multi_similarity_loss_forward", "_multi_similarity_loss_backward", 4)
    _register("circle_loss_forward", "_circle_loss_backward", 2)


def _kernel_inputs(embeddings: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """float16/bfloat16 computed in float32; whether the forward should also compute the gradient."""
    if embeddings.dtype in (torch.float16, torch.bfloat16):
        embeddings = embeddings.float()
    # The reducers weight every counted anchor alike, so the kernel applies the gradient's pair
    # weights in the forward pass it already makes, saving the backward a similarity GEMM.
    return embeddings, torch.is_grad_enabled() and embeddings.requires_grad


Outputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def supcon_loss_forward(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float) -> Outputs:
    """Per-anchor supervised contrastive loss, fused with the similarity GEMMs.

    Args:
        embeddings: [N, D] floating tensor (float16/bfloat16 are computed in float32).
        labels: [N] int64 class ids on the same device.
        temperature: softmax temperature.

    Returns:
        losses: [N], differentiable — PML's ``SupConLoss`` per-anchor loss before its reducer.
        positive_pairs, negative_pairs: [N] int64 — the anchor's positives and negatives.
    """
    embeddings, compute_grad = _kernel_inputs(embeddings)
    if embeddings.device.type in _FUSED_DEVICE_TYPES["supcon_loss_forward"]:
        losses, positive, negative, _ = torch.ops.embedplug.supcon_loss_forward(
            embeddings, labels, float(temperature), compute_grad
        )
        return losses, positive, negative
    return reference.supcon_loss_forward(embeddings, labels, float(temperature))


def multi_similarity_loss_forward(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    alpha: float,
    beta: float,
    base: float,
    mining_epsilon: float | None,
) -> Outputs:
    """Per-anchor multi-similarity loss over all pairs, or over ``MultiSimilarityMiner(mining_epsilon)``'s.

    Shapes as :func:`supcon_loss_forward`; the pair counts are those after mining.
    """
    embeddings, compute_grad = _kernel_inputs(embeddings)
    epsilon = None if mining_epsilon is None else float(mining_epsilon)
    if embeddings.device.type in _FUSED_DEVICE_TYPES["multi_similarity_loss_forward"]:
        losses, positive, negative, _ = torch.ops.embedplug.multi_similarity_loss_forward(
            embeddings, labels, float(alpha), float(beta), float(base), epsilon, compute_grad
        )
        return losses, positive, negative
    return reference.multi_similarity_loss_forward(embeddings, labels, float(alpha), float(beta), float(base), epsilon)


def circle_loss_forward(embeddings: torch.Tensor, labels: torch.Tensor, m: float, gamma: float) -> Outputs:
    """Per-anchor circle loss, fused with the similarity GEMMs. Shapes as :func:`supcon_loss_forward`."""
    embeddings, compute_grad = _kernel_inputs(embeddings)
    if embeddings.device.type in _FUSED_DEVICE_TYPES["circle_loss_forward"]:
        losses, positive, negative, _ = torch.ops.embedplug.circle_loss_forward(
            embeddings, labels, float(m), float(gamma), compute_grad
        )
        return losses, positive, negative
    return reference.circle_loss_forward(embeddings, labels, float(m), float(gamma))
