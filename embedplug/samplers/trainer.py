"""Plugging a registered sampler into sentence-transformers' trainer."""

from __future__ import annotations

import inspect
from typing import Any

import torch

# The trainer passes these itself (from its arguments and data collator); an option cannot override them.
_TRAINER_SUPPLIED = ("batch_size", "drop_last", "valid_label_columns", "generator", "seed")


class TrainerBatchSamplerFactory:
    """The callable that ``SentenceTransformerTrainingArguments(batch_sampler=...)`` accepts.

    The trainer calls it as ``factory(dataset, batch_size=..., drop_last=..., valid_label_columns=...,
    generator=..., seed=args.seed)`` for the training (and evaluation) dataset; it returns
    ``sampler_class(dataset, ..., **options)``. It is a plain object, not a closure, so the training arguments
    that hold it still pickle into every checkpoint's ``training_args.bin``.
    """

    def __init__(self, sampler_class: type, options: dict[str, Any]) -> None:
        self.sampler_class = sampler_class
        self.options = dict(options)

    def __call__(
        self,
        dataset: Any,
        batch_size: int,
        drop_last: bool,
        valid_label_columns: list[str] | None = None,
        generator: torch.Generator | None = None,
        seed: int = 0,
    ) -> Any:
        return self.sampler_class(
            dataset,
            batch_size=batch_size,
            drop_last=drop_last,
            valid_label_columns=valid_label_columns,
            generator=generator,
            seed=seed,
            **self.options,
        )

    def __repr__(self) -> str:
        options = ", ".join(f"{key}={value!r}" for key, value in self.options.items())
        return f"for_trainer({self.sampler_class.__name__!r}{', ' if options else ''}{options})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, TrainerBatchSamplerFactory)
            and other.sampler_class is self.sampler_class
            and other.options == self.options
        )

    __hash__ = None  # type: ignore[assignment]  # mutable options: equal by value, not hashable


def for_trainer(name: str | type, **options: Any) -> TrainerBatchSamplerFactory:
    """Return the ``batch_sampler`` to give ``SentenceTransformerTrainingArguments``.

    Args:
        name: a sampler name from the registry (``embedplug.get_sampler(name)``: built-in ones such as
            ``"PKBatchSampler"`` and those of installed plugins), or a sampler class.
        **options: the sampler's own options, e.g. ``k=4`` for ``PKBatchSampler``. The trainer supplies
            ``batch_size`` (``per_device_train_batch_size``), ``drop_last``, ``valid_label_columns`` and ``seed``.

    Raises:
        ValueError: an option the trainer supplies itself.
        TypeError: ``name`` is neither a string nor a class, or an option the sampler does not accept.
        KeyError: an unknown sampler name (``embedplug.registry.UnknownNameError``, from ``embedplug.get_sampler``).
    """
    if isinstance(name, str):
        import embedplug  # deferred: the registry imports this package to register the built-in samplers

        sampler_class = embedplug.get_sampler(name)
    elif inspect.isclass(name):
        sampler_class = name
    else:
        raise TypeError(f"for_trainer() takes a sampler name or class, got {type(name).__name__}.")

    supplied = sorted(set(options) & set(_TRAINER_SUPPLIED))
    if supplied:
        raise ValueError(
            f"for_trainer(): {', '.join(supplied)} cannot be given as options, the trainer passes them "
            "(set per_device_train_batch_size / dataloader_drop_last / seed in the training arguments)."
        )
    # Fail now, with the sampler's name, rather than deep inside trainer.train().
    try:
        inspect.signature(sampler_class).bind(
            None, batch_size=1, drop_last=False, valid_label_columns=None, generator=None, seed=0, **options
        )
    except TypeError as error:
        raise TypeError(f"{sampler_class.__name__} does not accept the options {sorted(options)}: {error}") from None
    return TrainerBatchSamplerFactory(sampler_class, options)
