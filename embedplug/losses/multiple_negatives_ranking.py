"""Drop-in for sentence-transformers' ``MultipleNegativesRankingLoss``, on the fused masked in-batch softmax."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from embedplug._validation import check_mnrl_options, checked_similarity, warn_non_finite_rows
from embedplug.functional.in_batch_negatives import (
    DIRECTIONS,
    HARDNESS_MODES,
    PARTITION_MODES,
    check_columns,
    gathered_multiple_negatives_ranking_loss,
    mnrl_runs_fused,
    multiple_negatives_ranking_loss,
)
from embedplug.losses.base import EmbeddingLoss
from embedplug.ops.masked_infonce import fused_backend_info
from embedplug.ops.masked_infonce import multiple_negatives_ranking_loss as reference_mnrl
from embedplug.st_version import loss_report

logger = logging.getLogger(__name__)


def _cos_sim() -> Callable[[Tensor, Tensor], Tensor]:
    from sentence_transformers.util import cos_sim

    return cos_sim


def _distributed_world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


class MultipleNegativesRankingMixin:
    """Options, validation, config, citation and the loss computation MultipleNegativesRankingLoss and
    CachedMultipleNegativesRankingLoss share."""

    embedplug_ops = ("masked_infonce_mean",)

    def _setup_options(
        self,
        scale: float,
        similarity_fct: Callable[[Tensor, Tensor], Tensor] | None,
        gather_across_devices: bool,
        directions: tuple[str, ...],
        partition_mode: str,
        hardness_mode: str | None,
        hardness_strength: float,
    ) -> None:
        check_mnrl_options(
            type(self).__name__, scale, directions, partition_mode, hardness_mode, hardness_strength, DIRECTIONS,
            PARTITION_MODES, HARDNESS_MODES,
        )
        if hardness_mode is not None and hardness_strength == 0.0:
            logger.warning(
                "hardness_mode=%r is set but hardness_strength=0.0, so hardness weighting has no effect.", hardness_mode
            )
        self.scale = scale
        self.similarity_fct = _cos_sim() if similarity_fct is None else similarity_fct
        self.gather_across_devices = gather_across_devices
        self.directions = tuple(directions)
        self.partition_mode = partition_mode
        self.hardness_mode = hardness_mode
        self.hardness_strength = hardness_strength

    def _gathers(self) -> bool:
        return self.gather_across_devices and _distributed_world_size() > 1

    def runs_fused(self) -> bool:
        """Whether the current options run on the fused kernel (see :meth:`backend_info`)."""
        fused = mnrl_runs_fused(
            self.similarity_fct, self.directions, self.partition_mode, self.hardness_mode, self.hardness_strength
        )
        if self._gathers():
            # The gathered fused path merges one joint softmax from three fused calls; per-direction
            # partitions, hardness weighting and unequal per-rank sizes run on the reference there.
            fused = fused and self.partition_mode == "joint" and not (self.hardness_mode and self.hardness_strength > 0)
        return fused

    def backend_info(self, device_type: str = "cpu") -> dict:
        """Which implementation this loss runs on ``device_type``, and why.

        The fused kernel covers ``util.cos_sim`` and ``util.dot_score`` with any ``directions``,
        both partition modes and every hardness mode. The reference (sentence-transformers'
        algorithm on materialised N x N matrices) runs any other similarity function and the
        gathered multi-process batch.
        """
        if not self.runs_fused():
            return {
                "implementation": "reference",
                "reason": "pure-torch reference: a custom similarity function, or a batch gathered across "
                "processes with per-direction partitions, hardness weighting or unequal per-rank sizes",
                **loss_report(),
            }
        return {**fused_backend_info(device_type), **loss_report()}

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor | None = None) -> Tensor:
        """``embeddings``: [queries [B, D], positives [B, D], negatives [B, D]...] -> scalar loss."""
        if len(embeddings) < 2:
            raise ValueError(f"Expected at least 2 embeddings, got {len(embeddings)}")
        queries, *docs = embeddings
        if self._gathers():
            return self._gathered_loss(queries, docs)
        loss = multiple_negatives_ranking_loss(
            queries,
            docs[0],
            docs[1:],
            scale=self.scale,
            similarity=self.similarity_fct,
            directions=self.directions,
            partition_mode=self.partition_mode,
            hardness_mode=self.hardness_mode,
            hardness_strength=self.hardness_strength,
        )
        warn_non_finite_rows(self, loss, embeddings)
        return loss

    def _gathered_loss(self, queries: Tensor, docs: list[Tensor]) -> Tensor:
        """This rank's share of the loss of the batch gathered over the ranks.

        Rows are this rank's queries, candidates every rank's documents (column by column); the
        value is the mean over local rows, times ``world_size * B_local / B_global`` when the
        ranks' batch sizes differ, so the ranks' values average to the single-process loss on the
        concatenated batch and DDP's gradient averaging gives its parameter gradient.
        """
        from embedplug.distributed import gather_columns, gather_with_grad

        caller = type(self).__name__
        # Other ranks' queries are candidates only for query_to_query and doc_to_query (and the reference).
        fused = self.runs_fused()
        needs_queries = not fused or bool(set(self.directions) & {"query_to_query", "doc_to_query"})
        gathered, layout = gather_columns(
            [queries, *docs] if needs_queries else docs, caller, validate=lambda: check_columns(caller, queries, docs)
        )
        gathered_queries, gathered_docs = (gathered[0], gathered[1:]) if needs_queries else (None, gathered)
        if fused and layout.equal_sizes:
            return gathered_multiple_negatives_ranking_loss(
                queries, docs, gathered_queries, gathered_docs, layout,
                scale=self.scale, similarity=self.similarity_fct, directions=self.directions,
            )
        if gathered_queries is None:
            gathered_queries = gather_with_grad(queries, layout)
        loss = reference_mnrl(
            gathered_queries,
            gathered_docs,
            checked_similarity(self.similarity_fct, caller),
            self.scale,
            self.directions,
            self.partition_mode,
            self.hardness_mode,
            self.hardness_strength,
            batch_size=layout.local_size,
            offset=layout.offset,
        )
        return loss * layout.scale_for_local_mean()

    def get_config_dict(self) -> dict[str, Any]:
        from sentence_transformers.util import similarity_fct_name

        return {
            "scale": self.scale,
            "similarity_fct": similarity_fct_name(self.similarity_fct),
            "gather_across_devices": self.gather_across_devices,
            "directions": self.directions,
            "partition_mode": self.partition_mode,
            "hardness_mode": self.hardness_mode,
            "hardness_strength": self.hardness_strength,
        }

    @property
    def temperature(self) -> float:
        return 1.0 / self.scale

    @property
    def citation(self) -> str:
        # sentence-transformers picks the citation by the variant the options describe.
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss as STLoss

        return STLoss.citation.fget(self)


class MultipleNegativesRankingLoss(MultipleNegativesRankingMixin, EmbeddingLoss):
    """InfoNCE with in-batch negatives (MultipleNegativesRankingLoss), on the fused kernel.

    Same constructor, attributes, config, citation, forward and numbers as
    ``sentence_transformers.losses.MultipleNegativesRankingLoss`` (6.2 and 6.3), including ``directions``
    (query_to_doc, query_to_query, doc_to_query, doc_to_doc), ``partition_mode`` and hardness
    weighting, all fused for ``util.cos_sim`` / ``util.dot_score``; :meth:`backend_info` says
    which implementation runs.

    Args:
        model: the SentenceTransformer being trained.
        scale: logits are ``scale * similarity`` (scale = 1 / temperature).
        similarity_fct: ``util.cos_sim`` (default) or ``util.dot_score`` run fused; any other
            ([R, D], [C, D]) -> [R, C] callable runs on the reference.
        gather_across_devices: gather the candidates (and, where a direction needs them, the
            queries) from every rank with gradients; each rank's queries are its rows. Equal to one
            process on the concatenated batch, fused wherever one process is (equal per-rank batch
            sizes; unequal ones run on the reference). Each rank returns the mean over its rows
            times ``world_size * B_rank / B_global``: the ranks' values average to the global loss
            and DDP's gradient averaging gives the single-process parameter gradient.
        directions, partition_mode, hardness_mode, hardness_strength: as in sentence-transformers.

    Inputs: (anchor, positive) pairs, (anchor, positive, negative) triplets or
    (anchor, positive, negative_1, ..., negative_n) tuples, no labels.
    """

    def __init__(
        self,
        model: nn.Module,
        scale: float = 20.0,
        similarity_fct: Callable[[Tensor, Tensor], Tensor] | None = None,
        gather_across_devices: bool = False,
        directions: tuple[str, ...] = ("query_to_doc",),
        partition_mode: str = "joint",
        hardness_mode: str | None = None,
        hardness_strength: float = 0.0,
    ) -> None:
        super().__init__(model)
        self._setup_options(
            scale, similarity_fct, gather_across_devices, directions, partition_mode, hardness_mode, hardness_strength
        )

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None) -> Tensor:
        from sentence_transformers.base.losses.merged_forward import embed_columns

        return self.compute_loss_from_embeddings(embed_columns(self.model, sentence_features), labels)
