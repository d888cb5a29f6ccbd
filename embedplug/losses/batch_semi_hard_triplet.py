"""Drop-in for sentence-transformers' ``BatchSemiHardTripletLoss``, on the fused semi-hard kernel."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from embedplug._validation import check_distance, check_finite_number
from embedplug.functional.semi_hard import batch_semi_hard_triplet_loss
from embedplug.losses.base import LabelledBatchLoss
from embedplug.losses.batch_triplet_backend import BatchTripletBackendMixin
from embedplug.losses.distance_functions import BatchHardTripletLossDistanceFunction
from embedplug.ops.semi_hard import _masked_maximum


class BatchSemiHardTripletLoss(BatchTripletBackendMixin, LabelledBatchLoss):
    """For each anchor-positive pair, the nearest negative farther than the positive (FaceNet's semi-hard).

    Same constructor, attributes, forward and numbers as
    ``sentence_transformers.losses.BatchSemiHardTripletLoss`` (6.x). With ST's (or embedplug's)
    distance functions the fused kernel never builds the N x N distance matrix or its sorted copy
    (O(N) extra memory); any other callable runs on the pure-torch reference.

    Args:
        model: the SentenceTransformer being trained.
        distance_metric: [N, D] -> [N, N] distance function.
        margin: negatives should be at least ``margin`` further from the anchor than positives.
        gather_across_devices: gather embeddings and labels from every rank (embedplug only; see
            :class:`~embedplug.losses.base.LabelledBatchLoss` for the value and gradient scaling).

    Inputs: single texts with integer class labels; batches need classes with at least 2 samples.
    """

    embedplug_ops = ("semi_hard_triplet_loss_forward",)

    def __init__(
        self,
        model: nn.Module,
        distance_metric: Callable[[Tensor], Tensor] = BatchHardTripletLossDistanceFunction.euclidean_distance,
        margin: float = 5,
        gather_across_devices: bool = False,
    ) -> None:
        super().__init__(model)
        check_finite_number(margin, "margin", "BatchSemiHardTripletLoss")
        check_distance(distance_metric, "distance_metric", "BatchSemiHardTripletLoss")
        self.gather_across_devices = gather_across_devices
        self.margin = margin
        self.distance_metric = distance_metric

    def labelled_batch_loss(self, labels: Tensor, embeddings: Tensor) -> Tensor:
        return self.batch_semi_hard_triplet_loss(labels, embeddings)

    def batch_semi_hard_triplet_loss(self, labels: Tensor, embeddings: Tensor) -> Tensor:
        """ST's method name and argument order: ``labels`` [N], ``embeddings`` [N, D] -> scalar."""
        return batch_semi_hard_triplet_loss(embeddings, labels, margin=self.margin, distance=self.distance_metric)

    @staticmethod
    def _masked_maximum(data: Tensor, mask: Tensor, dim: int = 1) -> Tensor:
        """ST's helper, kept for code that calls it: [N, M], [N, M] -> [N, 1] (``dim`` must be 1)."""
        if dim != 1:
            raise ValueError(f"_masked_maximum: only dim=1 is supported, got {dim}")
        return _masked_maximum(data, mask)

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "distance_metric": self.distance_metric_name(),
            "margin": self.margin,
            **({"gather_across_devices": True} if self.gather_across_devices else {}),
        }
