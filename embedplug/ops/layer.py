"""The generic op layer: every op's registration, boundary checks, fused-or-reference dispatch and
backend report, read from its :class:`~embedplug.ops.spec.OpSpec`.

At import it needs only :mod:`embedplug._extension` (which loads ``_C`` and nothing else) and
:mod:`embedplug.ops.spec`, so no module of ``embedplug`` imports back into it.
"""

from __future__ import annotations

import contextlib
import os

import torch

from embedplug import _extension
from embedplug.ops.spec import Embeddings, Labels, OpSpec

SPECS: dict[str, OpSpec] = {}

_FORCE_VARIABLE = "EMBEDPLUG_FORCE_REFERENCE"
# The one switch that makes every op run its reference (a module constant, so that torch.compile
# guards on it instead of querying the dispatcher).
_force_reference = os.environ.get(_FORCE_VARIABLE, "0").lower() in {"1", "true", "yes", "on"}


@contextlib.contextmanager
def force_reference():
    """Within the block, every op runs its pure-torch reference (the oracle of the fused kernels)."""
    global _force_reference
    previous, _force_reference = _force_reference, True
    try:
        yield
    finally:
        _force_reference = previous


def declare(spec: OpSpec) -> OpSpec:
    """Adds ``spec`` to the table and, when ``_C`` loaded, registers its fake kernel(s) and autograd."""
    if spec.name in SPECS:
        raise RuntimeError(f"embedplug op {spec.name!r} is declared twice")
    SPECS[spec.name] = spec
    fused = frozenset(d for d in spec.fused_devices if _extension.has_kernel(spec.name, d))
    object.__setattr__(spec, "fused_devices", tuple(sorted(fused)))
    # Registering a fake for a schema that _C did not define would fail at import (torchvision's lesson).
    if _extension.STATUS.loaded and _extension.has_schema(spec.name):
        _register(spec)
    return spec


def _register(spec: OpSpec) -> None:
    torch.library.register_fake(f"embedplug::{spec.name}")(spec.fake)
    autograd = spec.autograd
    if autograd is None:
        return
    if autograd.backward_op is not None:
        torch.library.register_fake(f"embedplug::{autograd.backward_op}")(autograd.backward_fake)
    backward = autograd.backward
    if autograd.double_backward != "supported":
        backward = _first_order_only(spec.name, backward)
    torch.library.register_autograd(f"embedplug::{spec.name}", backward, setup_context=autograd.setup_context)


def _first_order_only(name: str, backward):
    def checked_backward(ctx, *grads):
        if torch.is_grad_enabled():
            # The kernel's backward is not differentiable: a second derivative would silently be 0.
            raise RuntimeError(
                f"embedplug::{name} does not support double backward (create_graph=True); run the pure-torch "
                f"reference (embedplug.ops.force_reference() or {_FORCE_VARIABLE}=1) for higher-order gradients"
            )
        return backward(ctx, *grads)

    return checked_backward


def check_arguments(spec: OpSpec, args: tuple) -> tuple:
    """The op's public arguments checked and normalised, or a TypeError/ValueError naming the cause.

    One boundary for both backends: shapes, dtypes (half precision becomes float32; every floating
    tensor takes the first one's dtype), one device for every tensor (the meta device refused),
    labels as int64 [N], finite hyper-parameters.
    """
    caller = spec.caller
    if len(args) != len(spec.args):
        raise TypeError(f"{caller} takes {len(spec.args)} arguments ({', '.join(a.name for a in spec.args)}), got {len(args)}")
    checked = [arg.check(value, caller) for arg, value in zip(spec.args, args)]
    named = {arg.name: value for arg, value in zip(spec.args, checked)}
    tensors = {name: value for name, value in named.items() if isinstance(value, torch.Tensor)}
    _check_devices(caller, tensors)
    dtype = None
    for index, (arg, value) in enumerate(zip(spec.args, checked)):
        if isinstance(arg, Embeddings) and value is not None:
            if arg.same_rows_as is not None and value.shape[0] != named[arg.same_rows_as].shape[0]:
                raise ValueError(
                    f"{caller}: {arg.name} must have one row per row of {arg.same_rows_as} "
                    f"({named[arg.same_rows_as].shape[0]}), got shape {tuple(value.shape)}"
                )
            if arg.same_dim_as is not None and value.shape[1] != named[arg.same_dim_as].shape[1]:
                raise ValueError(
                    f"{caller}: {arg.name} and {arg.same_dim_as} must have the same number of features, got "
                    f"{value.shape[1]} and {named[arg.same_dim_as].shape[1]}"
                )
            if dtype is None:
                dtype = torch.float32 if value.dtype in (torch.float16, torch.bfloat16) else value.dtype
            value = value.to(dtype)
            # A non-differentiable op gets no autograd formula: its inputs must not carry a graph.
            checked[index] = value.detach() if spec.autograd is None else value
        elif isinstance(arg, Labels):
            rows = named[arg.rows_of].shape[0]
            if value.shape[0] != rows:
                raise ValueError(f"{caller}: expects {rows} labels (one per row of {arg.rows_of}), got {value.shape[0]}")
    if spec.validate is not None:
        spec.validate(tuple(checked), caller)
    return tuple(checked)


