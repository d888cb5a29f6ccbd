"""The ``[mining]`` section: hard negatives mined before training and, optionally, refreshed during it.

    [mining]
    num_negatives = 3            # negatives per (anchor, positive) pair: columns negative_1 .. negative_3
    refresh_every = 200          # re-embed the corpus with the current model and re-mine every 200 steps
    options = { relative_margin = 0.05 }   # any other embedplug.mining.mine_hard_negatives argument

The training data must be (anchor, positive) pairs. Before training, they are mined exactly as
``mine_hard_negatives(..., output_format="n-tuple")`` does, and the pairs it finds no full set of
negatives for are dropped (as that function drops them). The trainer then trains on (anchor,
positive, negative_1 .. negative_n) rows. A refresh re-embeds every text with the model as it is at
that step and re-mines; each row's negatives are swapped in the data collator from the next batch
on (a row with too few new negatives keeps its previous ones), so the sampler's order, the epoch and
resuming are untouched. Under torchrun every rank mines its share and the results are gathered
(:class:`embedplug.mining.shards.Shards`), so all ranks train on the same negatives. The time spent
mining is reported apart from training (``timings.mining_seconds`` and ``mining`` in metrics.json).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import random
import time
from typing import Any

from embedplug.train.config import ConfigError, TrainConfig

# mine_hard_negatives arguments [mining] sets itself or that make no sense while training.
_FIXED_OPTIONS = {
    "dataset": "the training data",
    "model": "the model being trained",
    "anchor_column_name": "the first text column",
    "positive_column_name": "the second text column",
    "num_negatives": "mining.num_negatives",
    "output_format": '"n-tuple" (what the trainer trains on)',
    "output_scores": "off: the losses take texts",
    "include_positives": "off: a positive must not be its own negative",
    "as_triplets": "the n-tuple format",
    "margin": "options.absolute_margin",
    "verbose": "the run's own output",
    "corpus": "the positives (a separate corpus is not supported in training yet)",
    "cross_encoder": "nothing (a cross-encoder is not supported in training yet)",
    "use_multi_process": "torchrun (every rank mines its share)",
}


def negative_columns(num_negatives: int) -> list[str]:
    return [f"negative_{i}" for i in range(1, num_negatives + 1)]


def check_mining(config: TrainConfig, columns: list[str], label_column: str | None) -> list[str]:
    """The training columns once mined (``columns`` unchanged without mining); ConfigError naming the key."""
    mining = config.mining
    if not mining.num_negatives:
        if mining.refresh_every or mining.options:
            raise ConfigError(
                f"{config.where('mining')}: [mining] needs mining.num_negatives (the negatives per pair) to be set"
            )
        return columns
    if isinstance(mining.num_negatives, bool) or mining.num_negatives < 1:
        raise ConfigError(f"{config.where('mining.num_negatives')}: mining.num_negatives must be a positive integer")
    if mining.refresh_every < 0:
        raise ConfigError(f"{config.where('mining.refresh_every')}: mining.refresh_every must be >= 0 steps")
    text_columns = [name for name in columns if name != label_column]
    if label_column or len(text_columns) != 2:
        raise ConfigError(
            f"{config.where('mining')}: [mining] mines negatives for (anchor, positive) pairs, but the training data "
            f"has columns {', '.join(map(repr, columns))}"
            + (f" with label column {label_column!r}" if label_column else "")
            + ". Use pairs, e.g. the 'reverse-dictionary' task."
        )
    if mining.refresh_every and config.training.get("dataloader_num_workers", 0):
        raise ConfigError(
            f"{config.where('mining.refresh_every')}: refreshed negatives reach the data collator in this process; "
            "set training.dataloader_num_workers = 0 (worker processes would keep the old negatives)"
        )
    _check_options(config)
    return [*text_columns, *negative_columns(mining.num_negatives)]


def _check_options(config: TrainConfig) -> None:
    from embedplug.mining.hard_negatives import mine

    accepted = [name for name in inspect.signature(mine).parameters if name not in _FIXED_OPTIONS]
    for key in config.mining.options:
        dotted = f"mining.options.{key}"
        if key in _FIXED_OPTIONS:
            raise ConfigError(f"{config.where(dotted)}: {dotted} is not set here; [mining] uses {_FIXED_OPTIONS[key]}")
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=3, cutoff=0.6)
            hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
            raise ConfigError(
                f"{config.where(dotted)}: unknown mining option {key!r}.{hint} Options: {', '.join(sorted(accepted))}."
            )


@dataclasses.dataclass
class MiningRound:
    """One mining pass: at which optimizer step, how long, and how many pairs got a full set of negatives."""

    step: int
    seconds: float
    pairs_with_negatives: int
    embedded_texts: int
    ranks: int  # processes that shared the work


class NegativeRefresher:
    """Mines negatives for the training pairs, holds the current ones, and swaps them into batches.

    ``pairs`` is the (anchor, positive) training dataset; the first mining fixes which rows train.
    """

    def __init__(self, config: TrainConfig, pairs, model):
        self.config, self.model = config, model
        self.anchor_column, self.positive_column = pairs.column_names[:2]
        self.pairs = pairs
        self.num_negatives = config.mining.num_negatives
        self.negatives: dict[tuple[str, str], list[str]] = {}
        self.rounds: list[MiningRound] = []
        self.dataset = None

    def mine(self, step: int = 0) -> MiningRound:
        """Embed with the model as it is now and mine; every rank of a torchrun launch must call this."""
        from embedplug.mining.hard_negatives import mine
        from embedplug.mining.shards import Shards

        started = time.perf_counter()
        options = dict(self.config.mining.options)
        # The first pass may read the embedding cache; later ones embed with changed weights anyway.
        options.setdefault("embedding_cache", step == 0)
        shards = Shards.from_process_group()
        was_training = self.model.training
        state = random.getstate()
        random.seed(f"{self.config.seed}:{step}")  # "random" sampling draws alike on every rank
        try:
            result = mine(
                self.pairs, self.model, anchor_column_name=self.anchor_column,
                positive_column_name=self.positive_column, num_negatives=self.num_negatives,
                output_format="n-tuple", verbose=False, progress=False, shards=shards,
                **options,
            )
        finally:
            random.setstate(state)
            self.model.train(was_training)
        found = self._update(result.dataset)
        mining_round = MiningRound(
            step, time.perf_counter() - started, found, result.report.embedded_texts, shards.world_size if shards else 1
        )
        self.rounds.append(mining_round)
        if self.dataset is None:
            self.dataset = result.dataset.select_columns(
                [self.anchor_column, self.positive_column, *negative_columns(self.num_negatives)]
            )
        return mining_round

    def _update(self, mined) -> int:
        columns = negative_columns(self.num_negatives)
        rows = mined.select_columns([self.anchor_column, self.positive_column, *columns]).to_dict()
        found = 0
        for row, (anchor, positive) in enumerate(zip(rows[self.anchor_column], rows[self.positive_column])):
            self.negatives[(anchor, positive)] = [rows[column][row] for column in columns]
            found += 1
        return found

    def fill(self, row: dict[str, Any]) -> dict[str, Any]:
        """``row`` with the current negatives of its (anchor, positive) pair."""
        negatives = self.negatives.get((row.get(self.anchor_column), row.get(self.positive_column)))
        if negatives is None:
            return row
        return {**row, **dict(zip(negative_columns(self.num_negatives), negatives))}

    def attach(self, trainer) -> None:
        """Swap negatives in the trainer's collator, and refresh them every ``refresh_every`` steps."""
        trainer.data_collator = RefreshedNegativesCollator(trainer.data_collator, self)
        if self.config.mining.refresh_every:
            trainer.add_callback(_refresh_callback(self, self.config.mining.refresh_every))

    def report(self) -> dict[str, Any]:
        return {
            "num_negatives": self.num_negatives,
            "refresh_every": self.config.mining.refresh_every,
            "options": dict(self.config.mining.options),
            "pairs": len(self.pairs),
            "training_rows": 0 if self.dataset is None else len(self.dataset),
            "rounds": [dataclasses.asdict(mining_round) for mining_round in self.rounds],
            "seconds": sum(mining_round.seconds for mining_round in self.rounds),
        }


