"""sentence-transformers' own losses that embedplug does not replace, registered as an ordinary plugin.

Exposed through embedplug's second entry point (``sentence-transformers``), so ``embedplug.get_loss``
and ``embedplug train`` configs can name every loss sentence-transformers exports (CoSENTLoss,
MatryoshkaLoss, ...). The registry loads it right after the built-in plugin. It declares (see
:mod:`embedplug.hookspecs`) that it needs sentence-transformers, so without it it registers nothing, and
that its classes are sentence-transformers', so it is reported as that distribution (uninstalling it
removes them). Names embedplug registers itself (its drop-ins, listed in
:data:`embedplug.losses.BUILTIN_LOSSES`) are skipped, so embedplug's class wins without a conflict.
"""

from __future__ import annotations

import importlib

from embedplug.hookspecs import hookimpl

# Read by the registry before the hooks run (embedplug.hookspecs.REQUIRES and ATTRIBUTION). This module
# imports sentence-transformers only inside its functions, so it loads without it.
EMBEDPLUG_REQUIRES = ("sentence_transformers",)
EMBEDPLUG_ATTRIBUTION = "sentence-transformers"

# Where sentence-transformers 6.x exports its SentenceTransformer losses (``sentence_transformers.losses``
# is an alias of the first); read at run time, so a new sentence-transformers loss is registered as well.
_LOSS_MODULES = ("sentence_transformers.sentence_transformer.losses", "sentence_transformers.losses")


def exported_loss_classes() -> list[type]:
    """Every ``torch.nn.Module`` subclass in sentence-transformers' ``losses.__all__``, in that order."""
    import torch

    module = None
    for name in _LOSS_MODULES:
        try:
            module = importlib.import_module(name)
            break
        except ImportError:
            continue
    if module is None:
        return []
    names = getattr(module, "__all__", None) or [name for name in dir(module) if not name.startswith("_")]
    exported = [getattr(module, name, None) for name in names]
    return [obj for obj in exported if isinstance(obj, type) and issubclass(obj, torch.nn.Module)]


def replaced_names() -> set[str]:
    """Names embedplug's built-in plugin registers: its class wins over sentence-transformers' of that name."""
    from embedplug.losses import BUILTIN_LOSSES

    return {loss_class.__name__ for loss_class in BUILTIN_LOSSES}


def loss_classes_to_register() -> list[type]:
    """sentence-transformers' exported loss classes that embedplug does not replace."""
    replaced = replaced_names()
    return [loss_class for loss_class in exported_loss_classes() if loss_class.__name__ not in replaced]


@hookimpl
def embedplug_register_losses(register):
    """Register each class of :func:`loss_classes_to_register` under its class name."""
    for loss_class in loss_classes_to_register():
        register(loss_class)
