"""Loads the compiled extension ``embedplug._C`` once and answers what it holds.

The extension registers its ops with the dispatcher when it is imported. If it is missing or
fails to load, embedplug keeps working on the pure-torch reference and says why, once. Which
implementation each op runs is reported by :func:`embedplug.ops.backend_info`.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch

_DISABLE_VARIABLE = "EMBEDPLUG_DISABLE_EXT"
_BUILD_HINT = (
    "build it with `pip install --no-build-isolation .` (or `make ext`) in an environment that "
    "already has torch and a C++ compiler"
)


@dataclass(frozen=True)
class ExtensionStatus:
    loaded: bool
    reason: str
    build_info: dict


def _load() -> ExtensionStatus:
    if os.environ.get(_DISABLE_VARIABLE, "0").lower() in {"1", "true", "yes", "on"}:
        return ExtensionStatus(False, f"disabled by {_DISABLE_VARIABLE}=1", {})
    try:
        from embedplug import _C  # noqa: F401  (importing registers the ops)
    except ImportError as error:
        warnings.warn(
            f"embedplug: the compiled extension could not be loaded ({error}); every op falls back to "
            f"the pure-torch reference (same numbers, N x N memory). To get the fused kernels, {_BUILD_HINT}.",
            RuntimeWarning,
            stacklevel=3,
        )
        return ExtensionStatus(False, f"import failed: {error}", {})
    return ExtensionStatus(True, "loaded", dict(_C.build_info()))


STATUS = _load()


def has_kernel(op_name: str, device_type: str) -> bool:
    """Whether the loaded extension has a kernel for ``embedplug::op_name`` on this device type."""
    if not STATUS.loaded:
        return False
    dispatch_key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    if dispatch_key is None:
        return False
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"embedplug::{op_name}", dispatch_key)
    except RuntimeError:  # an _C built before the op existed has no schema for it: the reference runs
        return False


def has_schema(op_name: str) -> bool:
    """Whether the loaded extension defines the schema ``embedplug::op_name``."""
    if not STATUS.loaded:
        return False
    try:
        torch._C._dispatch_has_kernel_for_dispatch_key(f"embedplug::{op_name}", "CPU")
    except RuntimeError:
        return False
    return True
