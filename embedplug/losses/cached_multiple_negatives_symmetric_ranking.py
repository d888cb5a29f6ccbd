"""Drop-in for sentence-transformers' (deprecated) ``CachedMultipleNegativesSymmetricRankingLoss``:
GradCache around the symmetric, per-direction MultipleNegativesRankingLoss on the fused kernel."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from embedplug.losses.cached_multiple_negatives_ranking import CachedMultipleNegativesRankingLoss
from embedplug.losses.multiple_negatives_symmetric_ranking import SYMMETRIC_DIRECTIONS, warn_deprecated


class CachedMultipleNegativesSymmetricRankingLoss(CachedMultipleNegativesRankingLoss):
    """:class:`~embedplug.losses.MultipleNegativesSymmetricRankingLoss` with GradCache (Gao et al. 2021).

    Same constructor, attributes, config, citation, forward and numbers as
    ``sentence_transformers.losses.CachedMultipleNegativesSymmetricRankingLoss`` (6.2 and 6.3, deprecated
    there): :class:`~embedplug.losses.CachedMultipleNegativesRankingLoss` with
    ``directions=("query_to_doc", "doc_to_query")`` and ``partition_mode="per_direction"``.

    Args:
        model, scale, similarity_fct, gather_across_devices: as in
            :class:`~embedplug.losses.MultipleNegativesSymmetricRankingLoss`.
        mini_batch_size: rows per embedding forward pass.
        mini_batch_num_tokens: token budget per mini-batch instead of a fixed row count.
        show_progress_bar: tqdm bars over the mini-batches.
    """

    def __init__(
        self,
        model: nn.Module,
        scale: float = 20.0,
        similarity_fct: Callable[[Tensor, Tensor], Tensor] | None = None,
        mini_batch_size: int = 32,
        mini_batch_num_tokens: int | None = None,
        gather_across_devices: bool = False,
        show_progress_bar: bool = False,
    ) -> None:
        warn_deprecated("CachedMultipleNegativesSymmetricRankingLoss", "CachedMultipleNegativesRankingLoss")
        super().__init__(
            model=model,
            scale=scale,
            similarity_fct=similarity_fct,
            mini_batch_size=mini_batch_size,
            mini_batch_num_tokens=mini_batch_num_tokens,
            gather_across_devices=gather_across_devices,
            directions=SYMMETRIC_DIRECTIONS,
            partition_mode="per_direction",
            show_progress_bar=show_progress_bar,
        )
