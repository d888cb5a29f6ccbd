"""embedplug: fused, plugin-based losses and batch samplers for fine-tuning embedding models.

``import embedplug`` is cheap: plugins are discovered on the first lookup, and the compiled extension
is loaded (or its absence reported) by :mod:`embedplug._extension`.
"""

from embedplug import ops as _ops  # noqa: F401  (registers fake kernels and autograd for the loaded ops)
from embedplug.ops import backend_info
from embedplug.hookspecs import hookimpl
from embedplug.registry import get_loss, get_sampler, list_plugins

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "backend_info",
    "get_loss",
    "get_sampler",
    "hookimpl",
    "list_plugins",
]
