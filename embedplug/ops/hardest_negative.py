"""``embedplug::hardest_off_diagonal_similarity``: MegaBatchMarginLoss's negative mining fused with the GEMM."""

from __future__ import annotations

import torch

from embedplug.ops import layer
from embedplug.ops.samples import paired_batches
from embedplug.ops.spec import Embeddings, OpSpec, Sample
from embedplug.reference import hardest_negative as reference


def _fake(anchors, candidates):
    n = anchors.shape[0]
    return anchors.new_empty((n,)), anchors.new_empty((n,), dtype=torch.long)


def _samples(dtype):
    for regime, anchors, candidates in paired_batches(dtype):
        yield Sample((anchors, candidates), regime)
        yield Sample((anchors, candidates[: anchors.shape[0]]), regime + ", square")


HARDEST_OFF_DIAGONAL = layer.declare(OpSpec(
    name="hardest_off_diagonal_similarity",
    args=(Embeddings("anchors", differentiable=False), Embeddings("candidates", same_dim_as="anchors", differentiable=False)),
    reference=reference.hardest_off_diagonal_similarity,
    fake=_fake,
    outputs=2,
    reduce=lambda inputs, outputs: outputs[0].masked_fill(outputs[1] < 0, 0).sum(),
    samples=_samples,
))


def hardest_off_diagonal_similarity(anchors: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per anchor i, the largest ``<anchors[i], candidates[j]>`` over j != i and that j, fused with the GEMM.

    No [N, M] matrix: tiles of the similarity GEMM are folded into a running row maximum. Not
    differentiable (inputs are detached); a loss recomputes the picked pairs in torch.

    Args:
        anchors: [N, D] floating tensor; candidates: [M, D] on the same device (float16/bfloat16 are
            compared in float32; candidates take the anchors' dtype).

    Returns:
        values [N] (float32/float64) and indices [N] int64, in torch.max's order (a NaN wins, ties go
        to the smallest j); ``(-inf, -1)`` for an anchor without a j != i.
    """
    return layer.call(HARDEST_OFF_DIAGONAL, anchors, candidates)
