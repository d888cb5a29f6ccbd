"""Example embedplug plugin: a supervised-contrastive loss, pytorch-metric-learning's LiftedStructureLoss
as a pair rule, and a seeded shuffling batch sampler.

Installing this package is all it takes: embedplug finds it through the ``embedplug`` entry point
declared in pyproject.toml, so ``embedplug.get_loss("ExampleSupConLoss")`` works without importing it.
"""

from embedplug_example.lifted_structure import ExampleLiftedStructureLoss, lifted_structure
from embedplug_example.loss import ExampleSupConLoss, supervised_contrastive_loss
from embedplug_example.sampler import SeededShuffleBatchSampler

__all__ = [
    "ExampleLiftedStructureLoss",
    "ExampleSupConLoss",
    "SeededShuffleBatchSampler",
    "lifted_structure",
    "supervised_contrastive_loss",
]
