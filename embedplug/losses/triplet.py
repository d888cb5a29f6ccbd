"""Drop-in for sentence-transformers' ``TripletLoss`` and its ``TripletDistanceMetric``."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from torch import Tensor, nn

from embedplug._validation import check_column_count, check_finite_number, warn_non_finite_rows
from embedplug.functional import triplet as triplet_functional
from embedplug.losses.base import EmbeddingLoss
from embedplug.losses.base import HERMANS_2017_CITATION


class TripletDistanceMetric:
    """Row-wise distances for :class:`TripletLoss`: two [N, D] tensors -> [N] (ST-compatible names)."""

    COSINE = triplet_functional.cosine_distance
    EUCLIDEAN = triplet_functional.euclidean_distance
    MANHATTAN = triplet_functional.manhattan_distance


def _metric_name(metric: Callable) -> str:
    """``TripletDistanceMetric.NAME`` for embedplug's or sentence-transformers' metrics, else its name."""
    namespaces = [TripletDistanceMetric]
    try:
        from sentence_transformers.sentence_transformer.losses.triplet import TripletDistanceMetric as STMetric

        namespaces.append(STMetric)
    except ImportError:
        pass
    for namespace in namespaces:
        for name, value in vars(namespace).items():
            if value == metric:
                return f"TripletDistanceMetric.{name}"
    return getattr(metric, "__name__", str(metric))


class TripletLoss(EmbeddingLoss):
    """``relu(d(anchor, positive) - d(anchor, negative) + margin)``, averaged over (anchor, positive, negative) rows.

    Same constructor, attributes, forward and numbers as ``sentence_transformers.losses.TripletLoss``
    (6.x); sentence-transformers' own ``TripletDistanceMetric`` members are accepted as well.

    Args:
        model: the SentenceTransformer being trained.
        distance_metric: two [N, D] tensors -> [N] distances.
        triplet_margin: negatives should be at least this much further from the anchor than positives.

    Inputs: (anchor, positive, negative) text triplets; no labels.
    """

    embedplug_implementation = "embedplug torch"  # row-wise distances, O(N D): no kernel to fuse

    def __init__(
        self,
        model: nn.Module,
        distance_metric: Callable[[Tensor, Tensor], Tensor] = TripletDistanceMetric.EUCLIDEAN,
        triplet_margin: float = 5,
    ) -> None:
        super().__init__(model)
        check_finite_number(triplet_margin, "triplet_margin", "TripletLoss")
        if not callable(distance_metric) and distance_metric not in ("euclidean", "cosine", "manhattan"):
            raise TypeError(
                "TripletLoss: distance_metric must be a callable mapping two [N, D] tensors to [N] distances "
                f"(e.g. TripletDistanceMetric.EUCLIDEAN), got {distance_metric!r}"
            )
        self.distance_metric = distance_metric
        self.triplet_margin = triplet_margin

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor) -> Tensor:
        return self.compute_loss_from_embeddings([self.embed(features) for features in sentence_features], labels)

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor | None) -> Tensor:
        """``embeddings`` = [anchor, positive, negative], each [N, D] -> scalar loss; ``labels`` unused."""
        check_column_count(embeddings, 3, 3, "TripletLoss.compute_loss_from_embeddings")
        anchor, positive, negative = embeddings
        loss = triplet_functional.triplet_loss(
            anchor, positive, negative, margin=self.triplet_margin, distance=self.distance_metric
        )
        warn_non_finite_rows(self, loss, embeddings)
        return loss

    def get_config_dict(self) -> dict[str, Any]:
        return {"distance_metric": _metric_name(self.distance_metric), "triplet_margin": self.triplet_margin}

    @property
    def citation(self) -> str:
        return HERMANS_2017_CITATION
