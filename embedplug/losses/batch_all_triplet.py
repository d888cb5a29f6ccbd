"""Drop-in for sentence-transformers' ``BatchAllTripletLoss``, on the fused batch-all kernel."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from embedplug._validation import check_distance, check_finite_number
from embedplug.functional.batch_all import batch_all_triplet_loss
from embedplug.losses.base import LabelledBatchLoss
from embedplug.losses.batch_triplet_backend import BatchTripletBackendMixin
from embedplug.losses.distance_functions import BatchHardTripletLossDistanceFunction
from embedplug.losses.triplet_masks import TripletMasksMixin


class BatchAllTripletLoss(BatchTripletBackendMixin, TripletMasksMixin, LabelledBatchLoss):
    """Every valid (anchor, positive, negative) triplet in the batch, averaged over the active ones.

    Same constructor, attributes, forward and numbers as
    ``sentence_transformers.losses.BatchAllTripletLoss`` (6.x). With ST's (or embedplug's) distance
    functions the fused kernel runs in O(N) extra memory and O(N^2 * min(K, log N)) time beyond the
    distance GEMMs; sentence-transformers allocates (anchor-positive pairs) x N, which is cubic
    when classes are large. Any other callable runs on the pure-torch reference.

    Args:
        model: the SentenceTransformer being trained.
        distance_metric: [N, D] -> [N, N] distance function.
        margin: negatives should be at least ``margin`` further from the anchor than positives.
        gather_across_devices: gather embeddings and labels from every rank (embedplug only; see
            :class:`~embedplug.losses.base.LabelledBatchLoss` for the value and gradient scaling).

    Inputs: single texts with integer class labels; batches need classes with at least 2 samples.
    """

    embedplug_ops = ("batch_all_triplet_loss_forward",)

    def __init__(
        self,
        model: nn.Module,
        distance_metric: Callable[[Tensor], Tensor] = BatchHardTripletLossDistanceFunction.euclidean_distance,
        margin: float = 5,
        gather_across_devices: bool = False,
    ) -> None:
        super().__init__(model)
        check_finite_number(margin, "margin", "BatchAllTripletLoss")
        check_distance(distance_metric, "distance_metric", type(self).__name__)
        self.gather_across_devices = gather_across_devices
        self.triplet_margin = margin
        self.distance_metric = distance_metric

    def labelled_batch_loss(self, labels: Tensor, embeddings: Tensor) -> Tensor:
        return self.batch_all_triplet_loss(labels, embeddings)

    def batch_all_triplet_loss(self, labels: Tensor, embeddings: Tensor) -> Tensor:
        """ST's method name and argument order: ``labels`` [N], ``embeddings`` [N, D] -> scalar."""
        return batch_all_triplet_loss(embeddings, labels, margin=self.triplet_margin, distance=self.distance_metric)

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "distance_metric": self.distance_metric_name(),
            "margin": self.triplet_margin,
            **({"gather_across_devices": True} if self.gather_across_devices else {}),
        }
