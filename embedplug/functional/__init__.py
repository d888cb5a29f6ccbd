"""Functional losses on raw embeddings and labels, for hand-written training loops.

Each batch loss takes ``embeddings`` [N, D] and integer ``labels`` [N] and returns a scalar loss
with the same value and gradients as the sentence-transformers loss of the same name;
``triplet_loss`` takes explicit anchor, positive and negative columns.
"""

from embedplug.functional.batch_all import batch_all_triplet_loss
from embedplug.functional.batch_hard import batch_hard_triplet_loss
from embedplug.functional.semi_hard import batch_semi_hard_triplet_loss
from embedplug.functional.soft_margin import batch_hard_soft_margin_triplet_loss
from embedplug.functional.triplet import triplet_loss

__all__ = [
    "batch_all_triplet_loss",
    "batch_hard_soft_margin_triplet_loss",
    "batch_hard_triplet_loss",
    "batch_semi_hard_triplet_loss",
    "triplet_loss",
]
