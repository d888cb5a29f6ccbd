"""Drop-in for sentence-transformers' ``BatchAllTripletLoss``, on the fused batch-all kernel."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from torch import Tensor, nn

from embedplug.functional.batch_all import batch_all_triplet_loss
from embedplug.losses.base import EmbeddingLoss
from embedplug.losses.batch_hard_triplet import HERMANS_2017_CITATION
from embedplug.losses.distance_functions import BatchHardTripletLossDistanceFunction
from embedplug.losses.triplet_masks import TripletMasksMixin


class BatchAllTripletLoss(TripletMasksMixin, EmbeddingLoss):
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

    Inputs: single texts with integer class labels; batches need classes with at least 2 samples.
    """

    def __init__(
        self,
        model: nn.Module,
        distance_metric: Callable[[Tensor], Tensor] = BatchHardTripletLossDistanceFunction.euclidean_distance,
        margin: float = 5,
    ) -> None:
        super().__init__(model)
        self.triplet_margin = margin
        self.distance_metric = distance_metric

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor) -> Tensor:
        return self.compute_loss_from_embeddings([self.embed(sentence_features[0])], labels)

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor) -> Tensor:
        """``embeddings[0]`` [N, D], ``labels`` [N] -> scalar loss."""
        return self.batch_all_triplet_loss(labels, embeddings[0])

    def batch_all_triplet_loss(self, labels: Tensor, embeddings: Tensor) -> Tensor:
        """ST's method name and argument order: ``labels`` [N], ``embeddings`` [N, D] -> scalar."""
        return batch_all_triplet_loss(embeddings, labels, margin=self.triplet_margin, distance=self.distance_metric)

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "distance_metric": getattr(self.distance_metric, "__name__", str(self.distance_metric)),
            "margin": self.triplet_margin,
        }

    @property
    def citation(self) -> str:
        return HERMANS_2017_CITATION
