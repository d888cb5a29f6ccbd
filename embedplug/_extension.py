"""Loads the compiled extension ``embedplug._C`` once and reports which implementation each op uses.

The extension registers its ops with the dispatcher when it is imported. If it is missing or
fails to load, embedplug keeps working on the pure-torch reference and says why, once.
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


# Ops whose availability backend_info() reports; op modules append themselves on import.
REPORTED_OPS: list[str] = []


def _op_backend(op_name: str, device_type: str) -> dict:
    if has_kernel(op_name, device_type):
        return {"implementation": "fused", "reason": f"embedplug._C kernel for {device_type.upper()}"}
    if not STATUS.loaded:
        reason = f"extension not loaded ({STATUS.reason})"
    else:
        reason = f"extension has no {device_type.upper()} kernel for this op"
    return {"implementation": "reference", "reason": f"pure-torch reference: {reason}"}


def backend_info() -> dict:
    """Which implementation each op runs on CPU and CUDA, and why.

    Returns a JSON-able dict ``{"extension": {...}, "ops": {op: {"cpu": {...}, "cuda": {...}}},
    "sentence_transformers": {"follows": ..., "installed": ..., "exact": ...}}``, the last saying
    which sentence-transformers release's semantics the drop-in losses follow (:mod:`embedplug.st_version`).
    """
    import embedplug.ops  # noqa: F401  (populates REPORTED_OPS)
    from embedplug import st_version

    return {
        "extension": {"loaded": STATUS.loaded, "reason": STATUS.reason, **STATUS.build_info},
        "sentence_transformers": st_version.report(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "ops": {op: {device: _op_backend(op, device) for device in ("cpu", "cuda")} for op in REPORTED_OPS},
    }
