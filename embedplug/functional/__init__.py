"""Functional losses on raw embeddings and labels, for hand-written training loops.

Each returns a scalar loss with the same value and gradients as the sentence-transformers loss of
the same name: the batch-hard loss takes ``embeddings`` [N, D] and integer ``labels`` [N], the
in-batch-negative losses take the anchor, positive and negative columns' embeddings.
"""

from embedplug.functional.batch_hard import batch_hard_triplet_loss
from embedplug.functional.in_batch_negatives import gist_embed_loss, multiple_negatives_ranking_loss

__all__ = ["batch_hard_triplet_loss", "gist_embed_loss", "multiple_negatives_ranking_loss"]
