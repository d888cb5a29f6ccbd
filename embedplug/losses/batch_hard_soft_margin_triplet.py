"""Drop-in for sentence-transformers' ``BatchHardSoftMarginTripletLoss``, on the fused batch-hard kernel."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from embedplug.functional.soft_margin import batch_hard_soft_margin_triplet_loss
from embedplug.losses.batch_hard_triplet import BatchHardTripletLoss
from embedplug.losses.distance_functions import BatchHardTripletLossDistanceFunction


class BatchHardSoftMarginTripletLoss(BatchHardTripletLoss):
    """Batch-hard mining with ``softplus(d(a, hardest positive) - d(a, hardest negative))`` instead of a margin.

    Same constructor, attributes (``triplet_margin`` stays 5, unused, as in sentence-transformers),
    forward and numbers as ``sentence_transformers.losses.BatchHardSoftMarginTripletLoss`` (6.x).
    Reuses the fused ``batch_hard_mining`` op.

    Args:
        model: the SentenceTransformer being trained.
        distance_metric: [N, D] -> [N, N] distance function.
        gather_across_devices: gather embeddings and labels from every rank (embedplug only; see
            :class:`~embedplug.losses.base.LabelledBatchLoss` for the value and gradient scaling).
    """

    def __init__(
        self,
        model: nn.Module,
        distance_metric: Callable[[Tensor], Tensor] = BatchHardTripletLossDistanceFunction.euclidean_distance,
        gather_across_devices: bool = False,
    ) -> None:
        super().__init__(model, distance_metric=distance_metric, gather_across_devices=gather_across_devices)

    def labelled_batch_loss(self, labels: Tensor, embeddings: Tensor) -> Tensor:
        return self.batch_hard_triplet_soft_margin_loss(labels, embeddings)

    def batch_hard_triplet_soft_margin_loss(self, labels: Tensor, embeddings: Tensor) -> Tensor:
        """ST's method name and argument order: ``labels`` [N], ``embeddings`` [N, D] -> scalar."""
        return batch_hard_soft_margin_triplet_loss(embeddings, labels, distance=self.distance_metric)

    def get_config_dict(self) -> dict[str, Any]:
        config = {"distance_metric": self.distance_metric_name()}
        if self.gather_across_devices:
            config["gather_across_devices"] = True
        return config
