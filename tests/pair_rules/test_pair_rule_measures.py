"""The measures and the mining filter beyond the presets' defaults, against pytorch-metric-learning
with the matching distance object: dot products (PML's ``DotProductSimilarity`` normalises unless told
not to; a rule's "dot" does not), squared and unnormalised euclidean distances, and
MultiSimilarityMiner on a distance (its comparisons mirror)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from pair_rule_cases import assert_equal_losses, structures

from embedplug.functional import pair_rule_loss
from embedplug.pair_rules import MiningFilter, presets

pml = pytest.importorskip("pytorch_metric_learning")
from pytorch_metric_learning import distances, losses, miners  # noqa: E402


def with_measure(rule, measure, normalize=None, epsilon=None):
    """``rule`` with both sides on ``measure`` (and a MiningFilter(epsilon) on both, if given)."""
    mined = None if epsilon is None else MiningFilter(epsilon)
    sides = {
        name: dataclasses.replace(getattr(rule, name), measure=measure, normalize=normalize, filter=mined)
        for name in ("positives", "negatives")
    }
    return dataclasses.replace(rule, **sides)


def mined(loss, miner):
    return lambda x, y: loss(x, y, miner(x, y))


CASES = {
    "multi-similarity-dot": (
        with_measure(presets.multi_similarity(mining_epsilon=None), "dot"),
        losses.MultiSimilarityLoss(distance=distances.DotProductSimilarity(normalize_embeddings=False)),
    ),
    "contrastive-squared": (
        with_measure(presets.contrastive(0.1, 1.5), "squared_euclidean"),
        losses.ContrastiveLoss(0.1, 1.5, distance=distances.LpDistance(power=2)),
    ),
    "lifted-unnormalised": (
        with_measure(presets.generalized_lifted_structure(4.0, 0.5), "euclidean", normalize=False),
        losses.GeneralizedLiftedStructureLoss(4.0, 0.5, distance=distances.LpDistance(normalize_embeddings=False)),
    ),
    "contrastive-mined-on-distances": (
        with_measure(presets.contrastive(), "euclidean", epsilon=0.1),
        mined(losses.ContrastiveLoss(), miners.MultiSimilarityMiner(epsilon=0.1, distance=distances.LpDistance())),
    ),
    "ntxent-mined-dot": (
        with_measure(presets.ntxent(0.5), "dot", epsilon=0.2),
        mined(
            losses.NTXentLoss(0.5, distance=distances.DotProductSimilarity(normalize_embeddings=False)),
            miners.MultiSimilarityMiner(epsilon=0.2, distance=distances.DotProductSimilarity(normalize_embeddings=False)),
        ),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_measure_and_filter_variants_equal_pytorch_metric_learning(name, dtype):
    rule, theirs = CASES[name]
    generator = torch.Generator().manual_seed(23)
    for n in (2, 5, 30):
        for layout, labels in structures(n, generator).items():
            embeddings = torch.randn(n, 6, generator=generator, dtype=dtype)
            assert_equal_losses(lambda x, y: pair_rule_loss(x, y, rule), theirs, embeddings, labels, f"{name} {layout}")
