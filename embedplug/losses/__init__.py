"""Drop-in replacements for sentence-transformers losses, backed by embedplug's fused kernels.

``from embedplug.losses import BatchHardTripletLoss`` accepts the same constructor, forward and
attributes as the sentence-transformers class of the same name and gives the same numbers.
"""

from embedplug.losses.base import EmbeddingLoss
from embedplug.losses.batch_all_triplet import BatchAllTripletLoss
from embedplug.losses.batch_hard_soft_margin_triplet import BatchHardSoftMarginTripletLoss
from embedplug.losses.batch_hard_triplet import BatchHardTripletLoss
from embedplug.losses.batch_semi_hard_triplet import BatchSemiHardTripletLoss
from embedplug.losses.cached_gist_embed import CachedGISTEmbedLoss
from embedplug.losses.cached_multiple_negatives_ranking import CachedMultipleNegativesRankingLoss
from embedplug.losses.cached_multiple_negatives_symmetric_ranking import CachedMultipleNegativesSymmetricRankingLoss
from embedplug.losses.distance_functions import BatchHardTripletLossDistanceFunction
from embedplug.losses.gist_embed import GISTEmbedLoss
from embedplug.losses.labelled_contrastive import CircleLoss, MultiSimilarityLoss, SupConLoss
from embedplug.losses.mega_batch_margin import MegaBatchMarginLoss
from embedplug.losses.multiple_negatives_ranking import MultipleNegativesRankingLoss
from embedplug.losses.multiple_negatives_symmetric_ranking import MultipleNegativesSymmetricRankingLoss
from embedplug.losses.pair_rule import PairRuleLoss, make_loss_class
from embedplug.losses.pml_pair_losses import (
    PMLContrastiveLoss,
    PMLGeneralizedLiftedStructureLoss,
    PMLNTXentLoss,
    PMLTupletMarginLoss,
)
from embedplug.losses.triplet import TripletDistanceMetric, TripletLoss

# Registered by embedplug's own plugin (embedplug._builtin_plugin) under their class names.
BUILTIN_LOSSES: tuple = (
    BatchAllTripletLoss,
    BatchHardSoftMarginTripletLoss,
    BatchHardTripletLoss,
    BatchSemiHardTripletLoss,
    TripletLoss,
    GISTEmbedLoss,
    CachedGISTEmbedLoss,
    MultipleNegativesRankingLoss,
    CachedMultipleNegativesRankingLoss,
    SupConLoss,
    MultiSimilarityLoss,
    CircleLoss,
    MegaBatchMarginLoss,
    MultipleNegativesSymmetricRankingLoss,
    CachedMultipleNegativesSymmetricRankingLoss,
    PMLContrastiveLoss,
    PMLNTXentLoss,
    PMLGeneralizedLiftedStructureLoss,
    PMLTupletMarginLoss,
)

__all__ = [
    "BUILTIN_LOSSES",
    "BatchAllTripletLoss",
    "BatchHardSoftMarginTripletLoss",
    "BatchHardTripletLoss",
    "BatchHardTripletLossDistanceFunction",
    "BatchSemiHardTripletLoss",
    "CachedGISTEmbedLoss",
    "CachedMultipleNegativesRankingLoss",
    "CircleLoss",
    "CachedMultipleNegativesSymmetricRankingLoss",
    "EmbeddingLoss",
    "GISTEmbedLoss",
    "MultiSimilarityLoss",
    "MegaBatchMarginLoss",
    "MultipleNegativesRankingLoss",
    "PMLContrastiveLoss",
    "PMLGeneralizedLiftedStructureLoss",
    "PMLNTXentLoss",
    "PMLTupletMarginLoss",
    "PairRuleLoss",
    "SupConLoss",
    "MultipleNegativesSymmetricRankingLoss",
    "TripletDistanceMetric",
    "TripletLoss",
    "make_loss_class",
]
