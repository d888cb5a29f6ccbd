"""``embedplug train`` as torchrun launches it, recording what every rank trains on (for the tests).

Each rank appends to ``$EMBEDPLUG_BATCH_LOG.rank<r>`` one JSON line per loss call
(``{"step": [labels]}``) and one per batch its PK sampler yields (``{"epoch_batch": [labels]}``),
then runs ``embedplug.cli.main`` with the command-line arguments. ``$EMBEDPLUG_HOLDOUT_FRACTION``
sets the WordNet hold-out fraction as the in-process tests' ``small_wordnet`` does.
"""

from __future__ import annotations

import json
import os
import sys


def _log(record: dict) -> None:
    with open(f"{os.environ['EMBEDPLUG_BATCH_LOG']}.rank{os.environ.get('RANK', '0')}", "a") as log:
        log.write(json.dumps(record) + "\n")


def _install() -> None:
    from embedplug.data import splits
    from embedplug.losses.base import LabelledBatchLoss
    from embedplug.samplers.pk import PKBatchSampler

    if "EMBEDPLUG_HOLDOUT_FRACTION" in os.environ:
        splits.HOLDOUT_FRACTION = float(os.environ["EMBEDPLUG_HOLDOUT_FRACTION"])

    forward = LabelledBatchLoss.forward

    def recording_forward(self, sentence_features, labels):
        _log({"step": labels.tolist()})
        return forward(self, sentence_features, labels)

    sampler_iter = PKBatchSampler.__iter__

    def recording_iter(self):
        labels = self.dataset[self.valid_label_columns[0]] if self.valid_label_columns else None
        for batch in sampler_iter(self):
            _log({"epoch": self.epoch, "epoch_batch": [labels[i] for i in batch] if labels is not None else batch})
            yield batch

    LabelledBatchLoss.forward = recording_forward
    PKBatchSampler.__iter__ = recording_iter


if __name__ == "__main__":
    _install()
    from embedplug.cli import main

    sys.exit(main(sys.argv[1:]))
