"""Hook specifications: the whole contract between embedplug and its plugins.

A plugin is a module (or object) exposed under the ``embedplug`` entry-point group whose functions are
decorated with :data:`hookimpl` and named after the hooks below. Hooks receive a ``register`` callback
instead of touching global state, so embedplug can attribute, validate and refuse every registration.
embedplug's own losses and samplers are registered through these same hooks
(:mod:`embedplug._builtin_plugin`).

Every hook here must have a docstring and a section in docs/writing-a-plugin.md; a test enforces it.

Besides the hooks, a plugin and the classes it registers may declare a few facts as attributes, which
embedplug reads wherever it needs them (the names are the constants below):

On the plugin module (or object), read when the plugin is loaded:

``EMBEDPLUG_REQUIRES`` (:data:`REQUIRES`)
    Import names (a string or a tuple of strings) the plugin's classes come from. When one of them
    cannot be imported, the plugin registers nothing and is not listed (an optional plugin, such as
    embedplug's own plugin of sentence-transformers' losses). Import the required library inside the
    hooks, not at the top of the plugin module, so that loading the plugin to read this does not fail.
``EMBEDPLUG_ATTRIBUTION`` (:data:`ATTRIBUTION`)
    The distribution whose classes the plugin registers, when it is not the plugin's own: the
    plugin is then reported (``embedplug plugins``, conflict messages) as that distribution, with its
    installed version.

On a registered loss class:

``embedplug_label_aware = True`` (:data:`LABEL_AWARE`)
    The loss trains on single texts with class labels: one text column and a label column, with
    batches in which classes repeat (the batch triplet losses, SupCon, ...). ``embedplug train`` then
    requires ``data.label_column`` (or a labelled task) and recommends a class-balanced sampler; a loss
    without it trains on two or more text columns (pairs, triplets, optionally with a score label).
``embedplug_ops = ("op_name", ...)``
    The embedplug ops the loss runs (schema names, :data:`embedplug.ops.SPECS`): ``embedplug plugins``
    and ``backend_info()`` then report "fused" only when every one of them runs its kernel.
``embedplug_implementation = "..."`` (:data:`IMPLEMENTATION`)
    Which implementation runs the loss, as ``embedplug plugins`` reports it (default: derived from
    ``embedplug_ops``, else from the class's package, see :mod:`embedplug.implementations`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import pluggy

PROJECT_NAME = "embedplug"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

# The declarations described above, by attribute name.
REQUIRES = "EMBEDPLUG_REQUIRES"
ATTRIBUTION = "EMBEDPLUG_ATTRIBUTION"
LABEL_AWARE = "embedplug_label_aware"
IMPLEMENTATION = "embedplug_implementation"


def is_label_aware(loss_class: type) -> bool:
    """Whether ``loss_class`` declares ``embedplug_label_aware = True`` (see :data:`LABEL_AWARE`)."""
    return getattr(loss_class, LABEL_AWARE, False) is True


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
            A loss that trains on single texts with class labels declares ``embedplug_label_aware = True``
            (see the module docstring).
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