class RefreshedNegativesCollator:
    """The trainer's data collator with each row's negatives replaced by the refresher's current ones.

    Everything else (``valid_label_columns``, tokenisation, prompts) is the wrapped collator's.
    """

    def __init__(self, collator, refresher: NegativeRefresher):
        self.collator, self.refresher = collator, refresher

    def __getattr__(self, name: str):
        return getattr(self.collator, name)

    def __call__(self, features: list[dict[str, Any]]):
        return self.collator([self.refresher.fill(row) for row in features])


def _refresh_callback(refresher: NegativeRefresher, every: int):
    from transformers import TrainerCallback

    class RefreshNegatives(TrainerCallback):
        """Re-mines after every ``every``-th optimizer step that is not the last."""

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % every == 0 and state.global_step < state.max_steps:
                mining_round = refresher.mine(state.global_step)
                if state.is_world_process_zero:
                    print(
                        f"mining: refreshed negatives at step {state.global_step} in {mining_round.seconds:.1f} s "
                        f"({mining_round.pairs_with_negatives} pairs with {refresher.num_negatives} negatives)"
                    )
            return control

    return RefreshNegatives()


def start_mining(config: TrainConfig, model, pairs) -> NegativeRefresher | None:
    """Mine before training (None without a [mining] section); prints what it did."""
    if not config.mining.num_negatives:
        return None
    _ensure_process_group(config)
    refresher = NegativeRefresher(config, pairs, model)
    mining_round = refresher.mine(0)
    dropped = len(pairs) - len(refresher.dataset)
    print(
        f"mining: {config.mining.num_negatives} hard negatives for {len(refresher.dataset)} of {len(pairs)} pairs in "
        f"{mining_round.seconds:.1f} s"
        + (f" ({dropped} pairs without enough negatives dropped)" if dropped else "")
        + (f"; refreshed every {config.mining.refresh_every} steps" if config.mining.refresh_every else "")
    )
    if len(refresher.dataset) == 0:
        raise ConfigError(
            f"{config.where('mining')}: no training pair got {config.mining.num_negatives} negatives; loosen "
            "mining.options (range_max, the margins, max_score/min_score) or lower mining.num_negatives"
        )
    return refresher


def _ensure_process_group(config: TrainConfig) -> None:
    """Under torchrun, join the process group the trainer will use before mining collectively."""
    from embedplug.train.launch import world_size

    if world_size() < 2:
        return
    from embedplug.train.assemble import build_sampler, training_arguments

    training_arguments(config, build_sampler(config), True, None).device  # accelerate forms the group here
