"""Hook specifications: the whole contract between embedplug and its plugins.

A plugin is a module (or object) exposed under the ``embedplug`` entry-point group whose functions are
decorated with :data:`hookimpl` and named after the hooks below. Hooks receive a ``register`` callback
instead of touching global state, so embedplug can attribute, validate and refuse every registration.
embedplug's own losses and samplers are registered through these same hooks
(:mod:`embedplug._builtin_plugin`).

Every hook here must have a docstring and a section in docs/writing-a-plugin.md; a test enforces it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import pluggy

PROJECT_NAME = "embedplug"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


class RegisterCallback(Protocol):
    """The ``register`` callback a hook receives (documented here for type checkers and readers)."""

    def __call__(self, obj: type, name: str | None = None, aliases: Iterable[str] = ()) -> None:
        """Register the class ``obj`` under ``name`` (default ``obj.__name__``) and each of ``aliases``."""


@hookspec
def embedplug_register_losses(register: RegisterCallback) -> None:
    """Register the loss classes this plugin provides.

    Parameters:
        register: call ``register(loss_class, name=None, aliases=())`` once per loss. ``loss_class`` must be
            a subclass of ``torch.nn.Module`` following the sentence-transformers loss contract
            (``__init__(self, model, ...)`` storing ``self.model``; ``forward(sentence_features, labels)``).
            ``name`` defaults to ``loss_class.__name__``; ``aliases`` are extra names for the same class.
            Names and aliases share one namespace for losses; a name that is already taken (by embedplug
            or an earlier plugin) is refused and reported, never shadowed.

    Returns:
        None. The return value is ignored; only calls to ``register`` count. If the hook raises, none of
        the losses it registered are kept, and the error is reported against this plugin.
    """


@hookspec
def embedplug_register_samplers(register: RegisterCallback) -> None:
    """Register the batch-sampler classes this plugin provides.

    Parameters:
        register: call ``register(sampler_class, name=None, aliases=())`` once per sampler.
            ``sampler_class`` must be a class defining ``__iter__`` (yielding lists of dataset indices)
            and ``__len__`` (the number of batches), constructed with sentence-transformers' batch-sampler
            signature ``(dataset, batch_size, drop_last, valid_label_columns=None, generator=None, seed=0)``.
            Naming rules are the same as for losses, in a separate namespace for samplers.

    Returns:
        None. The return value is ignored; only calls to ``register`` count. If the hook raises, none of
        the samplers it registered are kept, and the error is reported against this plugin.
    """
