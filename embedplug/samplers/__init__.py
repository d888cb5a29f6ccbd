"""Batch samplers for metric learning, registered as built-in plugins.

Every sampler is a ``torch.utils.data.BatchSampler`` (and, when sentence-transformers is installed, a subclass
of its ``DefaultBatchSampler``, so the trainer takes the class directly) that yields whole batches of indices,
takes sentence-transformers' signature ``(dataset, batch_size, drop_last, valid_label_columns, generator,
seed)``, and orders each epoch as a pure function of ``(seed, epoch)`` (see ``set_epoch``).

- :class:`PKBatchSampler`: P classes × K samples per batch, for batch-mining (triplet) losses.
- :class:`GroupByLabelBatchSampler`: sentence-transformers' group-by-label batches.
- :class:`NoDuplicatesBatchSampler`: sentence-transformers' duplicate-free batches, for in-batch negatives.
- :func:`for_trainer`: the ``batch_sampler=`` argument for ``SentenceTransformerTrainingArguments``.
- :class:`SamplerEpochCallback`: keeps the epoch right when multi-process training resumes mid-epoch.
"""

from embedplug.samplers._base import BatchSamplerBase
from embedplug.samplers.epoch_callback import SamplerEpochCallback
from embedplug.samplers.group_by_label import GroupByLabelBatchSampler
from embedplug.samplers.no_duplicates import NoDuplicatesBatchSampler
from embedplug.samplers.pk import PKBatchSampler
from embedplug.samplers.trainer import TrainerBatchSamplerFactory, for_trainer

# Registered by the built-in plugin, each under its class name.
BUILTIN_SAMPLERS: tuple[type, ...] = (PKBatchSampler, GroupByLabelBatchSampler, NoDuplicatesBatchSampler)

__all__ = [
    "BUILTIN_SAMPLERS",
    "BatchSamplerBase",
    "GroupByLabelBatchSampler",
    "NoDuplicatesBatchSampler",
    "PKBatchSampler",
    "SamplerEpochCallback",
    "TrainerBatchSamplerFactory",
    "for_trainer",
]
