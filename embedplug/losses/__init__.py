"""Drop-in replacements for sentence-transformers losses, backed by embedplug's fused kernels.

``from embedplug.losses import BatchHardTripletLoss`` accepts the same constructor, forward and
attributes as the sentence-transformers class of the same name and gives the same numbers.
"""

from embedplug.losses.base import EmbeddingLoss
from embedplug.losses.batch_hard_triplet import BatchHardTripletLoss
from embedplug.losses.distance_functions import BatchHardTripletLossDistanceFunction

# Registered by embedplug's own plugin (embedplug._builtin_plugin) under their class names.
BUILTIN_LOSSES: tuple = (BatchHardTripletLoss,)

__all__ = [
    "BUILTIN_LOSSES",
    "BatchHardTripletLoss",
    "BatchHardTripletLossDistanceFunction",
    "EmbeddingLoss",
]
