"""Functional losses on raw embeddings and labels, for hand-written training loops.

Each takes ``embeddings`` [N, D] and integer ``labels`` [N] and returns a scalar loss with the
same value and gradients as the sentence-transformers loss of the same name.
"""

from embedplug.functional.batch_hard import batch_hard_triplet_loss

__all__ = ["batch_hard_triplet_loss"]
