"""Drop-in replacements for sentence-transformers losses, backed by embedplug's fused kernels.

``from embedplug.losses import BatchHardTripletLoss`` accepts the same constructor, forward and
attributes as the sentence-transformers class of the same name and gives the same numbers.
"""

from embedplug.losses.base import EmbeddingLoss
from embedplug.losses.batch_all_triplet import BatchAllTripletLoss
from embedplug.losses.batch_hard_soft_margin_triplet import BatchHardSoftMarginTripletLoss
from embedplug.losses.batch_hard_triplet import BatchHardTripletLoss
from embedplug.losses.batch_semi_hard_triplet import BatchSemiHardTripletLoss
from embedplug.losses.distance_functions import BatchHardTripletLossDistanceFunction
from embedplug.losses.triplet import TripletDistanceMetric, TripletLoss

# Registered by embedplug's own plugin (embedplug._builtin_plugin) under their class names.
BUILTIN_LOSSES: tuple = (
    BatchAllTripletLoss,
    BatchHardSoftMarginTripletLoss,
    BatchHardTripletLoss,
    BatchSemiHardTripletLoss,
    TripletLoss,
)

__all__ = [
    "BUILTIN_LOSSES",
    "BatchAllTripletLoss",
    "BatchHardSoftMarginTripletLoss",
    "BatchHardTripletLoss",
    "BatchHardTripletLossDistanceFunction",
    "BatchSemiHardTripletLoss",
    "EmbeddingLoss",
    "TripletDistanceMetric",
    "TripletLoss",
]
