"""The hooks embedplug calls. pyproject.toml's entry point names this module.

Hooks only call ``register``: embedplug validates each class, checks that its names are free and
attributes it to this distribution (see ``embedplug plugins``).
"""

import embedplug

from embedplug_example.lifted_structure import ExampleLiftedStructureLoss
from embedplug_example.loss import ExampleSupConLoss
from embedplug_example.sampler import SeededShuffleBatchSampler


@embedplug.hookimpl
def embedplug_register_losses(register):
    """Register :class:`ExampleSupConLoss` as ``"ExampleSupConLoss"`` (its class name) and the short alias
    ``"example_supcon"``, and the rule-defined :data:`ExampleLiftedStructureLoss` with ``"example_lifted_structure"``."""
    register(ExampleSupConLoss, aliases=("example_supcon",))
    register(ExampleLiftedStructureLoss, aliases=("example_lifted_structure",))


@embedplug.hookimpl
def embedplug_register_samplers(register):
    """Register :class:`SeededShuffleBatchSampler` and the alias ``"seeded_shuffle"``."""
    register(SeededShuffleBatchSampler, aliases=("seeded_shuffle",))