def _check_devices(caller: str, tensors: dict) -> None:
    first_name, first_device = None, None
    for name, tensor in tensors.items():
        if first_device is None:
            first_name, first_device = name, tensor.device
        elif tensor.device != first_device:
            raise ValueError(
                f"{caller}: {name} is on {tensor.device} but {first_name} is on {first_device}; move every input to one device"
            )
    if first_device is not None and first_device.type == "meta":
        raise ValueError(
            f"{caller}: the inputs are on the meta device, which has no data to compute on; pass real tensors "
            "(torch.compile and FakeTensor mode trace the op without running it)"
        )


def runs_fused(spec: OpSpec, device_type: str) -> bool:
    """Whether ``spec``'s op runs its fused kernel for inputs on ``device_type`` (the switch included)."""
    return not _force_reference and device_type in spec.fused_devices


def call(spec: OpSpec, *args):
    """Checks ``args`` and runs the op: the fused kernel where it has one, else the reference.

    Returns the op's public outputs (a tuple).
    """
    checked = check_arguments(spec, args)
    device = next(value.device for value in checked if isinstance(value, torch.Tensor))
    if not runs_fused(spec, device.type):
        outputs = spec.reference(*checked)
        return (outputs,) if isinstance(outputs, torch.Tensor) else tuple(outputs)
    schema_args = list(checked)
    if spec.compute_grad_at is not None:
        differentiable = [
            value for arg, value in zip(spec.args, checked)
            if isinstance(arg, Embeddings) and arg.differentiable and value is not None
        ]
        compute_grad = torch.is_grad_enabled() and any(value.requires_grad for value in differentiable)
        schema_args.insert(spec.compute_grad_at, compute_grad)
    outputs = getattr(torch.ops.embedplug, spec.name)(*schema_args)
    if spec.reference_when is not None and spec.reference_when(checked, tuple(outputs)):
        outputs = spec.reference(*checked)
        return (outputs,) if isinstance(outputs, torch.Tensor) else tuple(outputs)
    return tuple(outputs[: spec.outputs]) if isinstance(outputs, (tuple, list)) else (outputs,)


def backend(spec: OpSpec, device_type: str) -> dict:
    """``{"implementation": "fused"|"reference", "reason": ...}`` of ``spec``'s op on ``device_type``."""
    if runs_fused(spec, device_type):
        return {"implementation": "fused", "reason": f"embedplug._C kernel for {device_type.upper()}"}
    if _force_reference:
        reason = f"forced by embedplug.ops.force_reference() or {_FORCE_VARIABLE}=1"
    elif not _extension.STATUS.loaded:
        reason = f"extension not loaded ({_extension.STATUS.reason})"
    elif device_type == "cuda" and not _extension.STATUS.build_info.get("cuda_kernels", False):
        reason = "the extension was built without CUDA kernels (CPU-only torch or no nvcc at build time)"
    else:
        reason = f"the extension has no {device_type.upper()} kernel for this op"
    return {"implementation": "reference", "reason": f"pure-torch reference: {reason}"}


def backend_of(op_names, device_type: str) -> dict:
    """The implementation a loss running ``op_names`` gets on ``device_type``: "fused" only when every
    one of its ops runs its kernel there; otherwise the first op's reason for the reference."""
    if not op_names:
        return {"implementation": "reference", "reason": "pure torch: this loss runs no embedplug op"}
    reports = [backend(SPECS[name], device_type) for name in op_names]
    for report in reports:
        if report["implementation"] != "fused":
            return report
    return reports[0]


def backend_info() -> dict:
    """Which implementation each op runs on CPU and CUDA, and why.

    Returns a JSON-able dict ``{"extension": {...}, "sentence_transformers": {...}, "torch": str,
    "cuda_available": bool, "ops": {op: {"cpu": {...}, "cuda": {...}}}}``; ``sentence_transformers``
    says which release's semantics the drop-in losses follow (:mod:`embedplug.st_version`).
    """
    from embedplug import st_version

    status = _extension.STATUS
    return {
        "extension": {"loaded": status.loaded, "reason": status.reason, **status.build_info},
        "sentence_transformers": st_version.report(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "ops": {name: {device: backend(spec, device) for device in ("cpu", "cuda")} for name, spec in SPECS.items()},
    }
