"""Drop-in for sentence-transformers' (deprecated) ``MultipleNegativesSymmetricRankingLoss``: the
symmetric, per-direction MultipleNegativesRankingLoss on the fused kernel."""

from __future__ import annotations

import warnings
from collections.abc import Callable

from torch import Tensor, nn

from embedplug.losses.multiple_negatives_ranking import MultipleNegativesRankingLoss

SYMMETRIC_DIRECTIONS = ("query_to_doc", "doc_to_query")

DEPRECATION_MESSAGE = (
    "The {name} is deprecated and will be removed in a future release. Please use {replacement} with "
    "`directions=('query_to_doc', 'doc_to_query')` and `partition_mode='per_direction'` instead."
)


def warn_deprecated(name: str, replacement: str) -> None:
    """sentence-transformers' deprecation warning for the symmetric classes, raised at construction."""
    warnings.warn(DEPRECATION_MESSAGE.format(name=name, replacement=replacement), DeprecationWarning, stacklevel=3)


class MultipleNegativesSymmetricRankingLoss(MultipleNegativesRankingLoss):
    """Symmetric InfoNCE: the query-to-doc and the doc-to-query softmax losses, averaged.

    Same constructor, attributes, config, citation, forward and numbers as
    ``sentence_transformers.losses.MultipleNegativesSymmetricRankingLoss`` (6.2 and 6.3, deprecated there):
    :class:`~embedplug.losses.MultipleNegativesRankingLoss` with
    ``directions=("query_to_doc", "doc_to_query")`` and ``partition_mode="per_direction"``, fused for
    ``util.cos_sim`` and ``util.dot_score``. Like sentence-transformers, it warns that it is
    deprecated. Extra columns (hard negatives) join the query-to-doc softmax, as there.

    Args:
        model: the SentenceTransformer being trained.
        scale: logits are ``scale * similarity`` (scale = 1 / temperature).
        similarity_fct: ``util.cos_sim`` (default), ``util.dot_score`` or another callable (reference).
        gather_across_devices: gather anchors and candidates from every rank before the loss.
    """

    def __init__(
        self,
        model: nn.Module,
        scale: float = 20.0,
        similarity_fct: Callable[[Tensor, Tensor], Tensor] | None = None,
        gather_across_devices: bool = False,
    ) -> None:
        warn_deprecated("MultipleNegativesSymmetricRankingLoss", "MultipleNegativesRankingLoss")
        super().__init__(
            model=model,
            scale=scale,
            similarity_fct=similarity_fct,
            gather_across_devices=gather_across_devices,
            directions=SYMMETRIC_DIRECTIONS,
            partition_mode="per_direction",
        )
