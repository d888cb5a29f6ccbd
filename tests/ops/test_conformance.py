"""The conformance table: every op of csrc/embedplug.cpp, built from its OpSpec, against its own reference.

Rows are generated from ``embedplug.ops.SPECS``: an op in the schema without a spec fails here, and a
spec's samples (embedplug/ops/samples.py regimes: low temperature, large scale and gamma, exact and
scaled duplicate rows, well-separated classes, one class, all distinct, N = 1, a ragged last tile,
non-contiguous input) all run. Checks per row: fused == reference in float64 (values, indices,
gradients) and in float32 (values); the float32 reduced loss against the float64 reference where
the op is continuous (this is what catches a count decided by a float32 value that rounded to 0);
gradcheck; opcheck; the double-backward policy; boundary errors; torch.compile.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from _support import requires_extension

from embedplug import _extension
from embedplug.ops import SPECS, layer
from embedplug.ops.spec import Embeddings, Labels, Real

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "csrc" / "embedplug.cpp"
DTYPES = {"float64": torch.float64, "float32": torch.float32}
# Gradcheck needs a smooth point: ties and duplicate rows sit on the kinks of max/relu selections.
SMOOTH_REGIMES = ("random pairs", "random")


def is_smooth(sample) -> bool:
    return sample.regime.split(",")[0] in SMOOTH_REGIMES


def schema_ops() -> list[str]:
    return re.findall(r'm\.def\(\s*"([A-Za-z_0-9]+)\(', SCHEMA_FILE.read_text())


def rows(dtype_name: str):
    for name, spec in SPECS.items():
        for index, sample in enumerate(spec.samples(DTYPES[dtype_name])):
            yield pytest.param(spec, sample, id=f"{name}-{dtype_name}-{index}-{sample.regime}")


def run(spec, args, *, reference: bool):
    with (layer.force_reference() if reference else _nothing()):
        return layer.call(spec, *args)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def differentiable_positions(spec, args) -> list[int]:
    return [
        i for i, (arg, value) in enumerate(zip(spec.args, args))
        if isinstance(arg, Embeddings) and arg.differentiable and value is not None
    ]


def with_leaves(spec, args):
    """``args`` with fresh leaves requiring grad at the differentiable positions, and those leaves."""
    args = list(args)
    leaves = []
    for i in differentiable_positions(spec, args):
        args[i] = args[i].detach().clone().requires_grad_()
        leaves.append(args[i])
    return tuple(args), leaves


def reduced_and_grads(spec, args, *, reference: bool):
    args, leaves = with_leaves(spec, args)
    outputs = run(spec, args, reference=reference)
    loss = spec.reduce(args, outputs)
    if spec.autograd is None or not leaves:
        return outputs, loss.detach(), []
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return outputs, loss.detach(), [torch.zeros_like(leaf) if g is None else g for g, leaf in zip(grads, leaves)]


def assert_outputs_equal(fused, reference, *, rtol, atol, compare_indices: bool):
    assert len(fused) == len(reference)
    for position, (a, b) in enumerate(zip(fused, reference)):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=rtol, atol=atol, equal_nan=True, msg=lambda m: f"output {position}: {m}")
        elif compare_indices:
            assert torch.equal(a, b), f"output {position} (integer) differs"


# ---------------------------------------------------------------------------------------------
# Every op enters the table.


def test_every_schema_op_has_a_spec_and_every_backward_op_an_owner():
    declared = schema_ops()
    forward = [name for name in declared if not name.startswith("_")]
    backward = [name for name in declared if name.startswith("_")]
    assert sorted(forward) == sorted(SPECS), "every forward op in csrc/embedplug.cpp needs an OpSpec (and no spec without a schema)"
    owners = {spec.autograd.backward_op for spec in SPECS.values() if spec.autograd and spec.autograd.backward_op}
    assert sorted(backward) == sorted(owners), "every underscored backward op belongs to one spec's Autograd"


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_spec_has_samples_in_every_regime_it_claims(name):
    spec = SPECS[name]
    regimes = {sample.regime for sample in spec.samples(torch.float64)}
    assert any("duplicate" in regime for regime in regimes) and any("N = 1" in regime for regime in regimes)
    assert any("ragged" in regime for regime in regimes) and any("non-contiguous" in regime for regime in regimes)


# ---------------------------------------------------------------------------------------------
# Fused against reference.


@requires_extension
@pytest.mark.parametrize(("spec", "sample"), list(rows("float64")))
def test_float64_fused_equals_reference(spec, sample):
    fused, fused_loss, fused_grads = reduced_and_grads(spec, sample.args, reference=False)
    reference, reference_loss, reference_grads = reduced_and_grads(spec, sample.args, reference=True)
    atol = sample.float64_atol
    # Duplicate rows tie exactly in exact arithmetic: which one a selection picks is a rounding.
    assert_outputs_equal(fused, reference, rtol=1e-9, atol=atol, compare_indices="duplicate" not in sample.regime)
    torch.testing.assert_close(fused_loss, reference_loss, rtol=1e-9, atol=atol, equal_nan=True)
    for fused_grad, reference_grad in zip(fused_grads, reference_grads):
        torch.testing.assert_close(fused_grad, reference_grad, rtol=1e-7, atol=1e-9, equal_nan=True)


@requires_extension
@pytest.mark.parametrize(("spec", "sample"), list(rows("float32")))
def test_float32_fused_equals_reference(spec, sample):
    fused = run(spec, sample.args, reference=False)
    reference = run(spec, sample.args, reference=True)
    # Values only: BLAS rounding may flip a near-tie selection, which moves an index or a gradient row;
    # where a selection is discontinuous ("strictly above"), a flip moves the value too.
    if not sample.float32_matches_float64:
        pytest.skip("a rounding may flip this op's selection; its float64 row and the float32 loss test cover it")
    assert_outputs_equal(fused, reference, rtol=2e-4, atol=sample.float32_atol, compare_indices=False)
    fused_loss, reference_loss = spec.reduce(sample.args, fused), spec.reduce(sample.args, reference)
    torch.testing.assert_close(fused_loss, reference_loss, rtol=1e-4, atol=sample.float32_atol, equal_nan=True)


@pytest.mark.parametrize(("spec", "sample"), [row for row in rows("float32") if row.values[1].float32_matches_float64])
@pytest.mark.parametrize("path", ["fused", "reference"])
def test_float32_reduced_loss_equals_the_float64_value(spec, sample, path):
    """A reducer's count or mask decided on a float32 value that rounded (a tiny positive loss to 0)
    changes the loss by a factor, not by a rounding: compare with the exact (float64) value."""
    if path == "fused" and not _extension.STATUS.loaded:
        pytest.skip("needs the extension")
    args64 = tuple(a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in sample.args)
    exact = spec.reduce(args64, run(spec, args64, reference=True))
    loss = spec.reduce(sample.args, run(spec, sample.args, reference=path == "reference"))
    scale = max(1.0, float(exact.abs())) if torch.isfinite(exact) else 1.0
    torch.testing.assert_close(loss.double(), exact, rtol=1e-4, atol=max(1e-4 * scale, sample.float32_atol), equal_nan=True)


# ---------------------------------------------------------------------------------------------
# Autograd, registration, compile.


def _smooth_samples():
    for name, spec in SPECS.items():
        if spec.autograd is None:
            continue
        for sample in spec.samples(torch.float64):
            if is_smooth(sample):
                yield pytest.param(spec, sample, id=f"{name}-{sample.regime}")


@requires_extension
@pytest.mark.parametrize(("spec", "sample"), list(_smooth_samples()))
def test_gradcheck(spec, sample):
    if not (spec.gradcheck and sample.gradcheck):
        pytest.skip(f"{spec.name}'s gradient holds detached factors constant here, as its peer's does")
    positions = differentiable_positions(spec, sample.args)

    def function(*leaves):
        args = list(sample.args)
        for position, leaf in zip(positions, leaves):
            args[position] = leaf
        return spec.reduce(tuple(args), layer.call(spec, *args))

    leaves = [sample.args[p].detach().clone().requires_grad_() for p in positions]
    assert torch.autograd.gradcheck(function, leaves, eps=1e-6, atol=1e-5, rtol=1e-4)


def _first_sample(spec, dtype=torch.float64):
    return next(iter(spec.samples(dtype)))


@requires_extension
@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(name, requires_grad):
    spec = SPECS[name]
    args = list(layer.check_arguments(spec, _first_sample(spec).args))
    if requires_grad:
        if spec.autograd is None:
            pytest.skip("not differentiable")
        args, _ = with_leaves(spec, args)
        args = list(args)
    if spec.compute_grad_at is not None:
        args.insert(spec.compute_grad_at, requires_grad)
    torch.library.opcheck(getattr(torch.ops.embedplug, name).default, tuple(args))


@requires_extension
@pytest.mark.parametrize("name", sorted(name for name, spec in SPECS.items() if spec.autograd is not None))
def test_double_backward_policy(name):
    spec = SPECS[name]
    sample = next(s for s in spec.samples(torch.float64) if is_smooth(s))

    def second_derivative(reference: bool):
        args, leaves = with_leaves(spec, sample.args)
        loss = spec.reduce(args, run(spec, args, reference=reference))
        grads = torch.autograd.grad(loss, leaves, create_graph=True)
        direction = sum((g * torch.linspace(-1, 1, g.numel(), dtype=g.dtype).reshape(g.shape)).sum() for g in grads)
        return torch.autograd.grad(direction, leaves, allow_unused=True)

    if spec.autograd.double_backward == "supported":
        for fused, reference in zip(second_derivative(False), second_derivative(True)):
            torch.testing.assert_close(fused, reference, rtol=1e-7, atol=1e-9)
    else:
        with pytest.raises(RuntimeError, match=f"embedplug::{name} does not support double backward"):
            second_derivative(False)


@requires_extension
@pytest.mark.parametrize("name", sorted(SPECS))
def test_torch_compile_matches_eager(name):
    spec = SPECS[name]
    sample = _first_sample(spec)
    torch._dynamo.reset()
    compiled = torch.compile(lambda *args: spec.reduce(args, layer.call(spec, *args)), backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(*sample.args), spec.reduce(sample.args, layer.call(spec, *sample.args)))


# ---------------------------------------------------------------------------------------------
# One boundary, both backends.


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("path", ["fused", "reference"])
def test_boundary_errors(name, path, monkeypatch):
    spec = SPECS[name]
    monkeypatch.setattr(layer, "_force_reference", path == "reference")
    args = list(_first_sample(spec).args)

    def call_with(position, value):
        changed = list(args)
        changed[position] = value
        return layer.call(spec, *changed)

    first_tensor = next(i for i, a in enumerate(spec.args) if isinstance(a, Embeddings))
    with pytest.raises(ValueError, match="meta device"):
        layer.call(spec, *[a.to("meta") if isinstance(a, torch.Tensor) else a for a in args])
    with pytest.raises(TypeError, match=f"{spec.args[first_tensor].name} must be a floating-point tensor"):
        call_with(first_tensor, args[first_tensor].long())
    with pytest.raises(ValueError, match=f"{spec.args[first_tensor].name} must be 2-D"):
        call_with(first_tensor, args[first_tensor][0])
    for position, arg in enumerate(spec.args):
        if isinstance(arg, Real):
            with pytest.raises(ValueError, match=f"{arg.name} must be a finite number, got nan"):
                call_with(position, math.nan)
        if isinstance(arg, Labels):
            with pytest.raises(ValueError, match="labels must be 1-D"):
                call_with(position, args[position].reshape(1, -1))
            with pytest.raises(TypeError, match="labels must be an integer tensor"):
                call_with(position, args[position].double())
