"""Drop-in for sentence-transformers' ``BatchHardTripletLoss``, on the fused batch-hard kernel."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from embedplug._validation import check_distance, check_finite_number
from embedplug.functional.batch_hard import batch_hard_triplet_loss
from embedplug.losses.base import LabelledBatchLoss
from embedplug.losses.batch_triplet_backend import BatchTripletBackendMixin
from embedplug.losses.distance_functions import BatchHardTripletLossDistanceFunction
from embedplug.losses.triplet_masks import TripletMasksMixin


class BatchHardTripletLoss(BatchTripletBackendMixin, TripletMasksMixin, LabelledBatchLoss):
    """For each anchor, the hardest positive and the hardest negative in the batch (Hermans et al. 2017).

    Same constructor, attributes, forward and numbers as
    ``sentence_transformers.losses.BatchHardTripletLoss`` (6.x). ST's own distance functions and
    embedplug's copies (``euclidean_distance``, ``eucledian_distance``, ``cosine_distance``, and
    ``functools.partial(euclidean_distance, squared=True)``) run on the fused kernel, which never
    materialises the N x N distance matrix; any other callable runs on the pure-torch reference.
    The cosine distance is the installed release's (:mod:`embedplug.st_version`; from 6.3 clamped at
    0 with a zero diagonal), as in the whole batch triplet family; :meth:`backend_info` says which.

    Args:
        model: the SentenceTransformer being trained.
        distance_metric: [N, D] -> [N, N] distance function.
        margin: negatives should be at least ``margin`` further from the anchor than positives.
        gather_across_devices: gather embeddings and labels from every rank (embedplug only; see
            :class:`~embedplug.losses.base.LabelledBatchLoss` for the value and gradient scaling).

    Inputs: single texts with integer class labels. Use a P x K batch sampler (e.g.
    ``embedplug.samplers.PKBatchSampler``) so every batch has positives and negatives.
    """

    embedplug_ops = ("batch_hard_mining",)

    def __init__(
        self,
        model: nn.Module,
        distance_metric: Callable[[Tensor], Tensor] = BatchHardTripletLossDistanceFunction.euclidean_distance,
        margin: float = 5,
        gather_across_devices: bool = False,
    ) -> None:
        super().__init__(model)
        check_finite_number(margin, "margin", "BatchHardTripletLoss")
        check_distance(distance_metric, "distance_metric", type(self).__name__)
        self.gather_across_devices = gather_across_devices
        self.triplet_margin = margin
        self.distance_metric = distance_metric

    def labelled_batch_loss(self, labels: Tensor, embeddings: Tensor) -> Tensor:
        return self.batch_hard_triplet_loss(labels, embeddings)

    def batch_hard_triplet_loss(self, labels: Tensor, embeddings: Tensor) -> Tensor:
        """ST's method name and argument order: ``labels`` [N], ``embeddings`` [N, D] -> scalar."""
        return batch_hard_triplet_loss(embeddings, labels, margin=self.triplet_margin, distance=self.distance_metric)

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "distance_metric": self.distance_metric_name(),
            "margin": self.triplet_margin,
            **({"gather_across_devices": True} if self.gather_across_devices else {}),
        }
