"""A trainer callback that keeps embedplug samplers on the right epoch when resuming multi-process training.

Why it exists: on resume, transformers' trainer wraps the train loader in accelerate's ``skip_first_batches``.
With one process the chain is ``SkipBatchSampler -> sampler`` and the trainer's ``set_epoch`` reaches the
sampler. With several processes it is ``SkipBatchSampler -> BatchSamplerShard -> sampler`` and neither
``DataLoaderShard.set_epoch`` nor the trainer reaches through two wrappers, so the sampler would replay epoch 0's
order for the rest of the resumed epoch (later epochs are fine). This callback sets the epoch from the trainer
state at every epoch start, through whatever wrappers the (unskipped) train loader has.
"""

from __future__ import annotations

import math
from typing import Any

try:
    from transformers import TrainerCallback as _CallbackBase
except ImportError:  # pragma: no cover - only without transformers, where there is no trainer to call it
    _CallbackBase = object

from embedplug.samplers._base import BatchSamplerBase

# Attributes through which torch, accelerate and transformers wrap a batch sampler.
_WRAPPER_ATTRIBUTES = ("batch_sampler", "sampler", "base_dataloader", "dataloader")


class SamplerEpochCallback(_CallbackBase):
    """``SentenceTransformerTrainer(..., callbacks=[SamplerEpochCallback()])``: needed only for multi-process
    training that resumes from a checkpoint taken mid-epoch; harmless otherwise.

    At ``on_epoch_begin`` it calls ``set_epoch(floor(state.epoch))`` on every embedplug sampler it finds in the
    train loader (``state.epoch`` is e.g. ``1.5`` when resuming halfway through epoch 1).
    """

    def on_epoch_begin(self, args: Any, state: Any, control: Any, train_dataloader: Any = None, **kwargs: Any):
        if train_dataloader is not None and state.epoch is not None:
            epoch = math.floor(state.epoch)
            for sampler in find_samplers(train_dataloader):
                sampler.set_epoch(epoch)
        return control


def find_samplers(root: Any) -> list[BatchSamplerBase]:
    """Every :class:`BatchSamplerBase` reachable from ``root`` through the usual wrapper attributes."""
    found: list[BatchSamplerBase] = []
    seen: set[int] = set()
    pending = [root]
    while pending:
        node = pending.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, BatchSamplerBase):
            found.append(node)
            continue  # its own .sampler is the dataset
        for attribute in _WRAPPER_ATTRIBUTES:
            # getattr on a DataLoader's batch_sampler etc. is cheap and side-effect free.
            pending.append(getattr(node, attribute, None))
        # A multi-dataset sampler holds one sampler per dataset.
        pending.extend(getattr(node, "batch_samplers", None) or ())
    return found
