"""Functional losses on raw embeddings and labels, for hand-written training loops.

Each returns a scalar loss with the same value and gradients as the sentence-transformers loss of
the same name: the batch losses take ``embeddings`` [N, D] and integer ``labels`` [N];
``triplet_loss`` and the in-batch-negative losses take the columns' embeddings. Where
sentence-transformers releases differ (GIST, the batch triplet losses' cosine distance), the
installed release's numbers are given; ``st_version="6.2"`` / ``"6.3"`` picks one
(:mod:`embedplug.st_version`).
"""

from embedplug.functional.batch_all import batch_all_triplet_loss
from embedplug.functional.batch_hard import batch_hard_triplet_loss
from embedplug.functional.in_batch_negatives import gist_embed_loss, multiple_negatives_ranking_loss
from embedplug.functional.labelled_contrastive import (
    circle_loss,
    multi_similarity_loss,
    supervised_contrastive_loss,
)
from embedplug.functional.mega_batch_margin import mega_batch_margin_loss
from embedplug.functional.pair_rule import pair_rule_loss
from embedplug.functional.semi_hard import batch_semi_hard_triplet_loss
from embedplug.functional.soft_margin import batch_hard_soft_margin_triplet_loss
from embedplug.functional.triplet import triplet_loss

__all__ = [
    "batch_all_triplet_loss",
    "batch_hard_soft_margin_triplet_loss",
    "batch_hard_triplet_loss",
    "batch_semi_hard_triplet_loss",
    "circle_loss",
    "gist_embed_loss",
    "multi_similarity_loss",
    "mega_batch_margin_loss",
    "multiple_negatives_ranking_loss",
    "pair_rule_loss",
    "supervised_contrastive_loss",
    "triplet_loss",
]
