"""Forward+backward of the batch-mining triplet losses (semi-hard, batch-all) in each implementation.

Shares ``make_inputs`` (P x K labels, shuffled) and the GEMM floor with the batch-hard cases, so
all benchmark tables are measured on the same kind of batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from embedplug import _extension
from embedplug.bench.batch_hard_cases import Inputs, gemm_floor, make_inputs
from embedplug.bench.peers import SENTENCE_TRANSFORMERS
from embedplug.functional import batch_all_triplet_loss, batch_semi_hard_triplet_loss
from embedplug.functional.semi_hard import positive_pair_count
from embedplug.reference.batch_all import batch_all_triplet_loss_forward as reference_batch_all
from embedplug.reference.semi_hard import semi_hard_triplet_loss_forward as reference_semi_hard

MARGIN = 5.0

__all__ = ["LOSSES", "Inputs", "available_implementations", "make_inputs"]


def _backward(loss: torch.Tensor, inputs: Inputs) -> None:
    inputs.embeddings.grad = None
    loss.backward()


def semi_hard_fused(inputs: Inputs) -> None:
    _backward(batch_semi_hard_triplet_loss(inputs.embeddings, inputs.labels, margin=MARGIN), inputs)


def semi_hard_reference(inputs: Inputs) -> None:
    sums = reference_semi_hard(inputs.embeddings, inputs.labels, "euclidean", MARGIN)
    _backward(sums.sum() / positive_pair_count(inputs.labels).clamp(min=1e-16), inputs)


def semi_hard_sentence_transformers(inputs: Inputs) -> None:
    from sentence_transformers.sentence_transformer.losses import BatchSemiHardTripletLoss

    loss = BatchSemiHardTripletLoss(None, margin=MARGIN).batch_semi_hard_triplet_loss(inputs.labels, inputs.embeddings)
    _backward(loss, inputs)


def batch_all_fused(inputs: Inputs) -> None:
    _backward(batch_all_triplet_loss(inputs.embeddings, inputs.labels, margin=MARGIN), inputs)


def batch_all_reference(inputs: Inputs) -> None:
    sums, counts = reference_batch_all(inputs.embeddings, inputs.labels, "euclidean", MARGIN)
    _backward(sums.sum() / (counts.sum() + 1e-16), inputs)


def batch_all_sentence_transformers(inputs: Inputs) -> None:
    from sentence_transformers.sentence_transformer.losses import BatchAllTripletLoss

    loss = BatchAllTripletLoss(None, margin=MARGIN).batch_all_triplet_loss(inputs.labels, inputs.embeddings)
    _backward(loss, inputs)


# loss name -> implementation name -> fn(inputs); the names match batch_hard_cases' tables.
LOSSES: dict[str, dict[str, Callable[[Inputs], None]]] = {
    "BatchSemiHardTripletLoss": {
        "gemm floor (torch.mm)": gemm_floor,
        "embedplug fused": semi_hard_fused,
        "embedplug reference": semi_hard_reference,
        SENTENCE_TRANSFORMERS: semi_hard_sentence_transformers,
    },
    "BatchAllTripletLoss": {
        "gemm floor (torch.mm)": gemm_floor,
        "embedplug fused": batch_all_fused,
        "embedplug reference": batch_all_reference,
        SENTENCE_TRANSFORMERS: batch_all_sentence_transformers,
    },
}


def available_implementations(loss: str) -> dict[str, Callable[[Inputs], None]]:
    """The implementations of ``loss`` importable here (sentence-transformers is optional)."""
    found = {}
    for name, fn in LOSSES[loss].items():
        if name == "embedplug fused" and not _extension.STATUS.loaded:
            continue
        if name.startswith("sentence-transformers"):
            try:
                import sentence_transformers  # noqa: F401
            except ImportError:
                continue
        found[name] = fn
    return found
