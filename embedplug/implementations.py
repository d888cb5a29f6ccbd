"""Which implementation runs a registered loss class, as ``embedplug plugins`` and ``list_plugins()`` report it.

A loss class may say so itself with a string class attribute ``embedplug_implementation`` (embedplug's
drop-ins do; a third-party plugin may). Otherwise the class's module decides: sentence-transformers'
own classes are ``"sentence-transformers"``, anything else is named after its top-level package.
"""

from __future__ import annotations

from embedplug.hookspecs import IMPLEMENTATION

FUSED = "embedplug fused kernel"
TORCH = "embedplug torch"
SENTENCE_TRANSFORMERS = "sentence-transformers"

IMPLEMENTATION_ATTRIBUTE = IMPLEMENTATION  # declared on the class; see embedplug.hookspecs


REFERENCE = "embedplug reference (pure torch)"
OPS_ATTRIBUTE = "embedplug_ops"


def implementation_of(loss_class: type) -> str:
    """``"embedplug fused kernel"``, ``"embedplug reference (pure torch)"``, ``"embedplug torch"``,
    ``"sentence-transformers"`` or ``"plugin <package>"``.

    A class that declares the embedplug ops it runs (``embedplug_ops``) is "fused" only when each of
    them runs its kernel on the CPU here (the extension loaded, nothing forcing the reference).
    """
    declared = getattr(loss_class, IMPLEMENTATION_ATTRIBUTE, None)
    if isinstance(declared, str) and declared:
        return declared
    op_names = getattr(loss_class, OPS_ATTRIBUTE, None)
    if op_names:
        from embedplug.ops import backend_of

        return FUSED if backend_of(tuple(op_names), "cpu")["implementation"] == "fused" else REFERENCE
    package = (getattr(loss_class, "__module__", None) or "").split(".")[0]
    if package == "sentence_transformers":
        return SENTENCE_TRANSFORMERS
    if package == "embedplug":
        return TORCH  # an embedplug class that does not declare a kernel runs on plain torch
    return f"plugin {package or '(unknown module)'}"
